"""`SiliconFlowEmbeddings`: LangChain's `Embeddings` on SiliconFlow's embeddings API."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, StrictInt

from siliconflow_rerank import (
    API_KEY_ENV,
    DEFAULT_EMBEDDING_BATCH_SIZE,
    DEFAULT_EMBEDDING_MODEL,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    AsyncSiliconFlowClient,
    SiliconFlowClient,
)

__all__ = ["SiliconFlowEmbeddings"]


class SiliconFlowEmbeddings(BaseModel, Embeddings):
    """Embed texts with SiliconFlow, for vector stores and retrievers.

    A drop-in for the vendor package's `SiliconFlowEmbeddings` (same constructor arguments:
    `model`, `siliconflow_api_key` or `api_key`, `base_url`, `timeout`, `max_retries`), that
    also splits long lists into concurrent requests of at most 32 texts (the service's limit),
    takes `dimensions` for the Qwen3 models, retries, and raises this package's typed errors.

    Setup:
        `pip install ".[langchain]"` in a checkout of siliconflow-rerank, and set
        `SILICONFLOW_API_KEY`.

    Usage:
        ```python
        from langchain_core.vectorstores import InMemoryVectorStore
        from langchain_siliconflow import SiliconFlowEmbeddings

        embeddings = SiliconFlowEmbeddings(model="Qwen/Qwen3-Embedding-8B", dimensions=1024)
        store = InMemoryVectorStore(embeddings)
        vector = embeddings.embed_query("How do I keep apples fresh?")
        ```

    Vectors come back in input order, as floats. The clients are built on first use, so an
    instance without a key can still be made, copied and pickled (pickles never hold the key).
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid", populate_by_name=True)

    model: str = DEFAULT_EMBEDDING_MODEL
    """The embedding model, e.g. `BAAI/bge-m3` or `Qwen/Qwen3-Embedding-8B`."""
    api_key: SecretStr | None = Field(
        default=None, repr=False, validation_alias=AliasChoices("api_key", "siliconflow_api_key")
    )
    """The API key (also accepted as `siliconflow_api_key`); defaults to `SILICONFLOW_API_KEY`."""
    base_url: str | None = None
    """The API root; defaults to `SILICONFLOW_BASE_URL`, then `https://api.siliconflow.cn/v1`."""
    timeout: float | None = None
    """Seconds for each phase of a request; None keeps the default (10 s connect, 120 s read)."""
    max_retries: StrictInt = DEFAULT_MAX_RETRIES
    """Retries after a connection error, timeout, 408, 429 or 5xx."""
    dimensions: StrictInt | None = None
    """The vector length, for the models that take it (Qwen3 embeddings); None: the model's own."""
    batch_size: StrictInt = DEFAULT_EMBEDDING_BATCH_SIZE
    """Texts per request; longer lists are split (the service takes at most 32)."""
    max_concurrency: StrictInt = DEFAULT_MAX_CONCURRENCY
    """How many requests of one split call run at once."""
    requests_per_minute: StrictInt | None = None
    """Client-side request budget, shared by every call on this instance."""
    tokens_per_minute: StrictInt | None = None
    """Client-side (estimated) token budget, shared likewise."""

    _client: SiliconFlowClient | None = PrivateAttr(default=None)
    _async_client: AsyncSiliconFlowClient | None = PrivateAttr(default=None)

    @property
    def lc_secrets(self) -> dict[str, str]:
        """Where LangChain's serializer finds the key: the environment variable, never the value."""
        return {"api_key": API_KEY_ENV}

    def _settings(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "timeout": DEFAULT_TIMEOUT if self.timeout is None else self.timeout,
            "max_retries": self.max_retries,
            "max_concurrency": self.max_concurrency,
            "requests_per_minute": self.requests_per_minute,
            "tokens_per_minute": self.tokens_per_minute,
        }

    def _options(self) -> dict[str, Any]:
        return {"model": self.model, "dimensions": self.dimensions, "batch_size": self.batch_size}

    def _sync(self) -> SiliconFlowClient:
        if self._client is None:
            self._client = SiliconFlowClient(**self._settings())
        return self._client

    def _async(self) -> AsyncSiliconFlowClient:
        if self._async_client is None:
            self._async_client = AsyncSiliconFlowClient(**self._settings())
        return self._async_client

    def __getstate__(self) -> dict[Any, Any]:
        # Pickles never carry the key (nor live clients): an unpickled instance reads
        # SILICONFLOW_API_KEY again when it is first used.
        state = dict(super().__getstate__())
        state["__dict__"] = {**state["__dict__"], "api_key": None}
        state["__pydantic_private__"] = {"_client": None, "_async_client": None}
        return state

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed texts for storage: one vector per text, in order (`[]` for no texts)."""
        if not texts:
            return []
        return self._sync().embed(texts, **self._options()).embeddings

    def embed_query(self, text: str) -> list[float]:
        """Embed one query text."""
        return self._sync().embed([text], **self._options()).embeddings[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        """Async `embed_documents`, on the native async client (no thread pool)."""
        if not texts:
            return []
        return (await self._async().embed(texts, **self._options())).embeddings

    async def aembed_query(self, text: str) -> list[float]:
        """Async `embed_query`, on the native async client."""
        return (await self._async().embed([text], **self._options())).embeddings[0]

    def close(self) -> None:
        """Close the sync client's connection pool."""
        if self._client is not None:
            self._client.close()

    async def aclose(self) -> None:
        """Close the async client's connection pool."""
        if self._async_client is not None:
            await self._async_client.aclose()
