"""The two corpus jobs: `EmbedJob` (a column into `list<float32>` vectors) and `RerankJob`
(each row's candidates into scores and ranks). What they share is in `_jobs`."""

from __future__ import annotations

import asyncio
import os
from array import array
from typing import Any

import msgspec

from ._client import AsyncSiliconFlowClient
from ._config import DEFAULT_EMBEDDING_MODEL, DEFAULT_MODEL, needs
from ._exceptions import InvalidRequestError
from ._jobs import Job

__all__ = ["EmbedJob", "RerankJob"]


class EmbedJob(Job):
    """Embed a text column (or an image column, for the VL models) into an `embedding` column
    (`list<float32>`), resumably.

    Example:
        >>> EmbedJob("chunks.jsonl", "vectors.parquet", model="BAAI/bge-m3").run()  # doctest: +SKIP
    """

    kind = "embed"
    default_batch = 32

    def __init__(
        self,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        model: str = DEFAULT_EMBEDDING_MODEL,
        text_field: str = "text",
        image_field: str | None = None,
        dimensions: int | None = None,
        instruction: str | None = None,
        **settings: Any,
    ) -> None:
        """Args beyond the shared ones (see `RerankJob`): `text_field` (or `image_field`, a URL
        or data URI per row), `dimensions`, and `instruction`, put before each text as Qwen3
        embeddings expect (`Instruct: ...\\nQuery: ...`)."""
        self.text_field = text_field
        self.image_field = image_field
        self.dimensions = dimensions
        self.instruction = instruction
        super().__init__(input, output, model=model, **settings)

    def check(self) -> None:
        from ._embeddings import EmbeddingOptions

        EmbeddingOptions(self.model, self.dimensions, "base64", self.batch_size)
        if self.instruction is not None and not self.instruction.strip():
            raise InvalidRequestError("instruction must be a non-empty string")

    def fields(self) -> list[str]:
        return [self.image_field or self.text_field]

    def options(self) -> dict[str, Any]:
        return {
            "dimensions": self.dimensions,
            "instruction": self.instruction,
            "encoding": "float32",
        }

    async def call(
        self, client: AsyncSiliconFlowClient, rows: list[dict[str, Any]]
    ) -> tuple[bytes, int]:
        if self.image_field is not None:
            from ._media import image_item

            inputs: list[Any] = [image_item(row[self.image_field]) for row in rows]
        else:
            texts = [row[self.text_field] for row in rows]
            if self.instruction is not None:
                texts = [f"Instruct: {self.instruction}\nQuery: {text}" for text in texts]
            inputs = texts
        response = await client.embed(
            inputs, model=self.model, dimensions=self.dimensions, batch_size=self.batch_size
        )
        vectors = response.embeddings
        flat = array("f")
        for vector in vectors:
            flat.extend(vector)
        tokens = response.usage.total_tokens if response.usage else 0
        return len(vectors[0]).to_bytes(4, "little") + flat.tobytes(), tokens or 0

    def columns(self, payload: bytes, rows: int) -> dict[str, Any]:
        pa = needs("pyarrow", "jobs")
        width = int.from_bytes(payload[:4], "little")
        values = array("f")
        values.frombytes(payload[4:])
        flat = pa.array(values, type=pa.float32())
        offsets = pa.array(range(0, rows * width + 1, width), type=pa.int32())
        return {"embedding": pa.ListArray.from_arrays(offsets, flat)}


class _Ranked(msgspec.Struct, array_like=True):
    scores: list[float | None]  # every candidate is ranked: no None
    ranks: list[int]


_encode_ranked = msgspec.msgpack.Encoder().encode
_decode_ranked = msgspec.msgpack.Decoder(list[_Ranked]).decode


class RerankJob(Job):
    """Rerank each row's candidates against its query, resumably: the output has the row's id,
    `scores` (one per candidate, in the candidates' order) and `ranks` (1 for the best).

    Example:
        >>> RerankJob("pairs.jsonl", "ranked.parquet").run()  # doctest: +SKIP
    """

    kind = "rerank"
    default_batch = 1

    def __init__(
        self,
        input: str | os.PathLike[str],
        output: str | os.PathLike[str],
        *,
        model: str = DEFAULT_MODEL,
        query_field: str = "query",
        candidates_field: str = "candidates",
        instruction: str | None = None,
        **settings: Any,
    ) -> None:
        """Args:
        input: JSONL or Parquet, one row per query: an id, the query, its candidates.
        output: The Parquet file to write; the state lives beside it
            (`OUTPUT.job.sqlite`).
        model: The rerank model.
        id_field, query_field, candidates_field: The input's column names.
        instruction: For the Qwen3-Reranker models.
        batch_size: Rows per unit of work kept in the state (one call each, run together).
        concurrency: Batches in flight at most.
        requests_per_minute, tokens_per_minute: The budget to pace to.
        requests_per_day, tokens_per_day: Daily limits: the job stops when one is spent.
        redis_url: Share the budget through Redis (every job and process naming it).
        max_retries: Retries of a batch after a connection error or 5xx (429s are always
            waited out).
        progress: Show a progress bar (None: when stderr is a terminal).
        **settings: Other client settings (`base_url`, `api_key`, `timeout`, ...).
        """
        self.query_field = query_field
        self.candidates_field = candidates_field
        self.instruction = instruction
        super().__init__(input, output, model=model, **settings)

    def check(self) -> None:
        from ._rerank import RerankOptions

        RerankOptions(self.model, instruction=self.instruction)

    def fields(self) -> list[str]:
        return [self.query_field, self.candidates_field]

    def options(self) -> dict[str, Any]:
        return {"instruction": self.instruction}

    def requests_of(self, rows: list[dict[str, Any]]) -> int:
        return len(rows)

    async def call(
        self, client: AsyncSiliconFlowClient, rows: list[dict[str, Any]]
    ) -> tuple[bytes, int]:
        async def one(row: dict[str, Any]) -> tuple[_Ranked, int]:
            candidates = row[self.candidates_field]
            response = await client.rerank(
                row[self.query_field],
                list(candidates),
                model=self.model,
                instruction=self.instruction,
            )
            tokens = response.usage.total_tokens if response.usage else 0
            return _Ranked(*response.results.by_document(len(candidates))), tokens or 0

        ranked = await asyncio.gather(*(one(row) for row in rows))
        return _encode_ranked([r for r, _ in ranked]), sum(t for _, t in ranked)

    def columns(self, payload: bytes, rows: int) -> dict[str, Any]:
        pa = needs("pyarrow", "jobs")
        ranked = _decode_ranked(payload)
        return {
            "scores": pa.array([r.scores for r in ranked], type=pa.list_(pa.float64())),
            "ranks": pa.array([r.ranks for r in ranked], type=pa.list_(pa.int32())),
        }
