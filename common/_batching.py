"""Splitting one rerank call into requests (batches, cache misses) and merging the answers: pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from ._cache import RerankCache, score_key_prefix
from ._exceptions import SiliconFlowError
from ._models import BilledUnits, RerankResponse, RerankResult, Usage, rank
from ._request import RerankRequest, subset

__all__ = ["Batch", "Plan", "assemble", "merge_usage", "name_batch", "plan"]


@dataclass(frozen=True)
class Batch:
    """One request of a call: which of the call's documents it carries, and the request itself."""

    number: int
    positions: Sequence[int]
    request: RerankRequest


@dataclass(frozen=True)
class Plan:
    """How a call is served: scores already known (cached), and the batches still to send."""

    request: RerankRequest
    batches: list[Batch]
    known: dict[int, float] = field(default_factory=dict)
    cache_keys: list[bytes] | None = None
    """The cache key of each of the call's documents, when a cache is used."""


def plan(
    request: RerankRequest,
    *,
    batch_size: int | None,
    cache: RerankCache | None,
    base_url: str,
) -> Plan:
    """Decide what to send: look up cached scores, then cut the rest into batches.

    The common case (no cache, a list within one batch) sends the request exactly as built.
    """
    count = len(request.documents)
    known: dict[int, float] = {}
    pending: Sequence[int] = range(count)
    keys = None
    if cache is not None:
        prefix = score_key_prefix(base_url, request.body)
        keys = [cache._key(prefix, document) for document in request.documents]
        scores = cache._lookup_keys(keys)
        known = {i: s for i, s in enumerate(scores) if s is not None}
        pending = [i for i, s in enumerate(scores) if s is None]
    size = batch_size or count
    if cache is None and len(pending) <= size:
        return Plan(request, [Batch(0, pending, request)])
    groups = [pending[start : start + size] for start in range(0, len(pending), size)]
    # Each batch asks for at most top_n, which keeps the global top_n exact; with a cache every
    # score is wanted, so that it can be stored.
    batches = [
        Batch(number, group, subset(request, group, top_n=cache is None))
        for number, group in enumerate(groups)
    ]
    return Plan(request, batches, known, keys)


def _sum(values: Sequence[int | None]) -> int | None:
    present = [v for v in values if v is not None]
    return sum(present) if present else None


def merge_usage(usages: Sequence[Usage | None]) -> Usage | None:
    """Sum the usage of a call's requests (None where no request reported any)."""
    parts = [u for u in usages if u is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    billed = [u.billed_units for u in parts if u.billed_units is not None]
    billed_units = None
    if billed:
        billed_units = BilledUnits(
            **{name: _sum([getattr(b, name) for b in billed]) for name in BilledUnits.model_fields}
        )
    counts = {
        name: _sum([getattr(u, name) for u in parts])
        for name in ("input_tokens", "output_tokens", "image_tokens", "total_tokens")
    }
    return Usage(**counts, billed_units=billed_units)


def assemble(
    the_plan: Plan, responses: Sequence[RerankResponse], *, cache: RerankCache | None
) -> RerankResponse:
    """Merge the batches' answers (and cached scores) into the answer to the whole call.

    Indices are mapped back to the call's documents, results sorted by score with ties by index,
    `top_n` applied to the whole, usage summed. Fresh scores are stored in the cache.
    """
    request = the_plan.request
    if not the_plan.known and len(responses) == 1 and the_plan.batches[0].request is request:
        return responses[0]
    results: list[RerankResult] = []
    for batch, response in zip(the_plan.batches, responses, strict=True):
        positions = batch.positions
        if cache is not None and the_plan.cache_keys is not None:
            keys = the_plan.cache_keys
            cache._store_keys(
                [keys[positions[r.index]] for r in response.results],
                [r.relevance_score for r in response.results],
            )
        # Each batch's results were parsed for this call alone and are dropped after it: their
        # index is mapped back in place (a copy per result was most of a large merge's cost).
        for result in response.results:
            result.__dict__["index"] = positions[result.index]
        results.extend(response.results)
    results.extend(RerankResult(index=i, relevance_score=s) for i, s in the_plan.known.items())
    trace_ids = [r.trace_id for r in responses if r.trace_id]
    return RerankResponse(
        id=responses[0].id if responses else None,
        results=rank(results, request),
        usage=merge_usage([r.usage for r in responses]),
        trace_id=",".join(trace_ids) or None,
        model=responses[0].model if responses else None,
    )


def name_batch(
    error: SiliconFlowError, number: int, first: int, last: int, total: int, items: str
) -> SiliconFlowError:
    """Say in `error` which batch failed (`items` `first`..`last`), when a call was split."""
    if total > 1:
        error.batch = number
        note = f"batch {number + 1} of {total} ({items} {first}..{last}) failed: "
        error.args = (note + str(error.args[0] if error.args else ""), *error.args[1:])
    return error
