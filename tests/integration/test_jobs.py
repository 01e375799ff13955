"""Corpus jobs over the emulator, run as a user runs them (the command, in its own process):
killed and resumed, refused with another identity, through 429s and daily limits, with their
progress shown."""

from __future__ import annotations

import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]
import pyarrow.parquet as pq  # type: ignore[import-untyped]
import pytest

from siliconflow_rerank import EmbedJob, InvalidRequestError, RerankJob
from siliconflow_rerank.emulator import Fault, RerankEmulator

from ..helpers import wait_until

KEY = "sk-jobs-canary-4242"
WORDS = [
    "apple",
    "banana",
    "bread",
    "rice",
    "coffee",
    "tea",
    "cheese",
    "egg",
    "honey",
    "oil",
    "tomato",
    "potato",
    "fresh",
    "store",
]


def texts(count: int) -> list[dict[str, Any]]:
    return [
        {"id": f"row-{i}", "text": " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 9))}
        for i in range(count)
    ]


def pairs(count: int) -> list[dict[str, Any]]:
    return [
        {
            "id": i,
            "query": WORDS[i % len(WORDS)],
            "candidates": [f"{WORDS[(i + k) % len(WORDS)]} {WORDS[k]}" for k in range(6)],
        }
        for i in range(count)
    ]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def command(kind: str, source: Path, out: Path, base_url: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "siliconflow_rerank", kind, str(source), "--out", str(out),
            "--base-url", base_url, "--no-progress", *extra]  # fmt: skip


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SILICONFLOW_API_KEY": KEY}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=300, **kwargs)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def batches_done(state: Path) -> int:
    if not state.exists():
        return 0
    try:
        with sqlite3.connect(state) as db:
            return int(db.execute("SELECT count(*) FROM batches").fetchone()[0])
    except sqlite3.OperationalError:  # the table is not made yet
        return 0


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT])
def test_an_interrupted_job_resumes_to_the_output_of_an_uninterrupted_run(
    emulator: RerankEmulator, tmp_path: Path, stop: signal.Signals
) -> None:
    source = write_jsonl(tmp_path / "chunks.jsonl", texts(3000))  # 94 batches of 32
    whole = tmp_path / "whole.parquet"
    args = ["--model", "Qwen/Qwen3-Embedding-0.6B", "--dimensions", "256", "--concurrency", "4"]
    assert run(command("embed", source, whole, emulator.base_url, *args)).returncode == 0
    emulator.reset()
    # 40 batches answered, then the job slows down (each answer held 5 s): it is stopped part
    # way, however quickly or slowly this machine runs it.
    emulator.enqueue(*[Fault.slow(0.0)] * 40, *[Fault.slow(5.0)] * 60)
    out = tmp_path / "resumed.parquet"
    state = tmp_path / "resumed.parquet.job.sqlite"
    env = {**os.environ, "SILICONFLOW_API_KEY": KEY, "PYTHONFAULTHANDLER": "1"}
    # SIGINT as a terminal sends it: a process inherits an ignored SIGINT (what an earlier test's
    # library may have left in this one), and Python then keeps ignoring it.
    process = subprocess.Popen(command("embed", source, out, emulator.base_url, *args), env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=_default_sigint)  # fmt: skip
    wait_until(lambda: batches_done(state) >= 30, timeout=120)
    process.send_signal(stop)
    try:
        _, errors = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGABRT)  # its threads' stacks, on stderr
        _, errors = process.communicate(timeout=30)
        pytest.fail(f"the job had not stopped 60 s after {stop.name}:\n{errors[-6000:]}")
    assert process.returncode != 0
    if stop == signal.SIGINT:  # Ctrl-C: a line saying how to resume, not a traceback
        assert process.returncode == 130
        assert "run the same command again to resume" in errors
        assert "Traceback" not in errors
    assert not out.exists()
    kept = batches_done(state)
    assert 30 <= kept <= 44  # what was in flight may have been answered before it stopped
    sent_before = emulator.stats.requests
    emulator.reset()  # held answers end; the rerun meets no fault
    done = run(command("embed", source, out, emulator.base_url, *args))
    assert done.returncode == 0, done.stderr
    assert f"({kept * 32} done before)" in done.stdout
    # Every batch sent once, but those in flight when the job stopped (at most 4): the resumed
    # run sent only what was not kept.
    assert emulator.stats.requests == 94 - kept
    assert sent_before - kept <= 4
    resumed, reference = pq.read_table(out), pq.read_table(whole)
    assert resumed.column("id").to_pylist() == [f"row-{i}" for i in range(3000)]
    assert resumed.equals(reference)
    assert resumed.schema.field("embedding").type == pa.list_(pa.float32())
    assert len(resumed.column("embedding")[0]) == 256


