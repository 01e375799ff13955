"""LangChain's own standard test suites (langchain-tests) over our classes: the unit suites as
they are, the integration suites against the emulator on a loopback socket."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

langchain_tests = pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import (  # noqa: E402
    ChatModelIntegrationTests,
    EmbeddingsIntegrationTests,
)
from langchain_tests.unit_tests import ChatModelUnitTests, EmbeddingsUnitTests  # noqa: E402

from langchain_siliconflow import ChatSiliconFlow, SiliconFlowEmbeddings  # noqa: E402
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
