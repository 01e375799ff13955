"""LangChain integration: `SiliconFlowRerank`, a document compressor on SiliconFlow's rerank API."""

from __future__ import annotations

try:
    import langchain_core  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "langchain_siliconflow needs langchain-core: pip install 'siliconflow-rerank[langchain]'"
    ) from error

from .rerank import USAGE_EVENT, RerankResults, SiliconFlowRerank

__all__ = ["USAGE_EVENT", "RerankResults", "SiliconFlowRerank"]
