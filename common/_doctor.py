"""`python -m siliconflow_rerank doctor`: what stands between this machine and a working call.

Each check prints one line, `ok`, `info` or `PROBLEM`, with what to do about a problem; the exit
code is 0 only when there is none. The key is never printed (only whether it is set, and its
length).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from ._client import SiliconFlowClient
from ._config import API_KEY_ENV, BASE_URL_ENV, SILICONFLOW_SITES, resolve_api_key, resolve_base_url
from ._exceptions import APIConnectionError, AuthenticationError, SiliconFlowError
from ._transport import environment_proxy
from ._version import __version__

__all__ = ["Finding", "diagnose", "main"]

EXTRAS = {
    "langchain": "langchain_core",
    "langchain-chat": "langchain_openai",
    "llama-index": "llama_index.core",
    "redis": "redis",
    "ray": "ray",
}
"""Each extra, by the module that tells whether it is installed."""

OFFLINE = (
    "to work offline, run the bundled emulator (python -m siliconflow_rerank.emulator --port "
    "8000) and set SILICONFLOW_BASE_URL=http://127.0.0.1:8000/v1"
)


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    status: str
    """`ok`, `info` or `PROBLEM`."""
    what: str
    detail: str


def diagnose(base_url: str | None = None, *, timeout: float = 10.0) -> list[Finding]:
    """Every check, in order; `base_url` instead of the configured one."""
    findings = [Finding("info", "versions", f"siliconflow-rerank {__version__}, Python "
                        f"{sys.version.split()[0]}")]  # fmt: skip
    try:
        root = resolve_base_url(base_url)
    except SiliconFlowError as error:
        return [*findings, Finding("PROBLEM", "base URL", f"{error} (set {BASE_URL_ENV})")]
    proxy = environment_proxy(httpx.URL(root))
    shown = "none" if proxy is None else f"{proxy.url.scheme}://{proxy.url.host}:{proxy.url.port}"
    findings.append(Finding("info", "base URL", f"{root} (proxy: {shown})"))
    try:
        key = resolve_api_key(None)
    except SiliconFlowError as error:
        findings.append(Finding("PROBLEM", "API key", f"{error}; or, {OFFLINE}"))
    else:
        length = len(key.get_secret_value())
        findings.append(Finding("ok", "API key", f"{API_KEY_ENV} is set ({length} characters)"))
        findings += _call(root, timeout)
    findings += _installed()
    findings += _redis(timeout)
    return findings


def _call(root: str, timeout: float) -> list[Finding]:
    """One small rerank call: reachability, latency, and whether the site takes the key."""
    host = httpx.URL(root).host
    try:
        took = _ask(root, timeout)
    except AuthenticationError:
        other = SILICONFLOW_SITES.get(host)
        if other is not None and _accepted(other, timeout):
            return [Finding("PROBLEM", "API key", f"{host} refuses the key, but {other} takes "
                            f"it: set {BASE_URL_ENV}={other} (or pass base_url=)")]  # fmt: skip
        return [Finding("PROBLEM", "API key", f"{host} refuses the key: check {API_KEY_ENV}")]
    except APIConnectionError as error:
        return [Finding("PROBLEM", "reachable", f"cannot reach {host}: {error}; {OFFLINE}")]
    except SiliconFlowError as error:
        return [Finding("PROBLEM", "a test call", f"{type(error).__name__}: {error}")]
    return [Finding("ok", "reachable", f"{host} answered a rerank call in {took * 1000:.0f} ms")]


def _ask(root: str, timeout: float) -> float:
    started = time.perf_counter()
    with SiliconFlowClient(base_url=root, timeout=timeout, max_retries=0) as client:
        client.rerank("doctor", ["doctor"])
    return time.perf_counter() - started


def _accepted(root: str, timeout: float) -> bool:
    try:
        _ask(root, timeout)
    except SiliconFlowError:
        return False
    return True


def _installed() -> list[Finding]:
    findings = []
    for extra, module in EXTRAS.items():
        present = importlib.util.find_spec(module.split(".")[0]) is not None
        if present and "." in module:
            present = importlib.util.find_spec(module) is not None
        findings.append(Finding("info", f"extra {extra!r}", "installed" if present else "absent"))
    try:
        importlib.metadata.distribution("langchain-siliconflow")
    except importlib.metadata.PackageNotFoundError:
        pass
    else:
        findings.append(Finding("PROBLEM", "the vendor's package", (
            "langchain-siliconflow is installed beside this one: both write the folder "
            "langchain_siliconflow/, and uninstalling either deletes the other's files; pip "
            "uninstall langchain-siliconflow, then reinstall siliconflow-rerank"
        )))  # fmt: skip
    return findings


def _redis(timeout: float) -> list[Finding]:
    url = os.environ.get("REDIS_URL")
    if not url:
        return []
    if importlib.util.find_spec("redis") is None:
        return [Finding("PROBLEM", "Redis", "REDIS_URL is set but the redis extra is absent")]
    import redis

    try:
        redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout).ping()
    except (redis.RedisError, OSError) as error:
        return [Finding("PROBLEM", "Redis", f"REDIS_URL does not answer: {type(error).__name__}")]
    return [Finding("ok", "Redis", "REDIS_URL answers")]


def main(argv: list[str] | None = None, out: Callable[[str], object] = print) -> int:
    """Run the checks and print them; 0 when nothing is wrong, 1 otherwise."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m siliconflow_rerank doctor")
    parser.add_argument("--base-url", help=f"the API root to check (default: {BASE_URL_ENV})")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds for each call")
    arguments = parser.parse_args(argv)
    findings = diagnose(arguments.base_url, timeout=arguments.timeout)
    for finding in findings:
        out(f"{finding.status:<8} {finding.what}: {finding.detail}")
    problems = sum(finding.status == "PROBLEM" for finding in findings)
    out("all is well" if not problems else f"{problems} problem(s)")
    return 1 if problems else 0
