"""LlamaIndex integration: `SiliconFlowRerank` (a node postprocessor on SiliconFlow's rerank API)
and `SiliconFlowEmbedding` (text and image embeddings)."""

from __future__ import annotations

try:
    import llama_index.core  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "llama_index_siliconflow needs llama-index-core: "
        "pip install 'llama-index-core>=0.12,<0.15' "
        "(or, in a checkout of siliconflow-rerank, pip install '.[llama-index]')"
    ) from error

from siliconflow_rerank import __version__

from .embeddings import SiliconFlowEmbedding
from .rerank import RerankUsageEvent, SiliconFlowRerank

__all__ = ["RerankUsageEvent", "SiliconFlowEmbedding", "SiliconFlowRerank", "__version__"]
