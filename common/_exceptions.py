"""The package's one error tree, and the mapping from HTTP answers to it.

```
SiliconFlowError
├── InvalidRequestError (also ValueError)    bad input or configuration; raised before any I/O
├── APIConnectionError                       the request did not get an HTTP answer
│   └── APITimeoutError                      ... because a timeout fired
├── APIStatusError                           the server answered with a non-2xx status
│   ├── BadRequestError                      400
│   ├── AuthenticationError                  401
│   ├── PermissionDeniedError                403
│   ├── NotFoundError                        404
│   ├── RequestTooLargeError                 413
│   ├── RateLimitError                       429
│   └── InternalServerError                  >= 500
│       └── ServiceUnavailableError          503
└── ResponseValidationError                  a 2xx answer that is not a valid rerank response
```

Every error that came from an answer carries the `x-siliconcloud-trace-id` header as `trace_id`.
`SERVICE_ERRORS` groups what the service can do wrong (all but `InvalidRequestError`): the errors
that the adapters' `on_error="passthrough"` absorbs, while bad input always raises.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import weakref
from collections.abc import Mapping
from typing import Any

__all__ = [
    "SERVICE_ERRORS",
    "APIConnectionError",
    "APIStatusError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "InternalServerError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "RequestTooLargeError",
    "ResponseValidationError",
    "ServiceUnavailableError",
    "SiliconFlowError",
    "excerpt",
    "redact_answer",
    "redact_error",
    "redact_in_logs",
    "status_error",
]

_EXCERPT_CHARS = 300
_TITLE = re.compile(rb"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)


class SiliconFlowError(Exception):
    """Base class of every error this package raises.

    Attributes:
        batch: For a call split into several requests, the number (from 0) of the one that failed.
    """

    batch: int | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the message and attributes, not by calling __init__ again (whose keyword-only
        # arguments pickle's default cannot supply): errors cross process pools intact.
        return (_rebuild, (type(self), self.args, dict(self.__dict__)))


def _rebuild(
    cls: type[SiliconFlowError], args: tuple[Any, ...], state: dict[str, Any]
) -> SiliconFlowError:
    error = cls.__new__(cls, *args)
    error.args = args
    error.__dict__.update(state)
    return error


class InvalidRequestError(SiliconFlowError, ValueError):
    """The input or configuration is invalid; raised before any network call."""


class APIConnectionError(SiliconFlowError):
    """The request got no HTTP answer: refused, reset, or cut off mid-response."""


class APITimeoutError(APIConnectionError):
    """A connect, write, read or pool timeout fired before the answer was complete."""


class ResponseValidationError(SiliconFlowError):
    """A 2xx answer that is not a usable rerank response (bad JSON, bad indices, bad scores).

    Attributes:
        trace_id: The `x-siliconcloud-trace-id` header of the answer, if any.
        body_excerpt: The first few hundred characters of the body, for diagnosis.
    """

    def __init__(
        self, message: str, *, trace_id: str | None = None, body_excerpt: str = ""
    ) -> None:
        self.trace_id = trace_id
        self.body_excerpt = body_excerpt
        details = message
        if trace_id:
            details += f" (trace id: {trace_id})"
        if body_excerpt:
            details += f"; body starts: {body_excerpt!r}"
        super().__init__(details)


class APIStatusError(SiliconFlowError):
    """The server answered with a non-2xx status.

    Attributes:
        status_code: The HTTP status.
        code: The vendor's numeric error code (e.g. 20012), when the body had one.
        message: The server's message, or a summary of a non-JSON body.
        body: The decoded body: a dict, a string, or the raw text.
        trace_id: The `x-siliconcloud-trace-id` header, if any.
        headers: The answer's headers (e.g. `Retry-After`).
    """

    def __init__(
        self,
        *,
        status_code: int,
        message: str,
        code: int | str | None = None,
        body: object = None,
        trace_id: str | None = None,
        hint: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.headers: Mapping[str, str] = headers if headers is not None else {}
        self.code = code
        self.message = message
        self.body = body
        self.trace_id = trace_id
        text = f"HTTP {status_code}"
        if code is not None:
            text += f" (code {code})"
        text += f": {message}"
        if trace_id:
            text += f" [trace id: {trace_id}]"
        if hint:
            text += f". {hint}"
        super().__init__(text)


class BadRequestError(APIStatusError):
    """400: the server rejected the request (unknown model, input too long, ...)."""


class AuthenticationError(APIStatusError):
    """401: the API key is missing, wrong, or belongs to the other SiliconFlow site."""


class PermissionDeniedError(APIStatusError):
    """403: the account may not use this model (verification needed or balance too low)."""


class NotFoundError(APIStatusError):
    """404: wrong path; usually a base URL that does not end in `/v1`."""


class RequestTooLargeError(APIStatusError):
    """413: the request is too large for the server."""


class RateLimitError(APIStatusError):
    """429: a requests- or tokens-per-minute limit of the account was reached."""


class InternalServerError(APIStatusError):
    """5xx: the server or a gateway in front of it failed."""


class ServiceUnavailableError(InternalServerError):
    """503: the model service is overloaded or busy."""


SERVICE_ERRORS: tuple[type[SiliconFlowError], ...] = (
    APIConnectionError,
    APIStatusError,
    ResponseValidationError,
)
"""The errors that come from the service, not from the caller's input: catch these to fall back."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    429: RateLimitError,
    503: ServiceUnavailableError,
}


