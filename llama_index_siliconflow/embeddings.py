"""`SiliconFlowEmbedding`: LlamaIndex's (multimodal) embedding on SiliconFlow's embeddings API."""

from __future__ import annotations

from io import BytesIO
from typing import Any, Literal

from llama_index.core.bridge.pydantic import Field
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.embeddings.multi_modal_base import ImageType
from pydantic import AliasChoices

from siliconflow_rerank import (
    DEFAULT_EMBEDDING_BATCH_SIZE,
    DEFAULT_EMBEDDING_MODEL,
    ClientOwner,
    EmbeddingInput,
    image_item,
)

from ._components import Serialized

__all__ = ["SiliconFlowEmbedding"]


class SiliconFlowEmbedding(Serialized, ClientOwner, MultiModalEmbedding):
    """Embed text and images with SiliconFlow, for `VectorStoreIndex` and
    `MultiModalVectorStoreIndex`, sync and async.

    A drop-in for LlamaIndex's own SiliconFlow embedding (same arguments: `model`, `api_key`,
    `base_url`, `encoding_format`, `embed_batch_size`, `max_retries`), that also splits long lists
    into concurrent requests of at most 32 inputs (the service's limit), takes `dimensions` for
    the Qwen3 models, embeds images with `Qwen/Qwen3-VL-Embedding-8B`, keeps the key secret,
    retries with backoff and raises this package's typed errors.

    Setup:
        `pip install ".[llama-index]"` in a checkout of siliconflow-rerank, and set
        `SILICONFLOW_API_KEY`.

    Usage:
        ```python
        from llama_index.core import Settings
        from llama_index_siliconflow import SiliconFlowEmbedding

        Settings.embed_model = SiliconFlowEmbedding(model="Qwen/Qwen3-Embedding-8B", dimensions=512)
        ```

    An image is a path, URL or data URI string, or a `BytesIO`; a path given to
    `get_image_embedding` is read (it is the caller's own choice). A text-only model given an
    image fails before any request.
    """

    model: str = Field(
        default=DEFAULT_EMBEDDING_MODEL,
        validation_alias=AliasChoices("model", "model_name"),
        description="The embedding model, e.g. `BAAI/bge-m3` or `Qwen/Qwen3-VL-Embedding-8B`.",
    )
    dimensions: int | None = Field(
        default=None,
        strict=True,
        description="The vector length, for the models that take it (Qwen3); None: the model's.",
    )
    encoding_format: Literal["float", "base64"] = Field(
        default="base64",
        description=(
            "How vectors travel: base64 float32 (a quarter of the size of JSON numbers, faster "
            "to decode) or JSON floats; they are returned as floats either way."
        ),
    )
    embed_batch_size: int = Field(
        default=8 * DEFAULT_EMBEDDING_BATCH_SIZE,
        gt=0,
        le=2048,
        description=(
            "Inputs LlamaIndex hands over at once; each group is sent as concurrent requests of "
            "at most 32 inputs."
        ),
    )

    def model_post_init(self, context: Any) -> None:
        super().model_post_init(context)
        self.model_name = self.model  # what LlamaIndex shows in its events and traces

    @classmethod
    def class_name(cls) -> str:
        """The component's name in LlamaIndex serialization."""
        return "SiliconFlowEmbedding"

    def _options(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "dimensions": self.dimensions,
            "encoding_format": self.encoding_format,
        }

    def _embed(self, inputs: list[EmbeddingInput]) -> list[list[float]]:
        if not inputs:
            return []
        return self._sync().embed(inputs, **self._options()).embeddings

    async def _aembed(self, inputs: list[EmbeddingInput]) -> list[list[float]]:
        if not inputs:
            return []
        return (await self._async().embed(inputs, **self._options())).embeddings

    # -- text ------------------------------------------------------------------------------------

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return (await self._aembed([query]))[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return (await self._aembed([text]))[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(list(texts))

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await self._aembed(list(texts))

    # -- images ----------------------------------------------------------------------------------

    def _get_image_embedding(self, img_file_path: ImageType) -> list[float]:
        return self._embed([_image(img_file_path)])[0]

    async def _aget_image_embedding(self, img_file_path: ImageType) -> list[float]:
        return (await self._aembed([_image(img_file_path)]))[0]

    def _get_image_embeddings(self, img_file_paths: list[ImageType]) -> list[list[float]]:
        return self._embed([_image(image) for image in img_file_paths])

    async def _aget_image_embeddings(self, img_file_paths: list[ImageType]) -> list[list[float]]:
        return await self._aembed([_image(image) for image in img_file_paths])


def _image(image: ImageType) -> EmbeddingInput:
    """An image item from what LlamaIndex passes: a path, URL or data URI string, or bytes."""
    if isinstance(image, BytesIO):
        return image_item(image.getvalue())
    return image_item(image, allow_paths=True)
