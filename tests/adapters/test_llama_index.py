"""The LlamaIndex adapter: unit tests on a fake transport, and real-socket tests on the emulator."""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import pickle
from pathlib import Path
from typing import Any

import httpx
import pytest
from llama_index.core import Document as LlamaDocument
from llama_index.core import VectorStoreIndex
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CallbackManager, CBEventType
from llama_index.core.callbacks.base_handler import BaseCallbackHandler
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.event_handlers import BaseEventHandler
from llama_index.core.instrumentation.events import BaseEvent
from llama_index.core.instrumentation.span_handlers import SimpleSpanHandler
from llama_index.core.llms import MockLLM
from llama_index.core.schema import (
    ImageNode,
    MediaResource,
    MetadataMode,
    Node,
    NodeWithScore,
    QueryBundle,
    TextNode,
)

import llama_index_siliconflow.rerank as rerank_module
from llama_index_siliconflow import SiliconFlowRerank
from siliconflow_rerank import AsyncSiliconFlowClient, ServiceUnavailableError, SiliconFlowClient
from siliconflow_rerank.emulator import Fault

from ..helpers import CORPUS, ScoringRecorder, png_file

KEY = "sk-llama-canary-0077"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 8
PNG_URI = "data:image/png;base64," + base64.b64encode(PNG).decode()


Recorder = ScoringRecorder


def mocked(recorder: Recorder, **fields: Any) -> SiliconFlowRerank:
    transport = httpx.MockTransport(recorder)
    return SiliconFlowRerank(
        client=SiliconFlowClient(
            api_key=KEY, max_retries=0, http_client=httpx.Client(transport=transport)
        ),
        async_client=AsyncSiliconFlowClient(
            api_key=KEY, max_retries=0, http_client=httpx.AsyncClient(transport=transport)
        ),
        **fields,
    )


@pytest.fixture(params=["sync", "async"])
def postprocess(request: pytest.FixtureRequest):
    """Call postprocess_nodes, or apostprocess_nodes on a fresh event loop."""

    def run(reranker: SiliconFlowRerank, nodes: list[NodeWithScore], query: Any = "q"):
        bundle = QueryBundle(query) if isinstance(query, str) else query
        if request.param == "sync":
            return reranker.postprocess_nodes(nodes, query_bundle=bundle)
        return asyncio.run(reranker.apostprocess_nodes(nodes, query_bundle=bundle))

    return run


def text_nodes(*texts: str, **metadata: Any) -> list[NodeWithScore]:
    return [
        NodeWithScore(node=TextNode(text=t, id_=f"n{i}", metadata=dict(metadata)), score=0.5)
        for i, t in enumerate(texts)
    ]


# -- configuration ------------------------------------------------------------------------------


def test_class_name_and_defaults():
    reranker = SiliconFlowRerank()
    assert reranker.class_name() == "SiliconFlowRerank"
    assert reranker.top_n == 3
    assert reranker.metadata_mode is MetadataMode.EMBED
    assert reranker.model == "BAAI/bge-reranker-v2-m3"


def test_serialization_never_carries_the_key(monkeypatch, emulator):
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url, top_n=None)
    as_dict = reranker.to_dict()
    pickled = pickle.dumps(reranker)
    assert KEY not in json.dumps(as_dict)
    assert KEY not in reranker.to_json()
    assert KEY.encode() not in pickled
    assert KEY not in repr(reranker)
    assert as_dict["class_name"] == "SiliconFlowRerank"

    monkeypatch.setenv("SILICONFLOW_API_KEY", "sk-env-after-load")
    for clone in (SiliconFlowRerank.from_dict(as_dict), pickle.loads(pickled)):
        assert clone.top_n is None
        assert clone.base_url == emulator.base_url
        result = clone.postprocess_nodes(text_nodes("apple"), query_str="apple")
        assert (result[0].score or 0) > 0
        assert emulator.stats.last_request_headers["authorization"] == "Bearer sk-env-after-load"


