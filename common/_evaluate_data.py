"""What an evaluation compares and on what: configurations, the labelled set (BEIR's layout)
and what a configuration's run produced."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._config import DEFAULT_MODEL
from ._exceptions import InvalidRequestError
from ._files import jsonl_rows, text_lines
from ._rerank import RerankOptions

__all__ = ["FirstStage", "LabelledSet", "RerankConfig", "Run", "load_beir", "ranked"]

FirstStage = Callable[[str], Sequence[str]]
"""A query's text in, the ids of its candidate documents out, best first."""


@dataclass(frozen=True)
class RerankConfig:
    """One configuration to compare: `model=None` keeps the first stage's order."""

    model: str | None = DEFAULT_MODEL
    instruction: str | None = None
    top_n: int | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.model is None:
            if self.instruction is not None or self.top_n is not None:
                raise InvalidRequestError("'none' takes no instruction or top_n")
            return
        RerankOptions(self.model, top_n=self.top_n, instruction=self.instruction)

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.model is None:
            return "none"
        label = self.model
        if self.instruction is not None:
            label += f" [instruction: {self.instruction[:40]}]"
        if self.top_n is not None:
            label += f" top_n={self.top_n}"
        return label

    @classmethod
    def parse(cls, spec: str) -> RerankConfig:
        """`none`, `MODEL`, or `MODEL;instruction=TEXT;top_n=N;name=LABEL`."""
        model, *options = spec.split(";")
        fields: dict[str, Any] = {}
        for option in options:
            key, sep, value = option.partition("=")
            key = key.strip()
            if not sep or key not in ("instruction", "top_n", "name"):
                raise InvalidRequestError(
                    f"{option!r} in {spec!r}: options are instruction=, top_n= and name="
                )
            fields[key] = int(value) if key == "top_n" and value.strip().isdigit() else value
        model = model.strip()
        return cls(None if model.lower() == "none" else model, **fields)


@dataclass(frozen=True)
class LabelledSet:
    """A labelled set: documents and queries by id, and graded labels by query."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


def load_beir(data_dir: str | os.PathLike[str], split: str = "test") -> LabelledSet:
    """Read `corpus.jsonl`, `queries.jsonl` and `qrels/SPLIT.tsv` (BEIR's layout). Documents
    are title and text joined; only queries with labels are kept.

    Raises:
        InvalidRequestError: A file is missing or malformed (named, with its line).
    """
    root = Path(data_dir)
    corpus = {
        row["_id"]: " ".join(part for part in (row.get("title"), row.get("text")) if part)
        for row in _jsonl(root / "corpus.jsonl")
    }
    queries = {row["_id"]: row["text"] for row in _jsonl(root / "queries.jsonl")}
    qrels: dict[str, dict[str, int]] = {}
    path = root / "qrels" / f"{split}.tsv"
    for number, line in text_lines(path):
        parts = line.split("\t")
        if number == 1 and not parts[-1].lstrip("-").isdigit():
            continue  # the header
        if len(parts) != 3 or not parts[2].lstrip("-").isdigit():
            raise InvalidRequestError(f"{path}:{number}: expected query-id, corpus-id, score")
        qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    unknown = [q for q in qrels if q not in queries]
    if unknown:
        raise InvalidRequestError(
            f"{path}: {len(unknown)} labelled queries are not in "
            f"queries.jsonl (first: {unknown[0]!r})"
        )
    return LabelledSet(corpus, {q: queries[q] for q in qrels}, qrels)


def _jsonl(path: Path) -> Iterable[dict[str, Any]]:
    for number, row in jsonl_rows(path):
        if not isinstance(row.get("_id"), str):
            raise InvalidRequestError(f"{path}:{number}: a row needs a string '_id'")
        yield row


def ranked(order: list[str]) -> dict[str, float]:
    """A ranking as trec_eval takes it: scores that fall with the rank (it sorts by score and
    breaks ties by id, which would reorder equal scores)."""
    return {document: float(len(order) - rank) for rank, document in enumerate(order)}


@dataclass
class Run:
    """What one configuration produced."""

    config: RerankConfig
    run: dict[str, dict[str, float]] = field(default_factory=dict)
    scored: list[tuple[float, bool]] = field(default_factory=list)
    requests: int = 0
    tokens: int = 0
    latencies: list[float] = field(default_factory=list)
