"""Score calibration: a monotone map from a model's raw rerank score to the probability that the
document is relevant, fitted from labelled pairs, saved to and loaded from a small JSON file.

Applying a calibration needs nothing beyond the core; fitting one needs scikit-learn (the
`evaluate` extra). Two methods are fitted and compared by cross-validated Brier score: isotonic
regression (a step function, interpolated) and Platt scaling (a logistic curve over the score,
or over its logit when every score lies in 0..1). The saved file records which won and by how
much, so that a user can see what the map rests on.
"""

from __future__ import annotations

import bisect
import contextlib
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._config import needs
from ._exceptions import InvalidRequestError

if TYPE_CHECKING:
    from ._client import SiliconFlowClient

__all__ = ["Calibration", "ScoreMap", "calibrate", "client_for"]

Method = Literal["isotonic", "platt"]
_METHODS: tuple[Method, ...] = ("isotonic", "platt")
_EDGE = 1e-6
_PRECISION_POINTS = 256


class ScoreMap(BaseModel):
    """The calibration of one model (and instruction): raw score in, probability out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str
    """The rerank model whose scores this maps."""
    instruction: str | None = None
    """The instruction the scores were made with (Qwen3-Reranker), or None."""
    method: Method
    """Which fit won on cross-validated Brier score."""
    x: tuple[float, ...] = ()
    """Isotonic: raw scores, ascending."""
    y: tuple[float, ...] = ()
    """Isotonic: the probability at each of `x` (linear in between, constant beyond)."""
    slope: float = 0.0
    """Platt: the logistic curve's slope over the feature."""
    intercept: float = 0.0
    """Platt: the logistic curve's intercept."""
    feature: Literal["raw", "logit"] = "raw"
    """Platt: the score itself, or its logit (when every fitted score lay in 0..1)."""
    pairs: int = Field(ge=0)
    """Labelled pairs fitted."""
    positives: int = Field(ge=0)
    """Of those, the relevant ones."""
    brier: dict[str, float] = {}
    """Cross-validated Brier score of each method (lower is better)."""
    precision: tuple[tuple[float, float, int], ...] = ()
    """(threshold, precision, kept) over the fitted pairs, threshold descending: of the pairs
    whose probability is at least the threshold, the share that was relevant, and how many."""

    def __call__(self, score: float) -> float:
        """The probability of relevance for a raw score."""
        if self.method == "platt":
            feature = _logit(score) if self.feature == "logit" else score
            return _sigmoid(self.slope * feature + self.intercept)
        x, y = self.x, self.y
        if score <= x[0]:
            return y[0]
        if score >= x[-1]:
            return y[-1]
        right = bisect.bisect_right(x, score)
        x0, x1, y0, y1 = x[right - 1], x[right], y[right - 1], y[right]
        return y0 if x1 == x0 else y0 + (y1 - y0) * (score - x0) / (x1 - x0)

    def precision_at(self, threshold: float) -> float | None:
        """The precision the fitted pairs had at `min_relevance=threshold` (None: none kept)."""
        best = None
        for point, precision, _ in self.precision:
            if point >= threshold:
                best = precision
            else:
                break
        return best

    def threshold_for(self, precision: float, *, min_kept: int = 20) -> float:
        """The lowest threshold at which the fitted pairs were at least `precision` relevant
        (keeping the most documents that meet it), among thresholds that kept at least
        `min_kept` of them (a precision over a handful of pairs promises nothing).

        Raises:
            InvalidRequestError: No such threshold reached that precision on the fitted pairs.
        """
        met = [
            point
            for point, reached, kept in self.precision
            if reached >= precision and kept >= min_kept
        ]
        if not met:
            best = max((reached for _, reached, _ in self.precision), default=0.0)
            raise InvalidRequestError(
                f"no threshold reached precision {precision} on the fitted pairs of "
                f"{self.model!r} (the best was {best:.3f})"
            )
        return min(met)