@pytest.mark.parametrize(
    ("first", "then", "named"),
    [
        (["--model", "BAAI/bge-m3"], ["--model", "Qwen/Qwen3-Embedding-0.6B"], "model"),
        (
            ["--model", "Qwen/Qwen3-Embedding-0.6B", "--dimensions", "512"],
            ["--model", "Qwen/Qwen3-Embedding-0.6B", "--dimensions", "256"],
            "dimensions",
        ),
        (
            ["--model", "BAAI/bge-m3"],
            ["--model", "BAAI/bge-m3", "--batch-size", "16"],
            "batch_size",
        ),
    ],
)
def test_a_job_with_another_identity_is_refused_with_what_differs(
    emulator: RerankEmulator, tmp_path: Path, first: list[str], then: list[str], named: str
) -> None:
    source = write_jsonl(tmp_path / "chunks.jsonl", texts(100))
    out = tmp_path / "vectors.parquet"
    assert run(command("embed", source, out, emulator.base_url, *first)).returncode == 0
    written = out.read_bytes()
    requests = emulator.stats.requests
    refused = run(command("embed", source, out, emulator.base_url, *then))
    assert refused.returncode == 1
    assert f"{named}:" in refused.stderr
    assert "belongs to another job" in refused.stderr
    assert emulator.stats.requests == requests
    assert out.read_bytes() == written
    # The same command again: already complete, nothing sent.
    again = run(command("embed", source, out, emulator.base_url, *first))
    assert again.returncode == 0
    assert "(100 done before)" in again.stdout
    assert emulator.stats.requests == requests


def test_a_changed_input_is_another_job(emulator: RerankEmulator, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "chunks.jsonl", texts(50))
    out = tmp_path / "vectors.parquet"
    assert run(command("embed", source, out, emulator.base_url)).returncode == 0
    write_jsonl(source, texts(51))
    refused = run(command("embed", source, out, emulator.base_url))
    assert refused.returncode == 1
    assert "input:" in refused.stderr


def test_a_rerank_job_reads_parquet_and_writes_scores_and_ranks(
    emulator: RerankEmulator, tmp_path: Path
) -> None:
    rows = pairs(40)
    source = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    out = tmp_path / "ranked.parquet"
    summary = RerankJob(source, out, api_key=KEY, base_url=emulator.base_url, progress=False).run()
    assert summary.complete
    assert summary.requests == 40
    table = pq.read_table(out).to_pylist()
    assert [row["id"] for row in table] == list(range(40))
    from siliconflow_rerank import SiliconFlowClient

    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        for row, written in zip(rows[:5], table[:5], strict=True):
            response = client.rerank(row["query"], row["candidates"])
            for rank, (index, score) in enumerate(response.results.pairs(), start=1):
                assert written["scores"][index] == score
                assert written["ranks"][index] == rank


