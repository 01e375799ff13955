"""`SiliconFlowEmbeddings`: LangChain's `Embeddings` on SiliconFlow's embeddings API."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import StrictInt

from siliconflow_rerank import (
    API_KEY_ENV,
    DEFAULT_EMBEDDING_BATCH_SIZE,
    DEFAULT_EMBEDDING_MODEL,
    ClientOwner,
    EmbeddingInput,
    image_item,
)

__all__ = ["SiliconFlowEmbeddings"]


class SiliconFlowEmbeddings(ClientOwner, Embeddings):
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

    Images (`embed_image`, for `Qwen/Qwen3-VL-Embedding-8B`) go through the same path. Vectors
    come back in input order, as floats. The client settings (`timeout`, `max_retries`,
    `max_concurrency`, rate limits, ...) are fields too; clients are built on first use, so an
    instance without a key can still be made, copied and pickled (pickles never hold the key).
    """

    model: str = DEFAULT_EMBEDDING_MODEL
    """The embedding model, e.g. `BAAI/bge-m3` or `Qwen/Qwen3-Embedding-8B`."""
    dimensions: StrictInt | None = None
    """The vector length, for the models that take it (Qwen3 embeddings); None: the model's own."""
    batch_size: StrictInt = DEFAULT_EMBEDDING_BATCH_SIZE
    """Texts per request; longer lists are split (the service takes at most 32)."""

    @property
    def lc_secrets(self) -> dict[str, str]:
        """Where LangChain's serializer finds the key: the environment variable, never the value."""
        return {"api_key": API_KEY_ENV}

    def _options(self) -> dict[str, Any]:
        return {"model": self.model, "dimensions": self.dimensions, "batch_size": self.batch_size}

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

    def embed_image(self, uris: list[str]) -> list[list[float]]:
        """Embed images (local paths, URLs or data URIs) with a multimodal model such as
        `Qwen/Qwen3-VL-Embedding-8B`: the method vector stores that hold images call (Chroma's
        `add_images`). Paths given here are read: they are the caller's own choice."""
        if not uris:
            return []
        return self._sync().embed(_images(uris), **self._options()).embeddings

    async def aembed_image(self, uris: list[str]) -> list[list[float]]:
        """Async `embed_image`, on the native async client."""
        if not uris:
            return []
        return (await self._async().embed(_images(uris), **self._options())).embeddings


def _images(uris: list[str]) -> list[EmbeddingInput]:
    return [image_item(uri, allow_paths=True) for uri in uris]
