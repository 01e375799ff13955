"""Client configuration: defaults, environment lookup and base-URL normalization."""

from __future__ import annotations

import os
from typing import Any

import httpx
from pydantic import SecretStr

from ._exceptions import InvalidRequestError

__all__ = [
    "API_KEY_ENV",
    "BASE_URL_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_EMBEDDING_BATCH_SIZE",
    "DEFAULT_EMBEDDING_MODEL",
    "DEFAULT_KEEPALIVE_EXPIRY",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_DOCUMENTS_PER_REQUEST",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MODEL",
    "DEFAULT_TIMEOUT",
    "TimeoutTypes",
    "needs",
    "resolve_api_key",
    "resolve_base_url",
]

API_KEY_ENV = "SILICONFLOW_API_KEY"
BASE_URL_ENV = "SILICONFLOW_BASE_URL"
DEFAULT_BASE_URL = "https://api.siliconflow.cn/v1"
DEFAULT_MODEL = "BAAI/bge-reranker-v2-m3"
DEFAULT_MAX_RETRIES = 2
DEFAULT_EMBEDDING_MODEL = "BAAI/bge-m3"

DEFAULT_EMBEDDING_BATCH_SIZE = 32
"""Inputs per embeddings request: the most the service takes in one. Longer lists are split."""

DEFAULT_TIMEOUT = httpx.Timeout(120.0, connect=10.0)
"""A short connect timeout finds a dead host fast; the long read timeout lets an 8B reranker finish
a long list. (httpx's own 5 s default cuts such requests off.)"""

DEFAULT_MAX_CONNECTIONS = 256
"""Enough connections for a few hundred concurrent reranks on one client."""

DEFAULT_KEEPALIVE_EXPIRY = 30.0
"""Seconds an idle pooled connection is kept for the next call.

RAG traffic comes in bursts seconds apart; httpx's own 5 s would often pay a new TLS handshake per
connection between them. 30 s stays under the 60 s or more that servers and load balancers
commonly keep an idle connection open."""

DEFAULT_MAX_DOCUMENTS_PER_REQUEST = 128
"""Lists longer than this are split into concurrent requests (see the README's benchmark)."""

DEFAULT_MAX_RESPONSE_BYTES = 128 * 1024 * 1024
"""The largest answer body a client reads (decoded): far beyond any real answer, well short of
what would exhaust memory."""

DEFAULT_MAX_CONCURRENCY = 8
"""Requests of one split call in flight at once: well within the hosted API's per-minute limits."""

TimeoutTypes = float | httpx.Timeout | None


def resolve_api_key(api_key: str | SecretStr | None) -> SecretStr:
    """Return the key from the argument, else from `SILICONFLOW_API_KEY`.

    Raises:
        InvalidRequestError: Neither is set (or the value is blank).
    """
    if isinstance(api_key, SecretStr):
        api_key = api_key.get_secret_value()
    if api_key is None:
        api_key = os.environ.get(API_KEY_ENV)
    if not api_key or not api_key.strip():
        raise InvalidRequestError(
            f"No SiliconFlow API key: set the {API_KEY_ENV} environment variable "
            "or pass api_key= to the client"
        )
    key = api_key.strip()
    for position, character in enumerate(key):
        if not (character.isascii() and character.isprintable()) or character.isspace():
            # Described, never shown: the message must not carry the key it complains about.
            raise InvalidRequestError(
                f"The SiliconFlow API key has a character that cannot be sent in a header at "
                f"position {position + 1} of {len(key)} (code point U+{ord(character):04X}; often "
                "a zero-width or non-breaking space, or a line break, copied with the key)"
            )
    return SecretStr(key)


SILICONFLOW_SITES = {
    "api.siliconflow.cn": "https://api.siliconflow.com/v1",
    "api.siliconflow.com": "https://api.siliconflow.cn/v1",
}
"""SiliconFlow's two sites (mainland China and international), each with the other's API root:
a key works only on the site that issued it."""


def resolve_base_url(base_url: str | None) -> str:
    """Return the API root from the argument, else `SILICONFLOW_BASE_URL`, else the default.

    A trailing `/`, `/rerank` or `/embeddings` is dropped, so `https://host/v1`,
    `https://host/v1/`, `https://host/v1/rerank` and `https://host/v1/embeddings` (how the peers
    take the URL) all mean the same root; a SiliconFlow site named without a path
    (`https://api.siliconflow.com`, as the vendor's package takes it) means its `/v1`.

    Raises:
        InvalidRequestError: The URL is not an absolute http(s) URL.
    """
    url = base_url or os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    url = url.strip().rstrip("/")
    url = url.removesuffix("/rerank").removesuffix("/embeddings").rstrip("/")
    shown = _without_credentials(url)
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError):
        raise InvalidRequestError(f"base_url {shown!r} is not a valid URL") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InvalidRequestError(
            f"base_url {shown!r} must be an absolute http(s) URL such as {DEFAULT_BASE_URL}"
        )
    if parsed.userinfo:
        # Sent as Basic auth by one HTTP library, dropped by another, and shown by every repr:
        # refused, and never echoed.
        raise InvalidRequestError(
            f"base_url {shown!r} holds credentials (user:password@); pass the key as api_key "
            "and leave them out of the URL"
        )
    if parsed.host in SILICONFLOW_SITES and parsed.path in ("", "/"):
        url += "/v1"
    return url


def _without_credentials(url: str) -> str:
    """`url` with anything between `//` and `@` (user and password) shown as `***`."""
    scheme, separator, rest = url.partition("//")
    authority, slash, path = rest.partition("/")
    if separator and "@" in authority:
        authority = "***@" + authority.rpartition("@")[2]
    return f"{scheme}{separator}{authority}{slash}{path}"


def needs(module: str, extra: str = "evaluate") -> Any:
    """Import an optional dependency, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise InvalidRequestError(
            f"this needs {module.split('.')[0]}: pip install 'siliconflow-rerank[{extra}]'"
        ) from None