def test_deepcopy_works_and_keeps_working():
    recorder = Recorder()
    twin = copy.deepcopy(mocked(recorder))
    assert twin.postprocess_nodes(text_nodes("a"), query_str="q")[0].score == 0.1


# -- postprocessing -----------------------------------------------------------------------------


def test_each_result_can_be_changed_alone(postprocess):
    # Results share nothing a caller can change: rescoring or editing one leaves the others,
    # and the input, as they were.
    nodes = text_nodes("a", "b", "c")
    plain = [NodeWithScore(node=TextNode(text=t, id_=f"p{i}")) for i, t in enumerate("xyz")]
    for given in (nodes, plain):
        scores = [n.score for n in given]
        out = postprocess(mocked(Recorder(0.3, 0.2, 0.1)), given, "query")
        out[0].score = 5.0
        out[0].node.metadata["mine"] = True
        out[0].node.excluded_llm_metadata_keys.append("mine")
        assert [n.score for n in out] == [5.0, 0.2, 0.1]
        assert all("mine" not in n.node.metadata for n in [*out[1:], *given])
        assert all("mine" not in n.node.excluded_llm_metadata_keys for n in [*out[1:], *given])
        assert out[1].model_fields_set == {"node", "score"}
        assert out[1].node.model_fields_set >= {"metadata"}
        assert [n.score for n in given] == scores


def test_nodes_are_scored_copies_best_first(postprocess):
    recorder = Recorder(0.2, 0.9, 0.5, 0.9)
    reranker = mocked(recorder, top_n=3)
    nodes = text_nodes("a", "b", "c", "d", topic="fruit")
    before = [(n.score, n.node.model_dump()) for n in nodes]
    out = postprocess(reranker, nodes, "query")
    assert [n.node.node_id for n in out] == ["n1", "n3", "n2"]  # ties keep input order
    assert [n.score for n in out] == [0.9, 0.9, 0.5]
    assert [n.node.metadata["relevance_score"] for n in out] == [0.9, 0.9, 0.5]
    assert "relevance_score" in out[0].node.excluded_llm_metadata_keys
    assert "relevance_score" in out[0].node.excluded_embed_metadata_keys
    assert "relevance_score" not in out[0].node.get_content(metadata_mode=MetadataMode.LLM)
    assert [(n.score, n.node.model_dump()) for n in nodes] == before
    assert all(o is not i and o.node is not i.node for o in out for i in nodes)
    assert recorder.bodies == [
        {
            "model": "BAAI/bge-reranker-v2-m3",
            "query": "query",
            "documents": [f"topic: fruit\n\n{t}" for t in "abcd"],
            "top_n": 3,
        }
    ]


def test_returned_nodes_are_ordinary_pydantic_objects(postprocess):
    # The adapter builds its results without re-validating them: they must still behave exactly
    # like objects built through the validating constructors.
    out = postprocess(mocked(Recorder(0.3, 0.8), top_n=None), text_nodes("a", "b", topic="x"))
    best = out[0]
    node = best.node.model_copy()
    validated = NodeWithScore(node=node, score=0.8)
    assert best == validated
    assert best.model_dump() == validated.model_dump()
    assert best.to_json() == validated.to_json()
    assert pickle.loads(pickle.dumps(best)) == best
    assert best.model_fields_set == {"node", "score"}
    assert best.node.model_fields_set >= {"text", "metadata", "excluded_llm_metadata_keys"}
    best.score = 0.1
    best.node.metadata["extra"] = 1
    assert out[0].score == 0.1
    assert "extra" not in out[1].node.metadata
    assert best.model_copy(update={"score": 0.5}).score == 0.5


