"""Every client setting, declared once, with its default, description and check.

The clients check their arguments with `ClientSettings`; the adapters inherit its fields (see
`_adapters`), so a new setting is added here and reaches both frameworks.
"""

from __future__ import annotations

import math
import os
from typing import Annotated, Any

import httpx
from pydantic import (
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails

from ._calibration import Calibration
from ._config import (
    DEFAULT_KEEPALIVE_EXPIRY,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_DOCUMENTS_PER_REQUEST,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    resolve_base_url,
)
from ._exceptions import InvalidRequestError
from ._protocols import Budget, Cache
from ._retry import RetryPolicy

__all__ = [
    "CLIENT_SETTINGS",
    "Calibration",
    "ClientSettings",
    "HiddenInputsModel",
    "check_client_settings",
    "derived_deadline",
    "settings_problem",
    "without_inputs",
]


def _count(minimum: int) -> BeforeValidator:
    def check(value: object, info: Any) -> object:
        if value is None:
            return value
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{info.field_name} must be an integer >= {minimum}, got {value!r}")
        return value

    return BeforeValidator(check)


def _seconds(minimum: float, *, inclusive: bool) -> BeforeValidator:
    """A finite number of seconds above `minimum` (or equal to it, when `inclusive`); None
    passes where the field allows it."""
    relation = ">=" if inclusive else ">"

    def check(value: object, info: Any) -> object:
        if value is None or isinstance(value, httpx.Timeout):
            return value
        if isinstance(value, dict):  # a timeout's serialized form, back from a dump or a config
            return httpx.Timeout(**value)
        if (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(value)
            and (value >= minimum if inclusive else value > minimum)
        ):
            return float(value)
        raise ValueError(
            f"{info.field_name} must be a finite number of seconds {relation} {minimum:g}, "
            f"got {value!r}"
        )

    return BeforeValidator(check)


def _calibration(value: object) -> object:
    # A saved calibration's path is read here, once: a client never reads the file again.
    if isinstance(value, str | os.PathLike):
        return Calibration.load(value)
    return value


def _timeout(value: object) -> object:
    # Runs after the seconds check (pydantic applies "before" checks last to first): one number
    # of seconds applies to each phase.
    return httpx.Timeout(value) if isinstance(value, float) else value


def derived_deadline(timeout: httpx.Timeout) -> float | None:
    """An attempt's overall deadline from its phase limits: connect + write + read."""
    phases = (timeout.connect, timeout.write, timeout.read)
    if any(phase is None for phase in phases):
        return None
    return float(sum(phase for phase in phases if phase is not None))


Timeout = Annotated[
    httpx.Timeout | None,
    BeforeValidator(_timeout),
    _seconds(0, inclusive=False),
    PlainSerializer(lambda t: t.as_dict() if isinstance(t, httpx.Timeout) else t),
]
"""Seconds (for each phase), an `httpx.Timeout`, its `as_dict()` form, or None for no limit."""


class HiddenInputsModel(BaseModel):
    """A pydantic model whose validation errors never show an input: a model-level check's input
    is every argument, the key among them, and `str()`, `errors()` and `json()` would show it.
    The clients' settings, the adapters and `ChatSiliconFlow` are all built on it."""

    model_config = ConfigDict(hide_input_in_errors=True)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as error:
            raise without_inputs(error) from None


class ClientSettings(HiddenInputsModel):
    """The settings of a client: what `SiliconFlowClient` and `AsyncSiliconFlowClient` take (but
    `http_client`), and the fields every adapter has.

    A bad value is refused with an error that names the setting and never shows the key.
    """

    model_config = ConfigDict(
        arbitrary_types_allowed=True,
        extra="forbid",
        hide_input_in_errors=True,
        use_attribute_docstrings=True,
    )

    api_key: SecretStr | None = Field(
        default=None,
        repr=False,
        exclude=True,
        validation_alias=AliasChoices("api_key", "siliconflow_api_key"),
    )
    """The API key (also taken as `siliconflow_api_key`, the vendor package's name); defaults to
    the `SILICONFLOW_API_KEY` environment variable."""
    base_url: str | None = None
    """The API root; defaults to `SILICONFLOW_BASE_URL`, then `https://api.siliconflow.cn/v1`."""
    timeout: Timeout = DEFAULT_TIMEOUT
    """Seconds for each phase of a request, an `httpx.Timeout`, or None for no limit; by default
    10 s to connect and 120 s to read."""
    attempt_deadline: Annotated[float | None, _seconds(0, inclusive=False)] = None
    """Seconds one attempt may take in all (connecting, sending, a trickling answer); None
    derives it from `timeout` by adding its connect, write and read limits (250 s by default),
    or sets none when the timeout has no limit."""
    max_response_bytes: Annotated[int, _count(1)] = DEFAULT_MAX_RESPONSE_BYTES
    """The largest answer body (decoded) a client reads; larger ones fail with
    ResponseValidationError instead of filling memory (128 MiB by default)."""
    max_retries: Annotated[int, _count(0)] = DEFAULT_MAX_RETRIES
    """Retries after a connection error, timeout, 408, 429 or 5xx (so at most this + 1 attempts)."""
    retry_policy: RetryPolicy | None = Field(default=None, exclude=True)
    """Backoff between attempts; None keeps the defaults, which suit the hosted API."""
    max_documents_per_request: Annotated[int | None, _count(1)] = DEFAULT_MAX_DOCUMENTS_PER_REQUEST
    """Rerank lists longer than this are split into concurrent requests (None: never)."""
    max_concurrency: Annotated[int, _count(1)] = DEFAULT_MAX_CONCURRENCY
    """How many requests of one split call run at once."""
    max_connections: Annotated[int, _count(1)] = DEFAULT_MAX_CONNECTIONS
    """Size of the connection pool a client opens."""
    keepalive_expiry: Annotated[float, _seconds(0, inclusive=True)] = DEFAULT_KEEPALIVE_EXPIRY
    """Seconds an idle pooled connection is kept for the next call."""
    requests_per_minute: Annotated[int | None, _count(1)] = None
    """Client-side request budget, shared by every call on the client."""
    tokens_per_minute: Annotated[int | None, _count(1)] = None
    """Client-side (estimated) token budget, shared likewise."""
    cache: Cache | None = Field(default=None, exclude=True)
    """A `Cache` to reuse rerank scores across calls, such as `RerankCache` or
    `RedisRerankCache` (off by default)."""
    embedding_cache: Cache | None = Field(default=None, exclude=True)
    """A `Cache` to reuse embedding vectors across calls, such as `EmbeddingCache` or
    `RedisEmbeddingCache` (off by default)."""
    share_cache_across_keys: bool = False
    """Let calls made with different API keys share cached answers. Off by default: a cache is
    partitioned by account (a digest of the server and key, never the key), so one tenant never
    gets another's answers without a request of its own."""
    calibration: Annotated[Calibration | None, BeforeValidator(_calibration)] = None
    """A `Calibration` (or the path of one saved as JSON): every rerank score is mapped to the
    probability of relevance it fitted for the call's model and instruction, before
    `min_relevance` and before it reaches you. A call with a model it has no map for is refused."""
    rate_limit: Budget | None = Field(default=None, exclude=True)
    """A `Budget`, such as `RedisRateLimit` (shared with every process that names it) or
    `InMemoryRateLimit`, instead of `requests_per_minute` / `tokens_per_minute` (which make a
    budget for this client alone)."""

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value is not None:
            resolve_base_url(value)  # refuses what is not an absolute http(s) URL
        return value

    @model_validator(mode="after")
    def _one_rate_limit(self) -> ClientSettings:
        if self.rate_limit is not None and (self.requests_per_minute or self.tokens_per_minute):
            raise ValueError(
                "rate_limit holds its own budget: set requests_per_minute and tokens_per_minute "
                "on it (e.g. on the RedisRateLimit), not beside it"
            )
        return self


CLIENT_SETTINGS = tuple(ClientSettings.model_fields)
"""The names of the client settings."""


def settings_problem(error: ValidationError) -> str:
    """A one-line account of what is wrong in `error`, naming each field, showing no input."""
    problems = []
    for detail in error.errors(include_input=False, include_url=False):
        message = str(detail["msg"]).removeprefix("Value error, ")
        name = ".".join(str(part) for part in detail["loc"])
        problems.append(message if not name or name in message else f"{name}: {message}")
    return "; ".join(problems)


def without_inputs(error: ValidationError) -> ValidationError:
    """The same errors with every input value hidden: a model-level check's input is all the
    arguments, the key among them, and `errors()` / `json()` would show it."""
    details: list[InitErrorDetails] = []
    for detail in error.errors(include_url=False):
        hidden: InitErrorDetails = {
            "type": detail["type"],
            "loc": detail["loc"],
            "input": "<hidden>",
        }
        if "ctx" in detail:
            hidden["ctx"] = detail["ctx"]
        details.append(hidden)
    return ValidationError.from_exception_data(error.title, details, hide_input=True)


def check_client_settings(**settings: Any) -> ClientSettings:
    """Check a client's arguments.

    Raises:
        InvalidRequestError: A setting is invalid; the message names it.
    """
    try:
        return ClientSettings(**settings)
    except ValidationError as error:
        raise InvalidRequestError(settings_problem(error)) from None