def excerpt(content: bytes) -> str:
    """Return a short, printable excerpt of a response body for error messages."""
    text = content[: _EXCERPT_CHARS * 4].decode("utf-8", errors="replace")
    return text[:_EXCERPT_CHARS]


_KEPT_ERROR_BODY = 64 * 1024
"""An error body larger than this (no service sends one) is kept as its excerpt only: the error
outlives the call, in a log or a retry loop, and must not hold megabytes."""


def _describe_body(content: bytes) -> tuple[object, int | str | None, str]:
    """Decode an error body of any shape into (body, vendor code, message)."""
    stripped = content.strip()
    if not stripped:
        return "", None, "empty response body"
    if len(stripped) > _KEPT_ERROR_BODY:
        text = excerpt(stripped)
        return text, None, f"an error body of {len(stripped)} bytes, starting {text[:100]!r}"
    try:
        body: object = json.loads(stripped)
    except (ValueError, RecursionError):  # not JSON, or nested deeper than any error body is
        text = stripped.decode("utf-8", errors="replace")
        if stripped[:1] == b"<":
            title = _TITLE.search(stripped)
            summary = title.group(1).decode("utf-8", "replace").strip() if title else "no title"
            return text, None, f"HTML page from a proxy or gateway ({summary})"
        return text, None, text[:_EXCERPT_CHARS]
    if isinstance(body, Mapping):
        code = body.get("code")
        message = body.get("message") or body.get("msg") or body.get("error") or body.get("detail")
        if isinstance(message, Mapping):  # OpenAI-style {"error": {"message": ...}}
            message = message.get("message")
        if not isinstance(code, int | str) or isinstance(code, bool):
            code = None
        return dict(body), code, str(message) if message else excerpt(stripped)
    if isinstance(body, str):
        return body, None, body
    return body, None, excerpt(stripped)


_REDACTED = "[redacted]"


def redact_answer(
    content: bytes, headers: Mapping[str, str], secret: str
) -> tuple[bytes, Mapping[str, str]]:
    """An answer's body and headers with every occurrence of `secret` replaced."""
    if len(secret) < 8:  # too short to tell from ordinary text; keys are far longer
        return content, headers
    raw = secret.encode()
    if raw in content:
        content = content.replace(raw, _REDACTED.encode())
    if any(secret in name or secret in value for name, value in headers.items()):
        # Names lowered, as every mapping of headers here is read case-insensitively.
        headers = {
            n.replace(secret, _REDACTED).lower(): v.replace(secret, _REDACTED)
            for n, v in headers.items()
        }
    return content, headers


_LOGGED_SECRETS: dict[int, str] = {}
"""The keys of live clients, by the client's id. No lock: read and written in single steps. (A
first version locked it, and the secrets suite hung: a log line can be written while the lock
is held, as a collection finalizes a client that closes its pool.)"""
_HTTP_LIBRARY_LOGGERS = (
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.connection",
    "httpx",
    "openai._base_client",
)
"""The HTTP libraries' loggers: at DEBUG, httpcore shows each answer's headers (and a proxy's),
httpx each request's URL, and openai (under `ChatSiliconFlow`) each request's options and each
error answer's body."""


def redact_in_logs(owner: object, secret: str) -> None:
    """Keep `secret` out of the HTTP libraries' log lines for as long as `owner` lives.

    httpcore logs every answer's headers at DEBUG: a server or proxy that echoes the request
    back in a header would put the key into an application's log. Every client, and
    `ChatSiliconFlow`, registers its key here.
    """
    if len(secret) >= 8:  # as redact_answer: shorter is too short to tell from ordinary text
        _LOGGED_SECRETS[id(owner)] = secret
        weakref.finalize(owner, _LOGGED_SECRETS.pop, id(owner), None)