class Calibration(BaseModel):
    """Score maps by model and instruction: given to a client or adapter as `calibration=`, every
    rerank score is mapped (before `min_relevance` and before it reaches you), so that one
    threshold means the same probability of relevance whichever model ranked.

    Example:
        >>> calibration = Calibration.load("calibration.json")  # doctest: +SKIP
        >>> client = SiliconFlowClient(calibration=calibration)  # doctest: +SKIP
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: Literal[1] = 1
    maps: tuple[ScoreMap, ...]
    """One map per (model, instruction)."""

    def for_call(self, model: str, instruction: str | None) -> ScoreMap:
        """The map of a call's model and instruction.

        Raises:
            InvalidRequestError: None was fitted for them (scores are never left unmapped
                beside mapped ones).
        """
        for score_map in self.maps:
            if score_map.model == model and score_map.instruction == instruction:
                return score_map
        fitted = ", ".join(
            repr(m.model) + ("" if m.instruction is None else " with its instruction")
            for m in self.maps
        )
        what = repr(model) + ("" if instruction is None else " with this instruction")
        raise InvalidRequestError(
            f"the calibration has no map for {what}; it was fitted for {fitted}"
        )

    def __or__(self, other: Calibration) -> Calibration:
        """Both calibrations' maps; `other`'s where both have one for a model and instruction."""
        keys = {(m.model, m.instruction) for m in other.maps}
        kept = [m for m in self.maps if (m.model, m.instruction) not in keys]
        return Calibration(maps=(*kept, *other.maps))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the calibration as JSON (a few kB)."""
        with open(path, "w", encoding="utf-8") as file:
            file.write(self.model_dump_json(indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        """Read a calibration saved by `save`.

        Raises:
            InvalidRequestError: The file cannot be read or is not a calibration.
        """
        try:
            with open(path, encoding="utf-8") as file:
                return cls.model_validate_json(file.read())
        except OSError as error:
            raise InvalidRequestError(
                f"calibration file {os.fspath(path)!r} cannot be read ({type(error).__name__})"
            ) from None
        except ValidationError as error:
            raise InvalidRequestError(
                f"{os.fspath(path)!r} is not a calibration: {error.errors()[0]['msg']}"
            ) from None

    @classmethod
    def fit(
        cls,
        scores: Sequence[float],
        relevant: Sequence[bool],
        *,
        model: str,
        instruction: str | None = None,
        method: Method | Literal["auto"] = "auto",
    ) -> Calibration:
        """Fit the map of one model (and instruction) from raw scores and whether each scored
        document was relevant. `auto` fits both methods and keeps the one with the lower
        cross-validated Brier score.

        Raises:
            InvalidRequestError: Fewer than 2 relevant or 2 irrelevant pairs, a non-finite
                score, or scores that do not rise with relevance.
        """
        return cls(maps=(_fit(scores, relevant, model, instruction, method),))


def calibrate(
    examples: Iterable[tuple[str, str, bool]],
    *,
    model: str,
    instruction: str | None = None,
    method: Method | Literal["auto"] = "auto",
    client: SiliconFlowClient | None = None,
    **client_settings: Any,
) -> Calibration:
    """Fit a calibration for `model` from labelled (query, document, relevant) examples: each
    query's documents are reranked in one call, and their raw scores fitted.

    Args:
        examples: (query, document, relevant) triples; a query's documents are best given
            together with the irrelevant candidates your retriever really returns for it.
        model: The rerank model to calibrate.
        instruction: The instruction your calls will use (Qwen3-Reranker), if any.
        method: `isotonic`, `platt`, or `auto` (the lower cross-validated Brier score).
        client: A client to rerank with (without a calibration of its own); else one is built
            from `client_settings` and closed at the end.

    Raises:
        InvalidRequestError: Bad examples or settings, before any request.
    """
    by_query: dict[str, list[tuple[str, bool]]] = defaultdict(list)
    for query, document, relevant in examples:
        by_query[query].append((document, bool(relevant)))
    if not by_query:
        raise InvalidRequestError("calibrate needs labelled examples")
    scores: list[float] = []
    labels: list[bool] = []
    with client_for(client, client_settings, raw=True) as used:
        for query, pairs in by_query.items():
            response = used.rerank(
                query, [document for document, _ in pairs], model=model, instruction=instruction
            )
            for index, score in response.results.pairs():
                scores.append(score)
                labels.append(pairs[index][1])
    return Calibration.fit(scores, labels, model=model, instruction=instruction, method=method)


@contextlib.contextmanager
def client_for(
    client: SiliconFlowClient | None, settings: dict[str, Any], *, raw: bool
) -> Iterator[SiliconFlowClient]:
    """`client` (borrowed), else one built from `settings` and closed at the end; when the
    scores are to be fitted (`raw`), one without a calibration of its own.

    Raises:
        InvalidRequestError: `raw`, and the client maps its scores.
    """
    from ._client import SiliconFlowClient

    used = SiliconFlowClient(**settings) if client is None else client
    try:
        if raw and used.settings.calibration is not None:
            raise InvalidRequestError("fitting needs raw scores: use a client without calibration")
        yield used
    finally:
        if client is None:
            used.close()


def _logit(score: float) -> float:
    p = min(max(score, _EDGE), 1 - _EDGE)
    return math.log(p / (1 - p))


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z)) if z >= 0 else math.exp(z) / (1 + math.exp(z))


