"""The compact results of a call and the merge of a split call's answers, without a transport."""

from __future__ import annotations

import gc
import json
import pickle
import random
import weakref
from unittest.mock import Mock

import msgspec
import pytest
from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from siliconflow_rerank import (
    RankedResults,
    RerankDocument,
    RerankOptions,
    RerankResponse,
    RerankResult,
    ResponseValidationError,
    Usage,
    _ranking,
    _wire,
)
from siliconflow_rerank._ranking import from_scores
from siliconflow_rerank._ranking import merged as merged_ranking
from siliconflow_rerank._rerank import RerankPlan, RerankRequest, _filler, parse, prepare_rerank
from siliconflow_rerank._rerank import build_request as build
from siliconflow_rerank._wire import usage_from

from ..helpers import pipeline_for

MODEL = "BAAI/bge-reranker-v2-m3"


def build_request(query: str, documents: list[str], **options: object) -> RerankRequest:
    return build(query, documents, RerankOptions(**options))  # type: ignore[arg-type]


def planned(batch_size: int, query: str, documents: list[str], **options: object) -> RerankPlan:
    """The plan of a call split in batches of `batch_size`."""
    pipeline = pipeline_for(max_documents_per_request=batch_size)
    return prepare_rerank(pipeline, query, documents, **options)  # type: ignore[arg-type]


class Batch:
    """One of a plan's requests: its number, its documents' positions, and the request."""

    def __init__(self, plan: RerankPlan, number: int) -> None:
        self.plan, self.number = plan, number
        assert plan.groups is not None
        self.positions = plan.groups[number]

    def request(self) -> RerankRequest:
        return self.plan.request(self.number)


def batches_of(plan: RerankPlan) -> list[Batch]:
    return [Batch(plan, number) for number in range(len(plan))]


def merged(parts, request: RerankRequest) -> RankedResults:
    return merged_ranking(parts, request.top_n, _filler(request))


def some_results() -> list[RerankResult]:
    return [
        RerankResult(index=2, relevance_score=0.9),
        RerankResult(index=0, relevance_score=0.5, document=RerankDocument(text="a")),
        RerankResult(index=1, relevance_score=0.1),
    ]


def test_ranked_results_read_as_the_list_of_results_they_hold():
    given = some_results()
    results = RankedResults(given)
    assert len(results) == 3
    assert results == given
    assert given == results
    assert list(results) == given
    assert results[0] == given[0]
    assert results[-1] == given[-1]
    assert results[1].document == RerankDocument(text="a")
    assert isinstance(results[1:], RankedResults)
    assert results[1:] == given[1:]
    assert list(results.pairs()) == [(2, 0.9), (0, 0.5), (1, 0.1)]
    assert results != given[:2]
    assert results != [
        *given[:2],
        RerankResult(index=1, relevance_score=0.2),
    ]
    assert "RerankResult(index=2, relevance_score=0.9" in repr(results)
    with pytest.raises(IndexError):
        results[3]


def test_ranked_results_are_read_only_and_unhashable():
    results = RankedResults(some_results())
    assert not hasattr(results, "append")
    assert not hasattr(results, "__setitem__")
    with pytest.raises(TypeError):
        hash(results)


def test_a_response_round_trips_through_pickle_and_json():
    response = RerankResponse(results=some_results(), trace_id="t")
    assert pickle.loads(pickle.dumps(response)) == response
    dumped = response.model_dump()
    assert dumped["results"][0] == {"index": 2, "relevance_score": 0.9, "document": None}
    assert dumped["results"][1]["document"]["text"] == "a"
    assert RerankResponse.model_validate_json(response.model_dump_json()) == response
    schema = RerankResponse.model_json_schema()["properties"]["results"]
    assert schema["type"] == "array"
    assert schema["items"] == {"$ref": "#/$defs/RerankResult"}


def test_a_response_validates_results_given_as_dicts():
    response = RerankResponse(results=[{"index": 1, "relevance_score": 0.5}])
    assert response.results == [RerankResult(index=1, relevance_score=0.5)]
    with pytest.raises(ValidationError):
        RerankResponse(results=[{"index": -1, "relevance_score": 0.5}])


def answer(results: list[tuple[int, float]], **extra: object) -> bytes:
    body = {"results": [{"index": i, "relevance_score": s} for i, s in results], **extra}
    return json.dumps(body).encode()


