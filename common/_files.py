"""Reading the files users hand us (JSONL rows, tab-separated labels), line by line, with every
problem named by file and line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._exceptions import InvalidRequestError

__all__ = ["jsonl_rows", "text_lines"]


def text_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(number, line) of each line, read as it goes (a file of any size).

    Raises:
        InvalidRequestError: The file cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as file:
            yield from enumerate((line.rstrip("\n") for line in file), start=1)
    except OSError as error:
        raise InvalidRequestError(f"{path} cannot be read ({type(error).__name__})") from None


def jsonl_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, object) of each non-blank line.

    Raises:
        InvalidRequestError: The file cannot be read, or a line is not a JSON object.
    """
    for number, line in text_lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InvalidRequestError(f"{path}:{number}: not JSON") from None
        if not isinstance(row, dict):
            raise InvalidRequestError(f"{path}:{number}: not a JSON object")
        yield number, row