def _fit(
    scores: Sequence[float],
    relevant: Sequence[bool],
    model: str,
    instruction: str | None,
    method: Method | Literal["auto"],
) -> ScoreMap:
    if len(scores) != len(relevant):
        raise InvalidRequestError(
            f"{len(scores)} scores but {len(relevant)} labels: give one label per score"
        )
    if not all(isinstance(s, int | float) and math.isfinite(s) for s in scores):
        raise InvalidRequestError("every score must be a finite number")
    positives = sum(map(bool, relevant))
    if positives < 2 or len(relevant) - positives < 2:
        raise InvalidRequestError(
            f"calibration needs at least 2 relevant and 2 irrelevant pairs, got {positives} "
            f"and {len(relevant) - positives}"
        )
    np = needs("numpy")
    x = np.asarray(scores, dtype=float)
    y = np.asarray([bool(r) for r in relevant], dtype=float)
    logit = bool(((x >= 0) & (x <= 1)).all())
    brier = _cross_validated_brier(np, x, y, logit)
    chosen: Method = method if method != "auto" else min(_METHODS, key=brier.__getitem__)
    fitted = _fitted(np, chosen, x, y, logit)
    mapped = ScoreMap(
        model=model,
        instruction=instruction,
        pairs=len(scores),
        positives=positives,
        brier={name: round(value, 6) for name, value in brier.items()},
        **fitted,
    )
    probabilities = [mapped(s) for s in scores]
    return mapped.model_copy(update={"precision": _precision_table(probabilities, relevant)})


def _fitted(np: Any, method: Method, x: Any, y: Any, logit: bool) -> dict[str, Any]:
    if method == "isotonic":
        isotonic = needs("sklearn.isotonic").IsotonicRegression(
            y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip"
        )
        isotonic.fit(x, y)
        return {
            "method": "isotonic",
            "x": tuple(float(v) for v in isotonic.X_thresholds_),
            "y": tuple(float(v) for v in isotonic.y_thresholds_),
        }
    feature = np.vectorize(_logit)(x) if logit else x
    regression = needs("sklearn.linear_model").LogisticRegression(C=1e6, max_iter=1000)
    regression.fit(feature.reshape(-1, 1), y)
    slope = float(regression.coef_[0][0])
    if slope <= 0:
        raise InvalidRequestError(
            "these scores do not rise with relevance (a Platt fit found a falling curve)"
        )
    return {
        "method": "platt",
        "slope": slope,
        "intercept": float(regression.intercept_[0]),
        "feature": "logit" if logit else "raw",
    }


def _cross_validated_brier(np: Any, x: Any, y: Any, logit: bool) -> dict[str, float]:
    """Each method's Brier score on held-out folds (5, stratified, fixed seed): the fit that
    predicts unseen pairs best, not the one that memorises these."""
    folds = int(min(5, y.sum(), len(y) - y.sum()))
    splitter = needs("sklearn.model_selection").StratifiedKFold(
        n_splits=folds, shuffle=True, random_state=0
    )
    errors: dict[str, float] = {}
    for method in _METHODS:
        total = 0.0
        for train, test in splitter.split(x.reshape(-1, 1), y):
            try:
                fit = _fitted(np, method, x[train], y[train], logit)
                fitted = ScoreMap(model="", pairs=0, positives=0, **fit)
            except InvalidRequestError:
                total = math.inf
                break
            total += sum(
                (fitted(float(s)) - label) ** 2 for s, label in zip(x[test], y[test], strict=True)
            )
        errors[method] = total / len(y)
    if all(math.isinf(value) for value in errors.values()):
        raise InvalidRequestError("these scores do not rise with relevance")
    return errors


def _precision_table(
    probabilities: Sequence[float], relevant: Sequence[bool]
) -> tuple[tuple[float, float, int], ...]:
    """(threshold, precision, kept) at each distinct probability, highest first (at most
    `_PRECISION_POINTS` of them, evenly spread over the kept counts)."""
    pairs = sorted(zip(probabilities, map(bool, relevant), strict=True), reverse=True)
    table: list[tuple[float, float, int]] = []
    hits = 0
    for kept, (probability, label) in enumerate(pairs, start=1):
        hits += label
        if kept == len(pairs) or pairs[kept][0] != probability:
            table.append((round(probability, 6), round(hits / kept, 6), kept))
    if len(table) > _PRECISION_POINTS:
        step = len(table) / _PRECISION_POINTS
        table = [table[int(i * step)] for i in range(_PRECISION_POINTS - 1)] + [table[-1]]
    return tuple(table)
