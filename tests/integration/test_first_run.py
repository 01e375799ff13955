"""A first run and a migration from the vendor's package (issue 33): the base URL as the vendor
takes it, which site a refused key went to, and the package's metadata."""

from __future__ import annotations

import re
from typing import Any

import pytest

from siliconflow_rerank import AsyncSiliconFlowClient, AuthenticationError, SiliconFlowClient
from siliconflow_rerank._exceptions import status_error

from ..helpers import ROOT


@pytest.mark.parametrize("client_class", [SiliconFlowClient, AsyncSiliconFlowClient])
@pytest.mark.parametrize(
    ("given", "root"),
    [
        ("https://api.siliconflow.com", "https://api.siliconflow.com/v1"),
        ("https://api.siliconflow.com/", "https://api.siliconflow.com/v1"),
        ("https://api.siliconflow.cn/v1", "https://api.siliconflow.cn/v1"),
        ("https://api.siliconflow.cn/v1/rerank", "https://api.siliconflow.cn/v1"),
        ("http://127.0.0.1:8000", "http://127.0.0.1:8000"),  # another server: as given
    ],
)
def test_a_siliconflow_site_is_taken_with_or_without_v1(client_class, given, root, monkeypatch):
    assert client_class(api_key="k", base_url=given).base_url == root
    monkeypatch.setenv("SILICONFLOW_BASE_URL", given)  # as the vendor's CI sets it
    assert client_class(api_key="k").base_url == root


@pytest.mark.parametrize(
    ("base_url", "sent_to", "other"),
    [
        ("https://api.siliconflow.cn/v1", "mainland (.cn)", "https://api.siliconflow.com/v1"),
        ("https://api.siliconflow.com/v1", "international (.com)", "https://api.siliconflow.cn/v1"),
    ],
)
def test_a_refused_key_says_which_site_it_went_to_and_how_to_choose_the_other(
    base_url, sent_to, other
):
    error: Any = status_error(401, b'"Invalid token"', trace_id=None, base_url=base_url, secret="")
    assert isinstance(error, AuthenticationError)
    assert f"SiliconFlow's {sent_to} site" in str(error)
    assert f"base_url={other!r}" in str(error)


def test_a_refused_key_names_the_server_it_went_to_over_a_socket(emulator):
    emulator.api_key = "sk-the-right-one"
    client = SiliconFlowClient(api_key="sk-a-wrong-one", base_url=emulator.base_url)
    with client, pytest.raises(AuthenticationError, match="the key was sent to http://127"):
        client.rerank("apple", ["apple pie"])


def test_the_package_installs_on_every_python_from_3_10():
    metadata = (ROOT / "pyproject.toml").read_text("utf-8")  # (tomllib is 3.11+)
    (requires,) = re.findall(r'^requires-python = "(.*)"$', metadata, re.MULTILINE)
    assert requires == ">=3.10"  # no upper cap: pip on 3.14 takes it


@pytest.mark.parametrize(
    ("endpoint", "typo", "meant"),
    [
        ("rerank", "BAAI/bge-reranker-v2-m4", "BAAI/bge-reranker-v2-m3"),
        ("embed", "BAAI/bge-m4", "BAAI/bge-m3"),
    ],
)
def test_a_model_the_server_does_not_know_gets_the_closest_known_ones(
    emulator, endpoint, typo, meant
):
    from siliconflow_rerank import BadRequestError

    with SiliconFlowClient(api_key="k", base_url=emulator.base_url) as client:
        call = client.rerank if endpoint == "rerank" else client.embed
        arguments: tuple[Any, ...] = ("apple", ["pie"]) if endpoint == "rerank" else (["pie"],)
        with pytest.raises(BadRequestError, match=f"did you mean {meant}") as info:
            call(*arguments, model=typo)
    assert "does not know model" in str(info.value)


def test_an_emulator_on_a_busy_port_says_so(emulator):
    import subprocess
    import sys

    from siliconflow_rerank.emulator import RerankEmulator

    port = int(emulator.base_url.rsplit(":", 1)[1].split("/")[0])
    with pytest.raises(OSError, match=f"port {port} on 127.0.0.1 is already in use"):
        RerankEmulator(port=port).start()
    command = [sys.executable, "-m", "siliconflow_rerank.emulator", "--port", str(port)]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert finished.returncode == 2
    assert "cannot start the emulator: port" in finished.stderr
    assert "Traceback" not in finished.stderr


def test_a_connection_error_names_the_server(make_runner):
    from siliconflow_rerank import APIConnectionError

    from ..helpers import free_port

    port = free_port()  # nothing listens there
    runner = make_runner(base_url=f"http://127.0.0.1:{port}/v1", max_retries=0)
    with pytest.raises(APIConnectionError, match=f"talking to 127.0.0.1:{port}"):
        runner.rerank("apple", ["apple pie"])