def test_metadata_mode_and_settings(postprocess):
    recorder = Recorder()
    reranker = mocked(
        recorder,
        top_n=None,
        metadata_mode=MetadataMode.NONE,
        model="Qwen/Qwen3-Reranker-8B",
        instruction="Prefer fruit",
    )
    out = postprocess(reranker, text_nodes("a", "b", topic="fruit"))
    assert len(out) == 2
    assert recorder.bodies[0]["documents"] == ["a", "b"]
    assert recorder.bodies[0]["instruction"] == "Prefer fruit"
    assert "top_n" not in recorder.bodies[0]


def test_missing_query_bundle_is_the_conventional_value_error(postprocess):
    recorder = Recorder()
    reranker = mocked(recorder)
    with pytest.raises(ValueError, match="Missing query bundle"):
        reranker.postprocess_nodes(text_nodes("a"))
    with pytest.raises(ValueError, match="Missing query bundle"):
        asyncio.run(reranker.apostprocess_nodes(text_nodes("a")))
    assert recorder.bodies == []


def test_empty_nodes_make_no_request(postprocess):
    recorder = Recorder()
    assert postprocess(mocked(recorder), []) == []
    assert recorder.bodies == []


# -- media nodes --------------------------------------------------------------------------------


def test_image_nodes_from_all_three_sources(postprocess, tmp_path: Path):
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    nodes = [
        NodeWithScore(
            node=ImageNode(image=base64.b64encode(PNG).decode(), image_mimetype="image/png")
        ),
        NodeWithScore(node=ImageNode(image_url="https://img.test/cat.jpg")),
        NodeWithScore(node=ImageNode(image_path=str(path))),
        NodeWithScore(node=ImageNode(text="only a caption")),
    ]
    recorder = Recorder()
    vl = {"model": "Qwen/Qwen3-VL-Reranker-8B", "top_n": None, "allow_local_media": True}
    postprocess(mocked(recorder, **vl), nodes)
    assert recorder.bodies[0]["documents"] == [
        {"image": PNG_URI},
        {"image": "https://img.test/cat.jpg"},
        {"image": PNG_URI},
        "only a caption",
    ]


def test_media_resource_nodes(postprocess, tmp_path: Path):
    path = tmp_path / "clip.mp4"
    mp4 = b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 8
    path.write_bytes(mp4)
    nodes = [
        NodeWithScore(node=Node(image_resource=MediaResource(data=PNG, mimetype="image/png"))),
        NodeWithScore(node=Node(image_resource=MediaResource(url="https://img.test/a.png"))),
        NodeWithScore(node=Node(video_resource=MediaResource(path=path))),
        NodeWithScore(node=Node(video_resource=MediaResource(url="https://v.test/b.mp4"))),
        NodeWithScore(node=Node(text_resource=MediaResource(text="plain words"))),
    ]
    recorder = Recorder()
    vl = {"model": "Qwen/Qwen3-VL-Reranker-8B", "top_n": None, "allow_local_media": True}
    postprocess(mocked(recorder, **vl), nodes)
    assert recorder.bodies[0]["documents"] == [
        {"image": PNG_URI},
        {"image": "https://img.test/a.png"},
        {"video": "data:video/mp4;base64," + base64.b64encode(mp4).decode()},
        {"video": "https://v.test/b.mp4"},
        "plain words",
    ]


def test_image_query_from_the_query_bundle(postprocess, tmp_path: Path):
    path = tmp_path / "query.png"
    path.write_bytes(PNG)
    recorder = Recorder()
    # A local path, read with the opt-in (without it: the test below the next one).
    reranker = mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B", allow_local_media=True)
    postprocess(reranker, text_nodes("a"), QueryBundle(query_str="", image_path=str(path)))
    postprocess(reranker, text_nodes("a"), QueryBundle(query_str="words", image_path=str(path)))
    assert recorder.bodies[0]["query"] == {"image": PNG_URI}
    assert recorder.bodies[1]["query"] == "words"


