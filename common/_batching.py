"""Splitting one rerank call into requests (batches, cache misses) and merging the answers: pure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ._cache import RerankCache, score_key_prefix
from ._exceptions import SiliconFlowError
from ._models import (
    USAGE_COUNTS,
    BilledUnits,
    RankedResults,
    RerankResponse,
    Usage,
    from_scores,
    merged,
)
from ._request import RerankRequest, check_sendable, subset

__all__ = ["Assembly", "Batch", "Plan", "UsageSum", "merge_usage", "name_batch", "plan"]


@dataclass(frozen=True, slots=True)
class Batch:
    """One request of a call served in parts: which of the call's documents it carries."""

    number: int
    positions: Sequence[int]
    call: RerankRequest
    """The call's own request."""
    cut: bool = True
    """Whether the batch asks for the call's `top_n` (fitted to it) rather than every score."""

    def request(self) -> RerankRequest:
        """The request to send, built anew at each call (so, once, when the batch is sent): a
        call split in many batches holds the bodies of the batches in flight only."""
        return subset(self.call, self.positions, top_n=self.cut)


@dataclass(frozen=True, slots=True)
class Plan:
    """How a call that is more than one request of its own is served: scores already known
    (cached), and the batches still to send."""

    request: RerankRequest
    batches: list[Batch]
    known: Mapping[int, float] | None = None
    """Scores already known (cached), by document position; None when there are none."""
    cache_keys: list[bytes] | None = None
    """The cache key of each of the call's documents, when a cache is used."""


def plan(
    request: RerankRequest,
    *,
    batch_size: int | None,
    cache: RerankCache | None,
    base_url: str,
) -> Plan | None:
    """Decide what to send: look up cached scores, then cut the rest into batches.

    Returns:
        None in the common case (no cache, a list within one batch): the request is sent as
        built, and its answer is the call's.
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
        return None
    check_sendable(request)  # every batch's text, before the first batch is sent
    groups = [pending[start : start + size] for start in range(0, len(pending), size)]
    # Each batch asks for at most top_n, which keeps the global top_n exact; with a cache every
    # score is wanted, so that it can be stored.
    batches = [
        Batch(number, group, request, cut=cache is None) for number, group in enumerate(groups)
    ]
    return Plan(request, batches, known, keys)


class UsageSum:
    """The usage of a call's requests, summed as their answers come in: counts, not models (a
    `Usage` per answer cost about 10 µs); a field stays None where no answer reported it."""

    def __init__(self) -> None:
        self._first: Usage | None = None
        self._counts: dict[str, int] = {}
        self._billed: dict[str, int] | None = None
        self._parts = 0

    def add(self, usage: Usage | None) -> None:
        if usage is None:
            return
        self._parts += 1
        self._first = self._first or usage
        counts = self._counts
        for name in USAGE_COUNTS:
            value = getattr(usage, name)
            if value is not None:
                counts[name] = counts.get(name, 0) + value
        if usage.billed_units is not None:
            billed = self._billed = self._billed or {}
            for name in BilledUnits.model_fields:
                value = getattr(usage.billed_units, name)
                if value is not None:
                    billed[name] = billed.get(name, 0) + value

    def total(self) -> Usage | None:
        """The summed usage; one answer's own when only one reported any."""
        if self._parts <= 1:
            return self._first
        billed = None if self._billed is None else BilledUnits(**self._billed)
        return Usage(**self._counts, billed_units=billed)


def merge_usage(usages: Sequence[Usage | None]) -> Usage | None:
    """Sum the usage of a call's requests (None where no request reported any)."""
    total = UsageSum()
    for usage in usages:
        total.add(usage)
    return total.total()


class Assembly:
    """The answer to a call of several requests (or cached scores), gathered as the answers
    come in, in any order; a call that is one request of its own needs none.

    Each answer's results (compact) and counts are kept, the answer itself dropped: a call of
    100,000 documents in 782 batches held 2.2 MB of response models until the last one came.
    """

    def __init__(self, the_plan: Plan, cache: RerankCache | None) -> None:
        self._plan = the_plan
        self._cache = cache
        self._parts: list[tuple[RankedResults, Sequence[int]] | None] = [None] * len(
            the_plan.batches
        )
        self._usage = UsageSum()
        self._trace_ids: list[str | None] = [None] * len(the_plan.batches)
        self._id: str | None = None
        self._model: str | None = None

    def add(self, number: int, response: RerankResponse) -> None:
        """Take the answer to batch `number`; fresh scores go into the cache."""
        the_plan = self._plan
        positions = the_plan.batches[number].positions
        keys = the_plan.cache_keys
        if self._cache is not None and keys is not None:
            pairs = list(response.results.pairs())
            self._cache._store_keys([keys[positions[i]] for i, _ in pairs], [s for _, s in pairs])
        self._parts[number] = (response.results, positions)
        self._usage.add(response.usage)
        self._trace_ids[number] = response.trace_id
        if number == 0:
            self._id, self._model = response.id, response.model

    def answer(self) -> RerankResponse:
        """The answer to the whole call: indices mapped back to the call's documents, results
        best first with ties by index, `top_n` applied to the whole, usage summed.

        Raises:
            ValueError: An answer is missing.
        """
        parts = [part for part in self._parts if part is not None]
        if len(parts) != len(self._parts):
            raise ValueError("an answer to one of the call's requests is missing")
        request = self._plan.request
        if self._plan.known:
            parts.append((from_scores(self._plan.known), range(len(request.documents))))
        trace_ids = [trace_id for trace_id in self._trace_ids if trace_id]
        return RerankResponse(
            id=self._id,
            results=merged(parts, request),
            usage=self._usage.total(),
            trace_id=",".join(trace_ids) or None,
            model=self._model,
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