def test_each_package_says_its_version():
    import langchain_siliconflow
    import llama_index_siliconflow
    import siliconflow_rerank

    assert langchain_siliconflow.__version__ == siliconflow_rerank.__version__
    assert llama_index_siliconflow.__version__ == siliconflow_rerank.__version__
    assert "__version__" in langchain_siliconflow.__all__


@pytest.mark.parametrize("form", ["model_dump", "to_dict", "to_json"])
def test_llama_index_serialized_forms_read_back(form, emulator, monkeypatch):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from llama_index_siliconflow import SiliconFlowEmbedding, SiliconFlowRerank

    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-first-run")  # the key is never in a dump
    reranker = SiliconFlowRerank(base_url=emulator.base_url, top_n=2, max_retries=1)
    embedding = SiliconFlowEmbedding(base_url=emulator.base_url, dimensions=None, timeout=30)
    for component in (reranker, embedding):
        saved = getattr(component, form)()
        if form == "model_dump":
            again = type(component).model_validate(saved)
        elif form == "to_dict":
            again = type(component).from_dict(saved)
        else:
            again = type(component).from_json(saved)
        assert again.model_dump() == component.model_dump()
        assert "sk-first-run" not in str(saved)
    again_reranker = SiliconFlowRerank.from_dict(reranker.to_dict())
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in ("apple pie", "a bus", "green apples")]
    ranked = again_reranker.postprocess_nodes(nodes, QueryBundle("apple"))
    assert len(ranked) == 2
    assert emulator.stats.requests == 1


def test_a_config_saved_by_the_llama_index_peer_loads(emulator, monkeypatch):
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from llama_index_siliconflow import SiliconFlowRerank

    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-first-run")
    # What llama-index-postprocessor-siliconflow-rerank's to_dict() gives (its base_url is the
    # endpoint's, /rerank included).
    saved = {
        "model": "BAAI/bge-reranker-v2-m3",
        "base_url": f"{emulator.base_url}/rerank",
        "api_key": None,
        "top_n": 2,
        "return_documents": True,
        "max_chunks_per_doc": 1024,
        "overlap_tokens": 80,
        "class_name": "SiliconFlowRerank",
    }
    with pytest.warns(UserWarning, match="ignores return_documents"):
        reranker = SiliconFlowRerank.from_dict(saved)
    assert (reranker.top_n, reranker.max_chunks_per_doc, reranker.overlap_tokens) == (2, 1024, 80)
    nodes = [NodeWithScore(node=TextNode(text=t)) for t in ("apple pie", "a bus", "green apples")]
    ranked = reranker.postprocess_nodes(nodes, QueryBundle("apple"))
    assert [n.node.get_content() for n in ranked] == ["apple pie", "green apples"]
    # top_n=0 in a saved config: every node, reordered, and said.
    peer = {name: value for name, value in saved.items() if name != "return_documents"}
    with pytest.warns(UserWarning, match="reads top_n=0 as top_n=None"):
        every = SiliconFlowRerank.from_dict({**peer, "top_n": 0})
    assert every.top_n is None
    assert len(every.postprocess_nodes(nodes, QueryBundle("apple"))) == 3


def test_the_vendors_attribute_names_read_and_the_key_comes_from_the_environment(monkeypatch):
    pytest.importorskip("langchain_openai")
    from langchain_siliconflow import ChatSiliconFlow, SiliconFlowEmbeddings, SiliconFlowRerank

    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-from-the-environment")
    for adapter in (SiliconFlowEmbeddings(), SiliconFlowRerank()):
        assert adapter.api_key is not None
        assert adapter.api_key.get_secret_value() == "sk-from-the-environment"
        assert adapter.siliconflow_api_key == adapter.api_key
        assert "sk-from-the-environment" not in repr(adapter)
        assert "sk-from-the-environment" not in str(adapter.model_dump())
    chat = ChatSiliconFlow(base_url="https://api.siliconflow.com")
    assert chat.api_key is not None
    assert chat.api_key.get_secret_value() == "sk-from-the-environment"
    assert chat.siliconflow_api_key == chat.api_key
    assert chat.base_url == "https://api.siliconflow.com/v1"
    monkeypatch.delenv("SILICONFLOW_API_KEY")
    assert SiliconFlowEmbeddings().api_key is None  # no key anywhere: made all the same