def test_image_node_on_a_text_model_fails_before_any_request(postprocess):
    recorder = Recorder()
    nodes = [NodeWithScore(node=ImageNode(image_url="https://img.test/cat.jpg"))]
    with pytest.raises(ValueError, match="text only"):
        postprocess(mocked(recorder), nodes)
    assert recorder.bodies == []


def test_unreadable_image_path_fails_before_any_request(postprocess, tmp_path: Path):
    recorder = Recorder()
    nodes = [NodeWithScore(node=ImageNode(image_path=str(tmp_path / "missing.png")))]
    with pytest.raises(ValueError, match="cannot read image file"):
        postprocess(
            mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B", allow_local_media=True), nodes
        )
    assert recorder.bodies == []


@pytest.mark.parametrize(
    "node",
    [
        ImageNode(image_path="/etc/passwd"),
        Node(image_resource=MediaResource(path=Path("/etc/passwd"))),
        Node(video_resource=MediaResource(path=Path("/etc/passwd"))),
    ],
    ids=["image_path", "image_resource", "video_resource"],
)
def test_local_paths_in_nodes_are_read_only_when_allowed(postprocess, node):
    recorder = Recorder()
    nodes = [NodeWithScore(node=node)]
    with pytest.raises(ValueError, match="allow_local_media=True") as info:
        postprocess(mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B"), nodes)
    assert "/etc/passwd" in str(info.value)
    assert recorder.bodies == []


def test_a_query_images_local_path_is_read_only_when_allowed(postprocess, tmp_path: Path):
    picture = png_file(tmp_path / "query.png", "an apple", padding=10)
    recorder = Recorder()
    query = QueryBundle(query_str="", image_path=str(picture))
    nodes = text_nodes("apple pie", "a car")
    with pytest.raises(ValueError, match="allow_local_media=True"):
        postprocess(mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B"), nodes, query)
    assert recorder.bodies == []
    allowed = mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B", allow_local_media=True)
    postprocess(allowed, nodes, query)
    assert recorder.bodies[0]["query"]["image"].startswith("data:image/png;base64,")


def test_a_query_image_url_needs_no_permission(postprocess):
    recorder = Recorder()
    query = QueryBundle(query_str="", image_path="https://img.test/apple.jpg")
    postprocess(mocked(recorder, model="Qwen/Qwen3-VL-Reranker-8B"), text_nodes("a", "b"), query)
    assert recorder.bodies[0]["query"] == {"image": "https://img.test/apple.jpg"}


# -- observability ------------------------------------------------------------------------------


class EventCollector(BaseEventHandler):
    events: list[BaseEvent] = Field(default_factory=list)

    @classmethod
    def class_name(cls) -> str:
        return "EventCollector"

    def handle(self, event: BaseEvent, **kwargs: Any) -> None:
        self.events.append(event)


class CallbackRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        super().__init__(event_starts_to_ignore=[], event_ends_to_ignore=[])
        self.calls: list[tuple[str, CBEventType]] = []

    def on_event_start(self, event_type, payload=None, event_id="", parent_id="", **kwargs):
        self.calls.append(("start", event_type))
        return event_id

    def on_event_end(self, event_type, payload=None, event_id="", **kwargs):
        self.calls.append(("end", event_type))

    def start_trace(self, trace_id=None):
        pass

    def end_trace(self, trace_id=None, trace_map=None):
        pass


@pytest.fixture
def events():
    collector = EventCollector(events=[])
    root = get_dispatcher()
    root.add_event_handler(collector)
    yield collector.events
    root.event_handlers.remove(collector)


def names(events: list[BaseEvent]) -> list[str]:
    return [e.class_name() for e in events if "rerank" in e.class_name().lower()]


def test_events_on_success(postprocess, events):
    callbacks = CallbackRecorder()
    reranker = mocked(Recorder(), callback_manager=CallbackManager([callbacks]))
    out = postprocess(reranker, text_nodes("a", "b"))
    assert names(events) == ["ReRankStartEvent", "SiliconFlowRerankUsageEvent", "ReRankEndEvent"]
    start = next(e for e in events if e.class_name() == "ReRankStartEvent")
    assert start.top_n == 2  # top_n=3 clamped to the two nodes
    usage = next(e for e in events if e.class_name() == "SiliconFlowRerankUsageEvent")
    assert usage.usage == {"input_tokens": 5, "output_tokens": 0, "total_tokens": 5}
    end = next(e for e in events if e.class_name() == "ReRankEndEvent")
    assert [n.node.node_id for n in end.nodes] == [n.node.node_id for n in out]
    assert callbacks.calls == [("start", CBEventType.RERANKING), ("end", CBEventType.RERANKING)]


def test_no_events_for_empty_input_or_missing_query(events):
    reranker = mocked(Recorder())
    assert reranker.postprocess_nodes([], query_str="q") == []
    with pytest.raises(ValueError, match="Missing query bundle"):
        reranker.postprocess_nodes(text_nodes("a"))
    assert names(events) == []


def test_events_stay_balanced_on_a_server_error(postprocess, events):
    callbacks = CallbackRecorder()
    reranker = mocked(Recorder(status=503), callback_manager=CallbackManager([callbacks]))
    with pytest.raises(ServiceUnavailableError):
        postprocess(reranker, text_nodes("a"))
    assert names(events) == ["ReRankStartEvent", "ReRankEndEvent"]
    assert callbacks.calls == [("start", CBEventType.RERANKING), ("end", CBEventType.RERANKING)]


def test_top_n_none_reports_all_nodes_in_the_start_event(events):
    reranker = mocked(Recorder(), top_n=None)
    reranker.postprocess_nodes(text_nodes("a", "b", "c"), query_str="q")
    start = next(e for e in events if e.class_name() == "ReRankStartEvent")
    assert start.top_n == 3


# -- over real sockets --------------------------------------------------------------------------


def truth(emulator, query: str, texts: list[str], top_n: int) -> list[tuple[str, float]]:
    body = {"model": "BAAI/bge-reranker-v2-m3", "query": query, "documents": texts, "top_n": top_n}
    return [(texts[r["index"]], r["relevance_score"]) for r in emulator.rank(body)["results"]]


def test_postprocess_over_http(emulator, postprocess):
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url, top_n=2)
    out = postprocess(reranker, text_nodes(*CORPUS), "apple")
    assert [(n.node.get_content(), n.score) for n in out] == truth(emulator, "apple", CORPUS, 2)


def test_image_nodes_and_image_query_over_http(emulator, postprocess, tmp_path: Path):
    query_image = tmp_path / "red-apple.png"
    query_image.write_bytes(PNG + b"tEXtTitle\x00red apple")
    banana = tmp_path / "banana.png"
    banana.write_bytes(PNG + b"tEXtTitle\x00yellow banana")
    nodes = [
        NodeWithScore(node=ImageNode(image_path=str(banana))),
        NodeWithScore(node=ImageNode(image_url="https://img.test/red-apple-close-up.jpg")),
        NodeWithScore(node=TextNode(text="a car")),
    ]
    reranker = SiliconFlowRerank(
        api_key=KEY,
        base_url=emulator.base_url,
        model="Qwen/Qwen3-VL-Reranker-8B",
        top_n=None,
        allow_local_media=True,
    )
    out = postprocess(reranker, nodes, QueryBundle(query_str="", image_path=str(query_image)))
    assert out[0].node.image_url == "https://img.test/red-apple-close-up.jpg"
    assert out[-1].score == 0


def test_retries_over_http(emulator, postprocess):
    emulator.enqueue(Fault.rate_limited(retry_after="0"))
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url)
    assert postprocess(reranker, text_nodes("apple"), "apple")
    assert emulator.stats.by_status == {429: 1, 200: 1}


