"""Reranking and embedding Ray Datasets: callable classes for `Dataset.map_batches`.

Ray builds one instance per actor, so each actor holds one client (one connection pool) for all
the batches it is given; give the clients one `RedisRateLimit` to share the account's budget
across every actor and host. Nothing here imports Ray: a batch is a dict of columns, as Ray's
default ("numpy") batch format hands it over, and an Arrow table comes back.

    import ray
    from siliconflow_rerank import RedisRateLimit
    from siliconflow_rerank.ray import RerankBatches

    ranked = ray.data.from_items(rows).map_batches(
        RerankBatches,
        fn_constructor_kwargs={"model": "BAAI/bge-reranker-v2-m3",
                               "rate_limit": RedisRateLimit(url, requests_per_minute=2000)},
        compute=ray.data.ActorPoolStrategy(size=4),
        batch_size=64,
    )

The API key never travels with the job: each actor reads it from `api_key_file` (a mounted secret,
say; only the path goes through Ray), or else from `SILICONFLOW_API_KEY` in the environment Ray's
processes were started with (`ray start` on each node, or the process that calls `ray.init()` for
a local instance). Ray's `runtime_env={"env_vars": ...}` would also reach the actors, but Ray writes
those values to its own log files (`runtime_env_agent.log`): do not pass the key that way.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa  # type: ignore[import-untyped]

from ._client import SiliconFlowClient
from ._config import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL
from ._exceptions import InvalidRequestError
from ._rerank import RerankOptions

__all__ = ["EmbedBatches", "RerankBatches"]


def _column(batch: Mapping[str, Any], name: str) -> Sequence[Any]:
    if name not in batch:
        raise KeyError(f"the batch has no column {name!r} (columns: {', '.join(batch)})")
    return list(batch[name])


def _texts(values: Sequence[Any], where: str) -> list[str]:
    """`values`, each checked to be text (never `None` read as "None"); `where` names value
    `{}` in an error."""
    for position, value in enumerate(values):
        if not isinstance(value, str):
            raise InvalidRequestError(
                f"{where.format(position)} must be text, got {type(value).__name__}"
            )
    return [str(value) for value in values]  # numpy's str_ as plain str


def _lists_of_texts(values: Sequence[Any], column: str) -> list[list[str]]:
    """The rows of a column of candidate lists, each checked to be a list of texts (a string is
    refused, never split into characters)."""
    rows = []
    for row, value in enumerate(values):
        items = value.tolist() if isinstance(value, np.ndarray) else value
        if isinstance(items, str) or not isinstance(items, Sequence):
            raise InvalidRequestError(
                f"row {row} of column {column!r} must be a list of texts, got "
                f"{type(value).__name__}"
            )
        rows.append(_texts(items, f"candidate {{}} of row {row} of column {column!r}"))
    return rows


def _client(api_key_file: str | None, settings: dict[str, Any]) -> SiliconFlowClient:
    """This actor's client, its key read from `api_key_file` when one is named."""
    if api_key_file is not None:
        if "api_key" in settings:
            raise InvalidRequestError("give api_key or api_key_file, not both")
        try:
            with open(api_key_file, encoding="utf-8") as file:
                settings = {**settings, "api_key": file.read().strip()}
        except OSError as error:
            raise InvalidRequestError(
                f"api_key_file {api_key_file!r} cannot be read ({type(error).__name__})"
            ) from None
    return SiliconFlowClient(**settings)


def _arrow(values: Any) -> Any:
    """A column Ray handed over (a numpy array, of arrays where rows hold lists) as Arrow."""
    if isinstance(values, np.ndarray) and values.dtype == object:
        return pa.array([v.tolist() if isinstance(v, np.ndarray) else v for v in values])
    return pa.array(values)


class RerankBatches:
    """Rerank each row's candidates against its query: adds `scores` (one per candidate, in the
    candidates' order) and `ranks` (1 for the best candidate) to every row. With
    `min_relevance`, a candidate scoring below it has a null score and rank 0."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_MODEL,
        query_column: str = "query",
        candidates_column: str = "candidates",
        instruction: str | None = None,
        min_relevance: float | None = None,
        api_key_file: str | None = None,
        **client_settings: Any,
    ) -> None:
        """Build this actor's client from the client settings (`base_url`, `rate_limit`,
        `calibration`, `max_concurrency` rows at once, ...); the key is read from
        `api_key_file`, else from `SILICONFLOW_API_KEY` in the actor's environment."""
        self.client = _client(api_key_file, client_settings)
        self.model = model
        self.query_column = query_column
        self.candidates_column = candidates_column
        self.instruction = instruction
        self.min_relevance = min_relevance
        RerankOptions(model, instruction=instruction, min_relevance=min_relevance)
        self._rows = ThreadPoolExecutor(self.client.settings.max_concurrency)

    def _rank(self, query: str, candidates: Sequence[str]) -> tuple[list[float | None], list[int]]:
        response = self.client.rerank(
            query,
            list(candidates),
            model=self.model,
            instruction=self.instruction,
            min_relevance=self.min_relevance,
        )
        return response.results.by_document(len(candidates))

    def __call__(self, batch: dict[str, Any]) -> Any:
        """Score one batch of rows; the rows' other columns are kept as they are. Returns an
        Arrow table, so that the per-row lists are list columns (in Parquet too)."""
        queries = _texts(
            _column(batch, self.query_column), f"row {{}} of column {self.query_column!r}"
        )
        candidates = _lists_of_texts(_column(batch, self.candidates_column), self.candidates_column)
        ranked = list(self._rows.map(self._rank, queries, candidates))
        columns = {name: _arrow(values) for name, values in batch.items()}
        columns["scores"] = pa.array([s for s, _ in ranked], type=pa.list_(pa.float64()))
        columns["ranks"] = pa.array([r for _, r in ranked], type=pa.list_(pa.int32()))
        return pa.table(columns)


class EmbedBatches:
    """Embed one text column: adds `embedding` (a float32 vector) to every row."""

    def __init__(
        self,
        *,
        model: str = DEFAULT_EMBEDDING_MODEL,
        text_column: str = "text",
        dimensions: int | None = None,
        api_key_file: str | None = None,
        **client_settings: Any,
    ) -> None:
        """Build this actor's client from the client settings; the key is read from
        `api_key_file`, else from `SILICONFLOW_API_KEY` in the actor's environment."""
        self.client = _client(api_key_file, client_settings)
        self.model = model
        self.text_column = text_column
        self.dimensions = dimensions

    def __call__(self, batch: dict[str, Any]) -> Any:
        """Embed one batch of rows (in requests of 32, run concurrently); an Arrow table."""
        texts = _texts(_column(batch, self.text_column), f"row {{}} of column {self.text_column!r}")
        response = self.client.embed(texts, model=self.model, dimensions=self.dimensions)
        columns = {name: _arrow(values) for name, values in batch.items()}
        columns["embedding"] = pa.array(response.embeddings, type=pa.list_(pa.float32()))
        return pa.table(columns)
