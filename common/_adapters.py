"""What every framework adapter shares: its settings as fields, and the clients it builds from them.

An adapter class inherits `ClientOwner` (embeddings) or `RerankerSettings` (rerankers) next to its
framework's base class, and keeps only the framework mapping.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    AliasChoices,
    BaseModel,
    Field,
    PrivateAttr,
    SecretStr,
    StrictInt,
    model_validator,
)

from ._client import AsyncSiliconFlowClient, SiliconFlowClient
from ._config import API_KEY_ENV, DEFAULT_MODEL, resolve_api_key
from ._exceptions import InvalidRequestError, SiliconFlowError
from ._ranking import RerankResponse
from ._rerank import RerankOptions
from ._settings import CLIENT_SETTINGS, ClientSettings

__all__ = ["ClientOwner", "RerankerSettings"]

# Settings of the peers' classes that users carry over by habit, and what they are called here.
_RENAMED = {
    "top_k": "top_n",
    "model_name": "model",
    "api_base": "base_url",
    "request_timeout": "timeout",
    "batch_size": "max_documents_per_request",
}

# Left out of pickles: the key (read from the environment again), live clients, and callables.
_NOT_PICKLED = (
    "api_key",
    "client",
    "async_client",
    "cache",
    "embedding_cache",
    "rate_limit",
    "on_progress",
    "retry_policy",
)

_BUILDING = threading.Lock()
_Input = TypeVar("_Input")
_Client = TypeVar("_Client", SiliconFlowClient, AsyncSiliconFlowClient)

logger = logging.getLogger("siliconflow_rerank")


def _accepted_names(model: type[BaseModel]) -> set[str]:
    names = set(model.model_fields)
    for info in model.model_fields.values():
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str))
        elif isinstance(alias, str):
            names.add(alias)
    return names


class ClientOwner(ClientSettings):
    """The client settings as fields, plus the clients built from them.

    Clients are built on first use, so an adapter without a key can still be made, copied, pickled
    and serialized. Clients it built are closed by `close()` / `aclose()`; clients passed in as
    `client=` / `async_client=` are borrowed and never closed. Passing a client together with
    settings it already fixes is an error naming them.
    """

    client: SiliconFlowClient | None = Field(default=None, exclude=True, repr=False)
    """A ready sync client to use instead of building one from the settings."""
    async_client: AsyncSiliconFlowClient | None = Field(default=None, exclude=True, repr=False)
    """A ready async client to use instead of building one from the settings."""

    _owned_client: SiliconFlowClient | None = PrivateAttr(default=None)
    _owned_async_client: AsyncSiliconFlowClient | None = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _suggest_names(cls, values: Any) -> Any:
        if isinstance(values, dict):
            accepted = _accepted_names(cls)
            for wrong, right in _RENAMED.items():
                if wrong in values and wrong not in accepted and right in accepted:
                    raise InvalidRequestError(
                        f"{cls.__name__} has no setting {wrong!r}; did you mean {right!r}?"
                    )
        return values

    @model_validator(mode="after")
    def _key_from_the_environment(self) -> ClientOwner:
        # Readable where the frameworks' own tests look for it (`api_key`), as the clients will
        # use it; an adapter without a key anywhere can still be made (its first call says so).
        if self.api_key is None and os.environ.get(API_KEY_ENV, "").strip():
            self.__dict__["api_key"] = resolve_api_key(None)
        return self

    @property
    def siliconflow_api_key(self) -> SecretStr | None:
        """The key, by the vendor package's name for it."""
        return self.api_key

    @model_validator(mode="after")
    def _no_settings_beside_a_client(self) -> ClientOwner:
        if self.client is None and self.async_client is None:
            return self
        fixed = sorted(set(CLIENT_SETTINGS) & self.model_fields_set)
        if fixed:
            raise InvalidRequestError(
                f"{', '.join(fixed)} cannot be set together with client= or async_client=: a "
                "ready client has its own settings (set them on the client instead)"
            )
        return self

    def _private(self, name: str) -> Any:
        """A private attribute, read from pydantic's dict of them: read as an attribute, it goes
        through the model's `__getattr__`, and this is read on every call."""
        private = self.__pydantic_private__
        return None if private is None else private.get(name)

    def _built(self, name: str, kind: type[_Client]) -> _Client:
        """The client this adapter built (private attribute `name`), built on first use."""
        owned: _Client | None = self._private(name)
        if owned is None:
            with _BUILDING:
                owned = self._private(name)
                if owned is None:
                    # The adapter's own fields are the settings, validated when it was made.
                    owned = kind.from_settings(self)
                    setattr(self, name, owned)
        return owned

    def _sync(self) -> SiliconFlowClient:
        """The sync client: the one passed in, else the one built from the settings."""
        if self.client is not None:
            return self.client
        return self._built("_owned_client", SiliconFlowClient)

    def _async(self) -> AsyncSiliconFlowClient:
        """The async client: the one passed in, else the one built from the settings."""
        if self.async_client is not None:
            return self.async_client
        return self._built("_owned_async_client", AsyncSiliconFlowClient)

    def close(self) -> None:
        """Close the connection pool of the sync client built here (never a passed-in one)."""
        if self._owned_client is not None:
            self._owned_client.close()

    async def aclose(self) -> None:
        """Close the connection pool of the async client built here (never a passed-in one)."""
        if self._owned_async_client is not None:
            await self._owned_async_client.aclose()

    def __getstate__(self) -> dict[Any, Any]:
        # Pickles never carry the key, live clients or callables: an unpickled adapter reads
        # SILICONFLOW_API_KEY again when it is first used.
        state = dict(BaseModel.__getstate__(self))
        dropped = [name for name in _NOT_PICKLED if name in type(self).model_fields]
        state["__dict__"] = {**state["__dict__"], **dict.fromkeys(dropped)}
        state["__pydantic_fields_set__"] = set(state["__pydantic_fields_set__"]) - set(dropped)
        private = state.get("__pydantic_private__") or {}
        state["__pydantic_private__"] = dict.fromkeys(private)
        return state