def test_cohere_style_records_rank_by_their_fields(emulator):
    from langchain_siliconflow import SiliconFlowRerank

    records = [
        {"title": "Buses", "text": "a city bus timetable", "id": 1},
        {"title": "Apples", "text": "keeping apples fresh", "id": 2},
    ]
    reranker = SiliconFlowRerank(api_key="k", base_url=emulator.base_url, top_n=1)
    best = reranker.rerank(records, "apples", rank_fields=["title", "text"])
    assert [r["index"] for r in best] == [1]
    sent = emulator.stats.last_request_body
    assert sent is not None
    assert sent["documents"] == [
        "title: Buses\ntext: a city bus timetable",
        "title: Apples\ntext: keeping apples fresh",
    ]
    # As CohereRerank: top_n of 0 or below means the field's, and model= is for this call.
    assert len(reranker.rerank(records, "apples", top_n=0)) == 1
    reranker.rerank(records, "apples", model="Qwen/Qwen3-Reranker-8B", top_n=None)
    assert emulator.stats.last_request_body["model"] == "Qwen/Qwen3-Reranker-8B"
    # A ready item stays an item; rank_fields without records is a mistake, said before any call.
    assert len(reranker.rerank([{"text": "apples"}, "bus"], "apples")) == 1
    from siliconflow_rerank import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="rank_fields"):
        reranker.rerank(["a", "b"], "apples", rank_fields=["title"])
    # The async method takes the same arguments, to the same effect.
    import asyncio

    again = asyncio.run(reranker.arerank(records, "apples", rank_fields=["title", "text"]))
    assert [r["index"] for r in again] == [1]
    assert emulator.stats.last_request_body["documents"] == sent["documents"]
    assert len(asyncio.run(reranker.arerank(records, "apples", top_n=0))) == 1
    asyncio.run(reranker.arerank(records, "apples", model="Qwen/Qwen3-Reranker-8B", top_n=None))
    assert emulator.stats.last_request_body["model"] == "Qwen/Qwen3-Reranker-8B"


def _doctor(base_url: str, key: str | None) -> tuple[int, str]:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("SILICONFLOW_", "REDIS_"))}
    if key is not None:
        env["SILICONFLOW_API_KEY"] = key
    command = [sys.executable, "-m", "siliconflow_rerank", "doctor", "--base-url", base_url]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    assert "Traceback" not in done.stderr, done.stderr
    return done.returncode, done.stdout


def test_doctor_against_the_emulator_says_all_is_well(emulator):
    code, report = _doctor(emulator.base_url, "sk-doctor-canary-1234")
    assert code == 0, report
    assert "ok       reachable: 127.0.0.1 answered a rerank call in" in report
    assert "SILICONFLOW_API_KEY is set (21 characters)" in report
    assert "all is well" in report
    assert "sk-doctor-canary-1234" not in report
    assert emulator.stats.requests == 1


def test_doctor_names_each_problem_and_fails(emulator):
    from ..helpers import free_port

    unreachable = f"http://127.0.0.1:{free_port()}/v1"
    code, report = _doctor(unreachable, "sk-doctor-canary-1234")
    assert code == 1
    assert "PROBLEM  reachable: cannot reach 127.0.0.1" in report
    assert "python -m siliconflow_rerank.emulator" in report  # offline: where to turn
    code, report = _doctor(emulator.base_url, None)
    assert code == 1
    assert "PROBLEM  API key: No SiliconFlow API key" in report
    emulator.api_key = "sk-the-right-one"
    code, report = _doctor(emulator.base_url, "sk-doctor-canary-1234")
    assert code == 1
    assert "127.0.0.1 refuses the key" in report
    assert "sk-doctor-canary-1234" not in report


def test_the_quick_start_installs_only_what_the_example_imports():
    readme = (ROOT / "README.md").read_text("utf-8")
    (command,) = [line for line in readme.splitlines() if "examples/quickstart.py" in line]
    assert 'pip install ".[langchain,llama-index]"' in command  # not [all]: no Ray, no pyarrow
    example = (ROOT / "examples" / "quickstart.py").read_text("utf-8")
    imported = set(re.findall(r"^\s*(?:from|import) (\w+)", example, re.MULTILINE))
    extras = {"langchain_core", "langchain_siliconflow", "llama_index", "llama_index_siliconflow"}
    allowed = {"__future__", "asyncio", "math", "_support", "siliconflow_rerank", *extras}
    assert imported <= allowed, imported - allowed


def test_chat_pickles_without_its_key_and_the_copy_reads_it_again(monkeypatch):
    pytest.importorskip("langchain_openai")
    import pickle

    from langchain_siliconflow import ChatSiliconFlow

    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-chat-env-5555")
    chat = ChatSiliconFlow(
        api_key="sk-chat-given-4444",
        base_url="http://127.0.0.1:9/v1",
        temperature=0,
        max_tokens=20,
    )
    saved = pickle.dumps(chat)
    assert b"sk-chat-given-4444" not in saved
    copy = pickle.loads(saved)  # as a process pool or Ray hands it over
    assert (copy.temperature, copy.max_tokens, copy.base_url) == (0, 20, "http://127.0.0.1:9/v1")
    assert copy.api_key is not None
    assert copy.api_key.get_secret_value() == "sk-chat-env-5555"  # read again where unpickled
