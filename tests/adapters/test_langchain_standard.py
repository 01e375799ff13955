"""LangChain's own standard test suites (langchain-tests) over our classes (embeddings, chat
model, and our reranker in LangChain's reranked retriever): the unit suites as they are, the
integration suites against an emulator on a loopback socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

langchain_tests = pytest.importorskip("langchain_tests")

from langchain_classic.retrievers import ContextualCompressionRetriever  # noqa: E402
from langchain_core.callbacks import (  # noqa: E402
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document  # noqa: E402
from langchain_core.retrievers import BaseRetriever  # noqa: E402
from langchain_tests.integration_tests import (  # noqa: E402
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
    RetrieversIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests  # noqa: E402

from langchain_siliconflow import ChatSiliconFlow, SiliconFlowEmbeddings, SiliconFlowRerank  # noqa: E402
from siliconflow_rerank.emulator import RerankEmulator  # noqa: E402

KEY = "sk-standard-suite-5150"


@pytest.fixture(scope="module")
def own_emulator() -> Iterator[RerankEmulator]:
    # An emulator of this module's own: the suites build a model per test and never close it,
    # and langchain-openai's shared client keeps its connections open; on the shared emulator
    # the next tests would wait for them to close.
    with RerankEmulator() as emulator:
        yield emulator


class _OnTheEmulator:
    base_url = "http://127.0.0.1:9/v1"  # set per test from the emulator

    @pytest.fixture(autouse=True)
    def _emulator(self, own_emulator: RerankEmulator) -> None:
        type(self).base_url = own_emulator.base_url


class TestEmbeddingsUnit(EmbeddingsUnitTests):
    @property
    def embeddings_class(self) -> type[SiliconFlowEmbeddings]:
        return SiliconFlowEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "BAAI/bge-m3", "api_key": KEY}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return (
            {"SILICONFLOW_API_KEY": KEY, "SILICONFLOW_BASE_URL": "https://api.siliconflow.com/v1"},
            {"model": "BAAI/bge-m3"},
            {"api_key": KEY},
        )


class TestEmbeddingsIntegration(_OnTheEmulator, EmbeddingsIntegrationTests):
    @property
    def embeddings_class(self) -> type[SiliconFlowEmbeddings]:
        return SiliconFlowEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model": "BAAI/bge-m3", "api_key": KEY, "base_url": self.base_url}


class TestChatUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatSiliconFlow]:
        return ChatSiliconFlow

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "Qwen/Qwen2.5-7B-Instruct", "api_key": KEY}

    @property
    def init_from_env_params(self) -> tuple[dict[str, str], dict[str, Any], dict[str, Any]]:
        return ({"SILICONFLOW_API_KEY": KEY}, {"model": "Qwen/Qwen2.5-7B-Instruct"}, {})


class TestChatIntegration(_OnTheEmulator, ChatModelIntegrationTests):
    @property
    def chat_model_class(self) -> type[ChatSiliconFlow]:
        return ChatSiliconFlow

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {"model": "Qwen/Qwen2.5-7B-Instruct", "api_key": KEY, "base_url": self.base_url}

    # What the emulator's chat stand-in does not do (the service does): tools, structured
    # output, media inputs.
    @property
    def has_tool_calling(self) -> bool:
        return False

    @property
    def has_structured_output(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return False

    @property
    def supports_image_inputs(self) -> bool:
        return False


NOTES = [
    "Store apples in the fridge crisper drawer; they stay fresh for weeks.",
    "Apple pie is best with sour apples and cinnamon.",
    "Keep cut apples fresh with a squeeze of lemon juice.",
    "The city bus timetable changes in winter.",
    "Bananas ripen faster next to apples.",
]


class _EveryNote(BaseRetriever):
    """A first stage that returns every note (the reranker does the choosing)."""

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun
    ) -> list[Document]:
        return [Document(page_content=note, id=str(i)) for i, note in enumerate(NOTES)]


class RerankedRetriever(ContextualCompressionRetriever):
    """LangChain's reranked retriever with ours as the compressor; `top_n` from the constructor,
    or per call."""

    def __init__(self, *, base_url: str, top_n: int = 3) -> None:
        reranker = SiliconFlowRerank(api_key=KEY, base_url=base_url, top_n=top_n)
        super().__init__(base_compressor=reranker, base_retriever=_EveryNote())

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        compressor = self._compressor(kwargs.pop("top_n", None))
        documents = self.base_retriever.invoke(query, **kwargs)
        return list(compressor.compress_documents(documents, query))

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        compressor = self._compressor(kwargs.pop("top_n", None))
        documents = await self.base_retriever.ainvoke(query, **kwargs)
        return list(await compressor.acompress_documents(documents, query))

    def _compressor(self, top_n: int | None) -> Any:
        if top_n is None:
            return self.base_compressor
        return self.base_compressor.model_copy(update={"top_n": top_n})


class TestRerankedRetrieverIntegration(_OnTheEmulator, RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[RerankedRetriever]:
        return RerankedRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"base_url": self.base_url}

    @property
    def retriever_query_example(self) -> str:
        return "how to keep apples fresh"

    @property
    def num_results_arg_name(self) -> str:
        return "top_n"