class RerankerSettings(ClientOwner):
    """A reranker adapter's settings: the client settings, the rerank options, and what to do
    when the service fails."""

    model: str = DEFAULT_MODEL
    """The rerank model; `Qwen/Qwen3-VL-Reranker-8B` for images and video."""
    top_n: StrictInt | None = 3
    """How many results to return (as `CohereRerank`); None returns all of them, reordered."""
    instruction: str | None = None
    """Task instruction for the Qwen3-Reranker models."""
    max_chunks_per_doc: StrictInt | None = None
    """Chunk limit for long documents (bge, bce and Qwen3-VL models)."""
    overlap_tokens: StrictInt | None = None
    """Token overlap between chunks, 0 to 80 (bge, bce and Qwen3-VL models)."""
    min_relevance: float | None = None
    """Drop results scoring below this (a probability when `calibration` is set), so that
    fewer than `top_n` may come back; None keeps them all."""
    on_progress: Callable[[int, int], object] | None = Field(default=None, exclude=True)
    """Called with (requests done, requests in all) as a long call proceeds."""
    allow_local_media: bool = False
    """Read local files that inputs name as their media (a path in LangChain metadata, an
    `ImageNode.image_path` or a media resource's path in LlamaIndex). Off by default: documents
    and nodes often come from untrusted loaders or shared stores, and reading the paths they name
    would upload local files. URLs and inline data need no opt-in."""
    on_error: Literal["raise", "passthrough"] = "raise"
    """When the service fails after its retries: raise, or pass the inputs through in their
    original order (at most `top_n`), each marked `rerank_status = "failed"` in its metadata, with
    one WARNING logged. Bad input raises either way."""

    @model_validator(mode="after")
    def _check_options(self) -> RerankerSettings:
        RerankOptions(
            self.model,
            top_n=self.top_n,
            instruction=self.instruction,
            max_chunks_per_doc=self.max_chunks_per_doc,
            overlap_tokens=self.overlap_tokens,
            min_relevance=self.min_relevance,
        )
        if self.calibration is not None:
            self.calibration.for_call(self.model, self.instruction)
        return self

    def _usage_report(self, response: RerankResponse) -> dict[str, Any]:
        """What a call reports to the framework's observers: `usage`, `trace_id`, and `model`
        (the configured one when the server names none)."""
        return {
            "usage": response.usage.model_dump(exclude_none=True) if response.usage else None,
            "trace_id": response.trace_id,
            "model": response.model or self.model,
        }

    def _log_usage(self, response: RerankResponse) -> None:
        """Log a call's usage at DEBUG (nothing is built when DEBUG is off)."""
        if logger.isEnabledFor(logging.DEBUG):
            report = self._usage_report(response)
            logger.debug(
                "SiliconFlow rerank: %d results, usage %s, trace id %s",
                len(response.results),
                report["usage"],
                response.trace_id,
            )

    def _kept_on_failure(
        self, inputs: Sequence[_Input], error: SiliconFlowError
    ) -> Sequence[_Input]:
        """The inputs that `on_error="passthrough"` returns unranked when the service failed (the
        first `top_n`), with one WARNING; with `on_error="raise"`, `error` is raised."""
        if self.on_error == "raise":
            raise error
        kept = inputs if self.top_n is None else inputs[: self.top_n]
        logger.warning(
            "SiliconFlow rerank failed, passing %d through unranked: %s", len(kept), error
        )
        return kept

    def _local_file(self, path: str | os.PathLike[str], what: str) -> Path:
        """The path `what` names, when `allow_local_media` allows reading it."""
        if not self.allow_local_media:
            raise InvalidRequestError(
                f"{what} names the local file {str(path)[:80]!r}; set allow_local_media=True to "
                "read local files"
            )
        return Path(path)

    def _rerank_options(self, top_n: int | None) -> dict[str, Any]:
        """The keyword arguments of `rerank()` for one call returning at most `top_n`."""
        return {
            "model": self.model,
            "top_n": top_n,
            "instruction": self.instruction,
            "max_chunks_per_doc": self.max_chunks_per_doc,
            "overlap_tokens": self.overlap_tokens,
            "min_relevance": self.min_relevance,
            "on_progress": self.on_progress,
        }