@pytest.mark.parametrize("top_n", [None, 1, 7, 40])
@pytest.mark.parametrize("how", ["sorted at once", "k-way merge"])
@pytest.mark.parametrize("arrival", ["in order", "reversed"])
def test_merged_batches_rank_as_one_sort_would(top_n, how, arrival, monkeypatch):
    if how == "k-way merge":  # the path of very long answers
        monkeypatch.setattr("siliconflow_rerank._ranking._SORTED_AT_ONCE", 0)
        monkeypatch.setattr("siliconflow_rerank._ranking._MERGED_AT_ONCE", 3)
    # Scores drawn from a few values: many ties, which must fall in index order across batches.
    chance = random.Random(7)
    documents = [f"doc {i}" for i in range(40)]
    scores = [chance.choice([0.1, 0.5, 0.9]) for _ in documents]
    the_plan = planned(6, "q", documents, model=MODEL, top_n=top_n)
    request = the_plan.call
    assert the_plan.groups is not None  # split
    parts = []
    batches = batches_of(the_plan) if arrival == "in order" else batches_of(the_plan)[::-1]
    for batch in batches:  # merged in any order
        sent = batch.request()
        mine = [(i, scores[p]) for i, p in enumerate(batch.positions)]
        chance.shuffle(mine)  # the server's order does not matter either
        parts.append((parse(answer(mine), sent, trace_id=None).results, batch.positions))
    expected = sorted(range(40), key=lambda i: (-scores[i], i))[:top_n]
    ranked = merged(parts, request)
    assert [i for i, _ in ranked.pairs()] == expected
    assert [s for _, s in ranked.pairs()] == [scores[i] for i in expected]


@pytest.mark.parametrize("how", ["sorted at once", "k-way merge"])
def test_merged_batches_keep_each_document_with_its_result(how, monkeypatch):
    if how == "k-way merge":
        monkeypatch.setattr("siliconflow_rerank._ranking._SORTED_AT_ONCE", 0)
    documents = ["a", "b", "c", "d"]
    the_plan = planned(2, "q", documents, model=MODEL, return_documents=True)
    request = the_plan.call
    assert the_plan.groups is not None  # split
    parts = []
    for batch in batches_of(the_plan):
        local = [(0, 0.2 + batch.number / 10), (1, 0.9 - batch.number / 10)]
        # The server echoes the first batch's documents and drops the second's.
        echo = batch.number == 0
        results = [
            {
                "index": i,
                "relevance_score": s,
                **({"document": {"text": documents[batch.positions[i]]}} if echo else {}),
            }
            for i, s in local
        ]
        content = json.dumps({"results": results}).encode()
        parts.append((parse(content, batch.request(), trace_id=None).results, batch.positions))
    ranked = merged(parts, request)
    assert [(r.index, r.document.text if r.document else None) for r in ranked] == [
        (1, "b"),
        (3, "d"),
        (2, "c"),
        (0, "a"),
    ]


def test_an_assembly_keeps_each_answers_results_but_not_the_answer():
    the_plan = planned(2, "q", [f"doc {i}" for i in range(6)], model=MODEL)
    assert the_plan.groups is not None  # split
    assembly = the_plan
    gone = []
    for batch in batches_of(the_plan):
        usage = {"input_tokens": 5}
        content = answer([(0, 0.5), (1, 0.25 * batch.number)], id=f"r{batch.number}", usage=usage)
        response = parse(content, batch.request(), trace_id=f"t{batch.number}")
        gone.append(weakref.ref(response))
        assembly.add(batch.number, response)
        del response
    gc.collect()
    assert all(ref() is None for ref in gone)  # only the compact results were kept
    whole = assembly.answer()
    assert [i for i, _ in whole.results.pairs()] == [0, 2, 4, 5, 3, 1]
    assert whole.id == "r0"
    assert whole.trace_id == "t0,t1,t2"
    assert whole.usage is not None
    assert whole.usage.input_tokens == 15


def test_an_assembly_refuses_to_answer_before_every_batch_is_in():
    the_plan = planned(2, "q", ["a", "b", "c"], model=MODEL)
    assert the_plan.groups is not None  # split
    assembly = the_plan
    assembly.add(0, parse(answer([(0, 0.5), (1, 0.4)]), the_plan.request(0), trace_id=None))
    with pytest.raises(ValueError, match="missing"):
        assembly.answer()


@pytest.mark.parametrize("how", ["sorted at once", "k-way merge"])
def test_a_merge_of_fewer_results_than_top_n_holds_just_those(how, monkeypatch):
    if how == "k-way merge":
        monkeypatch.setattr("siliconflow_rerank._ranking._SORTED_AT_ONCE", 0)
    the_plan = planned(3, "q", [f"doc {i}" for i in range(6)], model=MODEL, top_n=5)
    request = the_plan.call
    assert the_plan.groups is not None  # split
    # Parts that hold fewer results than each batch's top_n (3): what the known scores of a
    # cache give a merge (an answer with fewer than it asked for is refused when read).
    parts = [(from_scores({2: 0.4}), batch.positions) for batch in batches_of(the_plan)]
    ranked = merged(parts, request)
    assert list(ranked.pairs()) == [(2, 0.4), (5, 0.4)]


