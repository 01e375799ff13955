"""Shared fixtures: a clean environment, the emulator, and one facade over both clients.

Helpers that tests import are in `helpers.py`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from siliconflow_rerank.emulator import RerankEmulator

from .helpers import Handler, RedisClusterServer, RedisServer, Runner, SocksProxy, wait_until


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test sees (or leaves behind) a SILICONFLOW_* variable."""
    for name in list(os.environ):
        if name.startswith("SILICONFLOW_"):
            monkeypatch.delenv(name)


@pytest.fixture(params=["sync", "async"])
def client_kind(request: pytest.FixtureRequest) -> str:
    """Every test that uses a client runs once per client."""
    return str(request.param)


@pytest.fixture
def make_runner(client_kind: str) -> Iterator[Callable[..., Runner]]:
    """Build a `Runner` of this test's kind; closed at teardown."""
    runners: list[Runner] = []

    def make(handler: Handler | None = None, **kwargs: Any) -> Runner:
        runner = Runner(client_kind, handler, **kwargs)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.close()


@pytest.fixture(scope="session")
def _emulator_server() -> Iterator[RerankEmulator]:
    with RerankEmulator() as emulator:
        yield emulator


@pytest.fixture
def emulator(_emulator_server: RerankEmulator) -> Iterator[RerankEmulator]:
    """The shared emulator, reset to a clean state for this test.

    First it waits for the connections of earlier tests to close: a request that one sent and
    then gave up on (a batch cancelled beside a failing one) is counted before the reset, not in
    this test's counts.
    """
    wait_until(lambda: not _emulator_server.stats.open_connections, timeout=2)
    _emulator_server.reset()
    _emulator_server.api_key = None
    _emulator_server.latency = 0.0
    _emulator_server.latency_per_document = 0.0
    _emulator_server.requests_per_minute = None
    _emulator_server.tokens_per_minute = None
    _emulator_server.window_seconds = 60.0
    yield _emulator_server
    _emulator_server.reset()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server of this test's own, on a free loopback port."""
    server = RedisServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    """A real Redis Cluster of three nodes of this test's own, on free loopback ports."""
    cluster = RedisClusterServer(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def socks_proxy(tmp_path: Path) -> Iterator[SocksProxy]:
    """A real SOCKS5 proxy of this test's own, on a free loopback port."""
    proxy = SocksProxy(tmp_path / "socks.log")
    yield proxy
    proxy.stop()