def test_429s_are_waited_out_and_the_job_finishes(emulator: RerankEmulator, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", pairs(60))
    emulator.requests_per_minute = 10
    emulator.window_seconds = 0.5
    out = tmp_path / "ranked.parquet"
    summary = RerankJob(source, out, api_key=KEY, base_url=emulator.base_url, progress=False).run()
    assert summary.complete
    assert summary.rate_limited > 0
    assert emulator.stats.by_status.get(429, 0) == summary.rate_limited
    assert emulator.stats.by_status[200] == 60
    assert pq.read_table(out).num_rows == 60


def test_a_spent_daily_limit_stops_the_job_cleanly_until_it_is_raised(
    emulator: RerankEmulator, tmp_path: Path
) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", pairs(30))
    out = tmp_path / "ranked.parquet"
    limited = ["--requests-per-day", "12", "--concurrency", "2"]
    stopped = run(command("rerank", source, out, emulator.base_url, *limited))
    assert stopped.returncode == 3, stopped.stderr
    assert "today's 12 requests are spent; run it again after" in stopped.stdout
    assert emulator.stats.requests == 12
    assert not out.exists()
    again = run(command("rerank", source, out, emulator.base_url, *limited))
    assert again.returncode == 3
    assert emulator.stats.requests == 12  # the day's count is kept in the state file
    raised = run(command("rerank", source, out, emulator.base_url, "--requests-per-day", "100"))
    assert raised.returncode == 0, raised.stderr
    assert emulator.stats.requests == 30
    assert pq.read_table(out).num_rows == 30


def test_the_services_daily_429_stops_the_job(emulator: RerankEmulator, tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "pairs.jsonl", pairs(10))
    out = tmp_path / "ranked.parquet"
    emulator.enqueue(Fault.rate_limited(which="TPD"))
    summary = RerankJob(
        source, out, api_key=KEY, base_url=emulator.base_url, progress=False, concurrency=1
    ).run()
    assert not summary.complete
    assert summary.stopped is not None
    assert "TPD limit reached" in summary.stopped


@pytest.mark.parametrize(
    ("rows", "options", "message"),
    [
        ([{"id": 1, "text": "a"}, {"id": 1, "text": "b"}], {}, "id 1 appears twice"),
        ([{"id": 1, "body": "a"}], {}, "no field 'text'"),
        ([{"id": 1, "text": "a"}], {"dimensions": 7, "model": "BAAI/bge-m3"}, "dimensions"),
        ([], {}, "has no rows"),
    ],
)
def test_bad_input_is_refused_before_any_request(
    emulator: RerankEmulator,
    tmp_path: Path,
    rows: list[dict[str, Any]],
    options: dict[str, Any],
    message: str,
) -> None:
    source = write_jsonl(tmp_path / "chunks.jsonl", rows)
    with pytest.raises(InvalidRequestError, match=message):
        EmbedJob(source, tmp_path / "out.parquet", api_key=KEY, base_url=emulator.base_url,
                 progress=False, **options).run()  # fmt: skip
    assert emulator.stats.requests == 0
    with pytest.raises(InvalidRequestError, match="Parquet"):
        EmbedJob(source, tmp_path / "out.csv", api_key=KEY)


def test_progress_is_logged_when_not_on_a_terminal(
    emulator: RerankEmulator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = write_jsonl(tmp_path / "chunks.jsonl", texts(200))
    job = EmbedJob(source, tmp_path / "out.parquet", api_key=KEY, base_url=emulator.base_url,
                   progress=False, log_every=0.0, concurrency=1)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="siliconflow_rerank.jobs"):
        summary = job.run()
    assert summary.complete
    lines = [r.getMessage() for r in caplog.records if r.name == "siliconflow_rerank.jobs"]
    assert len(lines) == 7  # one per batch of 32, as log_every is 0
    assert lines[-1].startswith("200 of 200 rows")
    assert KEY not in " ".join(lines)


def test_a_progress_bar_is_shown_on_request(
    emulator: RerankEmulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = write_jsonl(tmp_path / "chunks.jsonl", texts(100))
    job = EmbedJob(source, tmp_path / "out.parquet", api_key=KEY, base_url=emulator.base_url,
                   progress=True)  # fmt: skip
    assert job.run().complete
    shown = capsys.readouterr().err
    assert "embed: 100%" in shown
    assert "100/100" in shown


def test_a_job_on_ray_shares_its_budget_through_redis_and_resumes(
    emulator: RerankEmulator, redis_server: Any, tmp_path: Path
) -> None:
    ray = pytest.importorskip("ray")
    from siliconflow_rerank._ray_jobs import run_on_ray

    source = write_jsonl(tmp_path / "pairs.jsonl", pairs(40))
    out = tmp_path / "ranked.parquet"
    saved = os.environ.get("SILICONFLOW_API_KEY")
    os.environ["SILICONFLOW_API_KEY"] = KEY  # the actors' environment, as the module says
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 _node_ip_address="127.0.0.1")  # fmt: skip
        # A day's limit stops the first run halfway; the second finishes what is left.
        settings = {"base_url": emulator.base_url, "redis_url": redis_server.url,
                    "requests_per_minute": 600, "progress": False}  # fmt: skip
        first = run_on_ray(RerankJob(source, out, requests_per_day=25, **settings))
        assert not first.complete
        assert first.requests == 25
        with pytest.raises(InvalidRequestError, match="redis_url"):
            run_on_ray(RerankJob(source, out, requests_per_minute=60, base_url=emulator.base_url))
        with pytest.raises(InvalidRequestError, match="SILICONFLOW_API_KEY"):
            run_on_ray(RerankJob(source, out, api_key=KEY, base_url=emulator.base_url))
        second = run_on_ray(RerankJob(source, out, **settings))
        assert second.complete
        assert second.rows_done_before == 25
        assert emulator.stats.requests == 40
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("SILICONFLOW_API_KEY", None)
        else:
            os.environ["SILICONFLOW_API_KEY"] = saved
    local = tmp_path / "local.parquet"
    RerankJob(source, local, api_key=KEY, base_url=emulator.base_url, progress=False).run()
    assert pq.read_table(out).equals(pq.read_table(local))


def test_an_image_column_is_embedded_by_a_vision_model(
    emulator: RerankEmulator, tmp_path: Path
) -> None:
    from siliconflow_rerank import SiliconFlowClient, image_item

    urls = [f"https://example.test/{name}.png" for name in ("red-apple", "banana", "bread")]
    source = write_jsonl(
        tmp_path / "images.jsonl", [{"id": i, "image": u} for i, u in enumerate(urls)]
    )
    out = tmp_path / "vectors.parquet"
    model = "Qwen/Qwen3-VL-Embedding-8B"
    job = EmbedJob(source, out, model=model, image_field="image", api_key=KEY,
                   base_url=emulator.base_url, progress=False)  # fmt: skip
    assert job.run().complete
    with SiliconFlowClient(api_key=KEY, base_url=emulator.base_url) as client:
        direct = client.embed([image_item(u) for u in urls], model=model).embeddings
    written = pq.read_table(out).column("embedding").to_pylist()
    assert written == [pytest.approx(v, rel=1e-6) for v in direct]


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"concurrency": 0}, "concurrency"),
        ({"batch_size": -1}, "batch_size"),
        ({"max_retries": -1}, "max_retries"),
        ({"timeout": -1}, "timeout"),
        ({"max_connections": "many"}, "max_connections"),
    ],
)
def test_a_bad_setting_is_refused_when_the_job_is_made(
    tmp_path: Path, settings: dict[str, Any], named: str
) -> None:
    source = write_jsonl(tmp_path / "chunks.jsonl", texts(3))
    with pytest.raises(InvalidRequestError, match=named):
        EmbedJob(source, tmp_path / "out.parquet", api_key=KEY, **settings)
    assert not (tmp_path / "out.parquet.job.sqlite").exists()