# -- reading an answer: msgspec for the usual answer, pydantic for the rest ---------------------


def _answer(results: list[dict[str, object]], **fields: object) -> bytes:
    return json.dumps({"id": "a-1", "results": results, **fields}).encode()


READ_BOTH_WAYS = {
    "ranked": _answer([{"index": 1, "relevance_score": 0.9}, {"index": 0, "relevance_score": 0.2}]),
    "unranked": _answer(
        [
            {"index": 0, "relevance_score": 0.2},
            {"index": 2, "relevance_score": 0.7},
            {"index": 1, "relevance_score": 0.9},
        ]
    ),
    "tied, out of index order": _answer(
        [
            {"index": 2, "relevance_score": 0.5},
            {"index": 0, "relevance_score": 0.5},
            {"index": 1, "relevance_score": 0.5},
        ]
    ),
    "integer scores": _answer(
        [{"index": 0, "relevance_score": 1}, {"index": 1, "relevance_score": 0}]
    ),
    "documents echoed": _answer(
        [
            {"index": 1, "relevance_score": 0.1, "document": {"text": "b"}},
            {"index": 0, "relevance_score": 0.3, "document": "a"},
        ]
    ),
    "usage, SiliconFlow's shape": _answer(
        [{"index": 0, "relevance_score": 0.5}],
        meta={"tokens": {"input_tokens": 7, "output_tokens": 0}},
        model="m",
    ),
    "usage, OpenAI's names": _answer(
        [{"index": 0, "relevance_score": 0.5}], usage={"prompt_tokens": 4, "total_tokens": 4}
    ),
    "usage, billed units": _answer(
        [{"index": 0, "relevance_score": 0.5}],
        meta={"tokens": {"input_tokens": 3}, "billed_units": {"search_units": 1}},
    ),
    "usage, an extra count": _answer(
        [{"index": 0, "relevance_score": 0.5}], tokens={"input_tokens": 3, "cached_tokens": 1}
    ),
    "usage, a null count": _answer(
        [{"index": 0, "relevance_score": 0.5}], tokens={"input_tokens": None, "total_tokens": 2}
    ),
    "huge finite scores": _answer(
        [{"index": 0, "relevance_score": 1.7e308}, {"index": 1, "relevance_score": 1.6e308}]
    ),
}


@pytest.mark.parametrize("documents", [False, True])
@pytest.mark.parametrize("top_n", [None, 1])
@pytest.mark.parametrize("name", READ_BOTH_WAYS)
def test_an_answer_reads_the_same_with_or_without_the_fast_reader(
    name, top_n, documents, monkeypatch
):
    content = READ_BOTH_WAYS[name]
    count = len(json.loads(content)["results"])  # as many documents as results
    request = build_request(
        "q", ["a", "b", "c"][:count], model=MODEL, top_n=top_n, return_documents=documents
    )
    fast = parse(content, request, trace_id="t")

    def refuse(content: bytes) -> None:
        raise msgspec.DecodeError("refused")

    monkeypatch.setattr(_ranking, "_read_plain", refuse)
    monkeypatch.setattr(_ranking, "_read_bare", refuse)
    exact = parse(content, request, trace_id="t")
    assert fast == exact
    assert fast.model_dump() == exact.model_dump()
    assert fast.model_dump(exclude_unset=True) == exact.model_dump(exclude_unset=True)
    assert fast.usage == exact.usage
    if fast.usage is not None and exact.usage is not None:
        assert fast.usage.model_fields_set == exact.usage.model_fields_set
        assert fast.usage.model_extra == exact.usage.model_extra


def test_a_score_past_the_float_range_is_refused_by_name():
    content = b'{"results": [{"index": 0, "relevance_score": 1e999}]}'
    with pytest.raises(ResponseValidationError, match=r"results\.0\.relevance_score"):
        parse(content, build_request("q", ["a"], model=MODEL), trace_id=None)