def test_query_engine_pipeline(emulator):
    documents = [LlamaDocument(text=t, id_=f"d{i}") for i, t in enumerate(CORPUS)]
    index = VectorStoreIndex.from_documents(documents, embed_model=MockEmbedding(embed_dim=8))
    reranker = SiliconFlowRerank(api_key=KEY, base_url=emulator.base_url, top_n=3)
    retrieved = [
        n.node.get_content()
        for n in index.as_retriever(similarity_top_k=5).retrieve("apple in the fridge")
    ]
    expected = truth(emulator, "apple in the fridge", retrieved, 3)
    engine = index.as_query_engine(
        similarity_top_k=5, node_postprocessors=[reranker], llm=MockLLM()
    )
    sync_response = engine.query("apple in the fridge")
    async_response = asyncio.run(engine.aquery("apple in the fridge"))
    for response in (sync_response, async_response):
        got = [(n.node.get_content(), n.score) for n in response.source_nodes]
        assert got == expected
    assert emulator.stats.requests == 2


class SpanRecorder(SimpleSpanHandler):
    @classmethod
    def class_name(cls) -> str:
        return "SpanRecorder"


@pytest.fixture
def built_events(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the rerank events the adapter builds (whether or not anyone gets them)."""
    built: list[str] = []
    for name in ("ReRankStartEvent", "ReRankEndEvent", "RerankUsageEvent"):
        real = getattr(rerank_module, name)

        def build(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            built.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(rerank_module, name, build)
    return built


def test_nothing_is_built_for_nobody(postprocess, built_events):
    reranker = mocked(Recorder())
    out = postprocess(reranker, text_nodes("a", "b"))
    assert len(out) == 2  # the call itself is unchanged
    assert built_events == []


@pytest.mark.parametrize("listener", ["event handler", "span handler", "callback handler"])
def test_anything_listening_gets_every_event_and_span(postprocess, built_events, listener):
    root = get_dispatcher()
    spans = SpanRecorder()
    collector = EventCollector(events=[])
    callbacks = CallbackRecorder()
    manager = CallbackManager([callbacks] if listener == "callback handler" else [])
    if listener == "event handler":
        root.add_event_handler(collector)
    elif listener == "span handler":
        root.add_span_handler(spans)
    try:
        postprocess(mocked(Recorder(), callback_manager=manager), text_nodes("a", "b"))
    finally:
        if collector in root.event_handlers:
            root.event_handlers.remove(collector)
        if spans in root.span_handlers:
            root.span_handlers.remove(spans)
    assert built_events == ["ReRankStartEvent", "RerankUsageEvent", "ReRankEndEvent"]
    if listener == "event handler":
        assert names(collector.events) == [
            "ReRankStartEvent",
            "SiliconFlowRerankUsageEvent",
            "ReRankEndEvent",
        ]
    elif listener == "span handler":
        assert any("SiliconFlowRerank" in span.id_ for span in spans.completed_spans)
    else:
        assert callbacks.calls == [("start", CBEventType.RERANKING), ("end", CBEventType.RERANKING)]


def test_a_plain_text_node_is_sent_as_its_text_and_others_with_their_metadata():
    recorder = Recorder()
    plain = TextNode(text="plain apple")
    tagged = TextNode(text="tagged apple", metadata={"source": "wiki"})
    mocked(recorder, top_n=None).postprocess_nodes(
        [NodeWithScore(node=plain), NodeWithScore(node=tagged)], query_str="q"
    )
    sent = recorder.bodies[0]["documents"]
    assert sent == ["plain apple", tagged.get_content(metadata_mode=MetadataMode.EMBED)]
    assert "source: wiki" in sent[1]


def test_query_str_and_query_bundle_together_are_refused():
    with pytest.raises(ValueError, match="Cannot specify both"):
        mocked(Recorder()).postprocess_nodes(text_nodes("a"), QueryBundle("q"), query_str="q")