class _SecretsRedacted(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        secrets = set(_LOGGED_SECRETS.values())
        message = original = record.getMessage()
        for secret in secrets:
            message = message.replace(secret, _REDACTED)
        if message != original:
            record.msg, record.args = message, ()
        return True


_SECRETS_REDACTED = _SecretsRedacted()
for _name in _HTTP_LIBRARY_LOGGERS:
    logging.getLogger(_name).addFilter(_SECRETS_REDACTED)


def redact_error(error: BaseException, secret: str) -> None:
    """Replace `secret` in `error` (another library's, such as openai's), in place: in its
    arguments and its text, dict and list attributes, and likewise in its causes and contexts.
    A server that echoes the request must not put the key into what a caller logs or shows."""
    if len(secret) < 8:  # as redact_answer: shorter is too short to tell from ordinary text
        return
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.args = tuple(_redact(argument, secret) for argument in current.args)
        for name, value in list(vars(current).items()):
            if isinstance(value, str | dict | list):
                setattr(current, name, _redact(value, secret))
        current = current.__cause__ or current.__context__


def _redact(value: Any, secret: str) -> Any:
    if isinstance(value, str):
        return value.replace(secret, _REDACTED)
    if isinstance(value, dict):
        return {_redact(key, secret): _redact(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [_redact(item, secret) for item in value]
    return value


def _key_hint(base_url: str) -> str:
    """Which site a refused key was sent to, and how to send it to the other one."""
    from ._config import SILICONFLOW_SITES  # (_config reads this module's errors)

    host = base_url.partition("//")[2].partition("/")[0].rpartition("@")[2]
    other = SILICONFLOW_SITES.get(host)
    if other is None:
        return f"Check SILICONFLOW_API_KEY or api_key=; the key was sent to {base_url}"
    site = "mainland (.cn)" if host.endswith(".cn") else "international (.com)"
    return (
        f"Check SILICONFLOW_API_KEY or api_key=. The key was sent to SiliconFlow's {site} site "
        f"({base_url}); a key works only on the site that issued it: for a key from the other "
        f"site, pass base_url={other!r} (or set SILICONFLOW_BASE_URL)"
    )


def _model_hint(model: str) -> str:
    """The known models closest to a name the server does not know."""
    from ._capabilities import known_embedding_models, known_models  # (imports no module here)

    known = [*known_models(), *known_embedding_models()]
    close = difflib.get_close_matches(model, known, n=3, cutoff=0.5)
    if close:
        return f"The server does not know model {model!r}; did you mean {' or '.join(close)}?"
    return f"The server does not know model {model!r}; known models: {', '.join(known)}"


def status_error(
    status_code: int,
    content: bytes,
    *,
    trace_id: str | None,
    headers: Mapping[str, str] | None = None,
    base_url: str,
    secret: str | None,
    model: str | None = None,
) -> APIStatusError:
    """Build the right `APIStatusError` subclass for a non-2xx answer of any body shape
    (`model`: the one the request named, for a hint when the server does not know it)."""
    body, code, message = _describe_body(content)
    if secret and len(secret) >= 8:
        # Belt and braces: a proxy that echoes the request must not put the key into our error.
        message = _redact(message, secret)
        body = _redact(body, secret)
    hint = None
    if status_code == 401:
        hint = _key_hint(base_url)
    elif status_code == 400 and model and (code == 20012 or "does not exist" in message):
        hint = _model_hint(model)
    elif status_code == 403:
        hint = "The model may need identity verification, or the account balance is too low"
    elif status_code == 404:
        hint = f"Check base_url ({base_url}); it should end in /v1"
    elif 300 <= status_code < 400:
        location = (headers or {}).get("location")
        where = f" to {str(location)[:200]}" if location else ""
        hint = (
            f"The server redirected the request{where}; redirects are never followed (the "
            f"request holds the key and your documents): check base_url ({base_url})"
        )
    cls = _STATUS_CLASSES.get(status_code)
    if cls is None:
        cls = InternalServerError if status_code >= 500 else APIStatusError
    return cls(
        status_code=status_code,
        message=message,
        code=code,
        body=body,
        trace_id=trace_id,
        hint=hint,
        headers=headers,
    )