@pytest.mark.parametrize(("documents", "name"), [(False, "_read_bare"), (True, "_read_plain")])
def test_the_fast_reader_reads_the_usual_answer(documents, name, monkeypatch):
    # The equivalence above would hold with the fast reader never used; this says it is used
    # (without documents asked for, the reader whose results have two fields).
    reader = Mock(wraps=getattr(_ranking, name))
    monkeypatch.setattr(_ranking, name, reader)
    monkeypatch.setattr(_ranking, "_read_wire", None)  # the exact reader is not reached
    response = parse(
        READ_BOTH_WAYS["usage, SiliconFlow's shape"],
        build_request("q", ["a"], model=MODEL, return_documents=documents),
        trace_id=None,
    )
    reader.assert_called_once()
    assert [(r.index, r.relevance_score) for r in response.results] == [(0, 0.5)]
    assert response.usage is not None
    assert response.usage.total_tokens == 7


@pytest.mark.parametrize(
    "tokens",
    [
        {"input_tokens": 5, "output_tokens": 0},
        {"input_tokens": 5},
        {"total_tokens": 9},
        {"input_tokens": 2, "image_tokens": 3, "total_tokens": 6},
    ],
)
def test_plain_counts_make_the_usage_validation_would(tokens):
    # Built without validation: the same model, fields-set and extras as validation gives.
    total = tokens.get("total_tokens", sum(tokens.values()))
    expected = Usage.model_validate({**tokens, "total_tokens": total, "billed_units": None})
    got = usage_from(tokens)
    assert got == expected
    assert got is not None
    assert got.model_fields_set == expected.model_fields_set
    assert got.model_extra == expected.model_extra == {}
    with pytest.raises(ValidationError):
        got.input_tokens = 1  # type: ignore[misc]  # frozen, as a validated one is


@pytest.mark.parametrize(
    "tokens", [{"input_tokens": True}, {"input_tokens": 1.5}, {"input_tokens": "3"}]
)
def test_counts_of_another_type_are_still_refused(tokens):
    with pytest.raises(ValidationError):
        usage_from(tokens)


def test_a_document_echoed_under_an_escaped_key_is_still_read():
    content = (
        b'{"results": [{"index": 0, "relevance_score": 0.5, "\\u0064ocument": {"text": "a"}}]}'
    )
    request = build_request("q", ["z"], model=MODEL, return_documents=True)
    response = parse(content, request, trace_id=None)
    assert response.results[0].document == RerankDocument(text="a")


def test_a_document_sent_without_being_asked_for_is_not_kept():
    # Documents echoed unasked would cost memory for nothing: the reader skips them.
    content = b'{"results": [{"index": 0, "relevance_score": 0.5, "document": {"text": "a"}}]}'
    response = parse(content, build_request("q", ["a"], model=MODEL), trace_id=None)
    assert response.results[0].document is None
    assert response.results[0].model_fields_set == {"index", "relevance_score"}


class _Note(BaseModel):
    model_config = ConfigDict(extra="allow")

    text: str
    tags: list[str] = []
    _seen: int = PrivateAttr(default=0)


@pytest.mark.parametrize("updates", [{}, {"tags": ["b"]}, {"text": "y", "tags": []}])
def test_a_copy_is_what_model_copy_makes(updates):
    original = _Note(text="x", colour="red")
    original._seen = 3
    fields_set = set(original.model_fields_set)
    copy = _wire.copied(original, **updates)
    expected = original.model_copy(update=updates)
    assert type(copy) is _Note
    assert copy.__dict__ == expected.__dict__
    assert copy.model_fields_set == expected.model_fields_set
    assert copy.model_extra == {"colour": "red"}
    assert copy._seen == 3
    # Its own fields-set, extras and private values: changing the copy leaves the original alone.
    copy.tags = ["c"]
    copy.model_extra["colour"] = "blue"
    copy._seen = 4
    assert original.model_fields_set == fields_set
    assert original.model_extra == {"colour": "red"}
    assert original._seen == 3


def test_a_slot_pydantic_keeps_elsewhere_is_still_set():
    # The slot's own setter where pydantic has the slot; where a later pydantic keeps it
    # elsewhere, object.__setattr__ instead of a failure at import.
    note = _Note(text="x")
    set_extra = _wire._slot_setter("__pydantic_extra__")
    assert set_extra == BaseModel.__dict__["__pydantic_extra__"].__set__
    set_extra(note, {"colour": "red"})
    assert note.model_extra == {"colour": "red"}
    set_dict = _wire._slot_setter("__dict__")  # the instance dict's own setter, likewise
    assert set_dict == BaseModel.__dict__["__dict__"].__set__
    set_dict(note, {**note.__dict__, "text": "y"})
    assert note.text == "y"
    set_elsewhere = _wire._slot_setter("__no_such_slot__")
    set_elsewhere(note, 5)
    assert note.__dict__["__no_such_slot__"] == 5
