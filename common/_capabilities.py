"""What each known SiliconFlow model accepts (rerank and embeddings): the tables to update when
models change.

Unknown model names are not an error: the vendor adds models, and compatible servers (vLLM, Jina,
Infinity) have their own names. Requests for unknown models pass through unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "EmbeddingCapabilities",
    "ModelCapabilities",
    "embedding_capabilities",
    "known_embedding_models",
    "known_models",
    "model_capabilities",
]

TEXT = frozenset({"text"})
TEXT_IMAGE_VIDEO = frozenset({"text", "image", "video"})


@dataclass(frozen=True)
class ModelCapabilities:
    """What one rerank model accepts.

    Attributes:
        modalities: The item kinds it ranks: `"text"`, plus `"image"` and `"video"` if multimodal.
        instruction: Whether it takes the `instruction` field.
        chunking: Whether it takes `max_chunks_per_doc` and `overlap_tokens`.
        context_tokens: Its context length in tokens (query and one document chunk together).
    """

    modalities: frozenset[str]
    instruction: bool
    chunking: bool
    context_tokens: int


_BGE = ModelCapabilities(TEXT, instruction=False, chunking=True, context_tokens=8192)
_QWEN3 = ModelCapabilities(TEXT, instruction=True, chunking=False, context_tokens=32768)

_MODELS: dict[str, ModelCapabilities] = {
    "BAAI/bge-reranker-v2-m3": _BGE,
    "Pro/BAAI/bge-reranker-v2-m3": _BGE,
    "netease-youdao/bce-reranker-base_v1": ModelCapabilities(
        TEXT, instruction=False, chunking=True, context_tokens=512
    ),
    "Qwen/Qwen3-Reranker-8B": _QWEN3,
    "Qwen/Qwen3-Reranker-4B": _QWEN3,
    "Qwen/Qwen3-Reranker-0.6B": _QWEN3,
    # The vendor page lists the chunking fields, not `instruction`, for the VL model: we follow it.
    "Qwen/Qwen3-VL-Reranker-8B": ModelCapabilities(
        TEXT_IMAGE_VIDEO, instruction=False, chunking=True, context_tokens=32768
    ),
}


def model_capabilities(model: str) -> ModelCapabilities | None:
    """Return what `model` accepts, or None for a model this package does not know."""
    return _MODELS.get(model)


def known_models() -> dict[str, ModelCapabilities]:
    """Return a copy of the known-model table, keyed by model name."""
    return dict(_MODELS)


@dataclass(frozen=True)
class EmbeddingCapabilities:
    """What one embedding model accepts.

    Attributes:
        modalities: The input kinds it embeds: `"text"`, plus `"image"` if multimodal.
        dimensions: The length of its vectors when `dimensions` is not asked for.
        dimension_choices: The values `dimensions` may take; None when the model does not take
            the field; empty when it does but the allowed values are not documented.
        max_input_tokens: The longest input it takes, in tokens.
    """

    modalities: frozenset[str]
    dimensions: int
    dimension_choices: frozenset[int] | None
    max_input_tokens: int


_STEPS = (64, 128, 256, 512, 768, 1024, 1536, 2048, 2560, 4096)
_TEXT_IMAGE = frozenset({"text", "image"})
_BGE_M3 = EmbeddingCapabilities(TEXT, 1024, None, 8192)
_BGE_LARGE = EmbeddingCapabilities(TEXT, 1024, None, 512)

_EMBEDDING_MODELS: dict[str, EmbeddingCapabilities] = {
    "BAAI/bge-m3": _BGE_M3,
    "Pro/BAAI/bge-m3": _BGE_M3,
    "BAAI/bge-large-zh-v1.5": _BGE_LARGE,
    "BAAI/bge-large-en-v1.5": _BGE_LARGE,
    "netease-youdao/bce-embedding-base_v1": EmbeddingCapabilities(TEXT, 768, None, 512),
    "Qwen/Qwen3-Embedding-8B": EmbeddingCapabilities(TEXT, 4096, frozenset(_STEPS), 32768),
    "Qwen/Qwen3-Embedding-4B": EmbeddingCapabilities(
        TEXT, 2560, frozenset(s for s in _STEPS if s <= 2560), 32768
    ),
    "Qwen/Qwen3-Embedding-0.6B": EmbeddingCapabilities(
        TEXT, 1024, frozenset(s for s in _STEPS if s <= 1024), 32768
    ),
    # The vendor documents no `dimensions` steps for the VL model: the server has the last word.
    "Qwen/Qwen3-VL-Embedding-8B": EmbeddingCapabilities(_TEXT_IMAGE, 4096, frozenset(), 32768),
}


def embedding_capabilities(model: str) -> EmbeddingCapabilities | None:
    """Return what embedding `model` accepts, or None for a model this package does not know."""
    return _EMBEDDING_MODELS.get(model)


def known_embedding_models() -> dict[str, EmbeddingCapabilities]:
    """Return a copy of the known embedding-model table, keyed by model name."""
    return dict(_EMBEDDING_MODELS)
