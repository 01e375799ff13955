"""What each known SiliconFlow rerank model accepts: the one table to update when models change.

Unknown model names are not an error: the vendor adds models, and compatible servers (vLLM, Jina,
Infinity) have their own names. Requests for unknown models pass through unchecked.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ModelCapabilities", "known_models", "model_capabilities"]

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
