"""LangChain integration: `SiliconFlowRerank` (a document compressor), `SiliconFlowEmbeddings`
and `ChatSiliconFlow`.

`ChatSiliconFlow` needs `langchain-openai` (the `langchain-chat` extra), imported on first use.
"""

from __future__ import annotations

import importlib.metadata
import logging
from typing import TYPE_CHECKING, Any

try:
    import langchain_core  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "langchain_siliconflow needs langchain-core: pip install 'langchain-core>=1.0,<2' "
        "(or, in a checkout of siliconflow-rerank, pip install '.[langchain]')"
    ) from error

from siliconflow_rerank import __version__

from .embeddings import SiliconFlowEmbeddings
from .rerank import USAGE_EVENT, RerankResults, SiliconFlowRerank

if TYPE_CHECKING:
    from .chat_models import ChatSiliconFlow

__all__ = [
    "USAGE_EVENT",
    "ChatSiliconFlow",
    "RerankResults",
    "SiliconFlowEmbeddings",
    "SiliconFlowRerank",
    "__version__",
]

VENDOR_DISTRIBUTION = "langchain-siliconflow"
"""The vendor's distribution, which installs an import package of the same name as this one."""


def _warn_if_the_vendor_package_is_installed() -> None:
    # Both distributions write langchain_siliconflow/: whichever was installed last owns
    # __init__.py, and uninstalling either deletes files the other needs. pip says nothing.
    try:
        importlib.metadata.distribution(VENDOR_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return
    logging.getLogger(__name__).warning(
        "The vendor's %s distribution is installed beside siliconflow-rerank, and both install "
        "the langchain_siliconflow package into the same folder. siliconflow-rerank provides "
        "everything the vendor's package offers that works; remove theirs and reinstall ours: "
        "pip uninstall -y %s siliconflow-rerank, then install siliconflow-rerank again.",
        VENDOR_DISTRIBUTION,
        VENDOR_DISTRIBUTION,
    )


_warn_if_the_vendor_package_is_installed()


def __getattr__(name: str) -> Any:
    if name == "ChatSiliconFlow":
        try:
            from .chat_models import ChatSiliconFlow
        except ImportError as error:
            if error.name is None or not error.name.startswith(("langchain_openai", "openai")):
                raise
            raise ImportError(
                "ChatSiliconFlow needs langchain-openai (the langchain-chat extra): "
                "pip install 'langchain-openai>=1.1,<2' (or, in a checkout of siliconflow-rerank, "
                "pip install '.[langchain-chat]')"
            ) from error
        return ChatSiliconFlow
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
