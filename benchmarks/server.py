"""A minimal SiliconFlow-compatible server for the benchmarks: the least server CPU per request.

The emulator checks everything a real server would and so burns two to three times the CPU of
this one, which raises the floor the clients are measured against. This server does only what
answering needs: one asyncio protocol, HTTP/1.1 keep-alive, `Content-Length` bodies, a valid rerank
or embeddings answer (scores fixed per position, `top_n` honoured), an optional latency.

    python benchmarks/server.py --port 0 --latency-ms 100    # prints its API root on stderr
    python benchmarks/server.py --port 0 --answer FILE --gzip # FILE's bytes to every request
    python benchmarks/server.py --port 0 --arrivals FILE      # FILE gets each request's arrival
    python benchmarks/server.py --port 0 --bill               # rerank billed as the service bills
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
_MISSING = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


def score(position: int) -> float:
    """A fixed score per document position, spread so that the ranking is not the input order."""
    return ((position * 7919) % 1000) / 1000


def rerank_answer(body: dict[str, object]) -> bytes:
    documents = body["documents"]
    count = len(documents) if isinstance(documents, list) else 1
    ranked = sorted(range(count), key=lambda i: (-score(i), i))
    top_n = body.get("top_n")
    if isinstance(top_n, int):
        ranked = ranked[:top_n]
    results = [{"index": i, "relevance_score": score(i)} for i in ranked]
    tokens = {"input_tokens": 10 * count, "output_tokens": 0}
    return json.dumps({"id": "bench", "results": results, "meta": {"tokens": tokens}}).encode()


def embeddings_answer(body: dict[str, object]) -> bytes:
    inputs = body["input"]
    count = len(inputs) if isinstance(inputs, list) else 1
    dimensions = body.get("dimensions")
    size = dimensions if isinstance(dimensions, int) else 1024
    data = [
        {"object": "embedding", "index": i, "embedding": [score(i + j) for j in range(size)]}
        for i in range(count)
    ]
    usage = {"prompt_tokens": 10 * count, "total_tokens": 10 * count}
    return json.dumps(
        {"object": "list", "model": body.get("model"), "data": data, "usage": usage}
    ).encode()


ANSWERS: dict[bytes, Callable[[dict[str, object]], bytes]] = {
    b"/v1/rerank": rerank_answer,
    b"/v1/embeddings": embeddings_answer,
}

RECORDING = False
"""Whether arrivals are recorded (`--arrivals`)."""


ARRIVALS: list[tuple[float, int]] = []
"""When each request arrived (`time.monotonic()`, the same clock in every process of a host),
and the tokens its answer reports."""


def billed_rerank() -> Callable[[dict[str, object]], bytes]:
    """Rerank answers billed as the service bills (the query once per document and chunk), by
    the package's emulator: what a token budget is held to. Imported before the server starts:
    an import on the first request would hold every request behind it."""
    from siliconflow_rerank.emulator import RerankEmulator

    rank = RerankEmulator().rank  # never started: only its answers

    def answer(body: dict[str, object]) -> bytes:
        return json.dumps(rank(dict(body))).encode()

    return answer


def _tokens(content: bytes) -> int:
    answer = json.loads(content)
    usage = answer.get("meta", {}).get("tokens") or answer.get("usage") or {}
    return int(usage.get("input_tokens") or usage.get("total_tokens") or 0)


class _Connection(asyncio.Protocol):
    def __init__(self, latency: float, canned: bytes | None = None) -> None:
        self.latency = latency
        self.canned = canned
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            lines = bytes(self.buffer[:end]).split(b"\r\n")
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < end + 4 + length:
                return
            body = bytes(self.buffer[end + 4 : end + 4 + length])
            del self.buffer[: end + 4 + length]
            self.answer(lines[0].split(b" ", 2)[1], body)

    def answer(self, path: bytes, body: bytes) -> None:
        arrived = time.monotonic()
        make = ANSWERS.get(path)
        if make is None:
            reply = _MISSING
        elif self.canned is not None:
            reply = self.canned
        else:
            content = make(json.loads(body))
            reply = _HEAD % len(content) + content
            if RECORDING:
                ARRIVALS.append((arrived, _tokens(content)))
        if self.latency:
            asyncio.get_running_loop().call_later(self.latency, self.send, reply)
        else:
            self.send(reply)

    def send(self, reply: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(reply)


def canned_reply(answer: bytes, compress: bool) -> bytes:
    """A whole reply carrying `answer`, gzipped when `compress`."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    if compress:
        answer = gzip.compress(answer, compresslevel=1)
        head += b"Content-Encoding: gzip\r\n"
    return head + b"Content-Length: %d\r\n\r\n" % len(answer) + answer


async def serve(port: int, latency: float, canned: bytes | None = None) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: _Connection(latency, canned), "127.0.0.1", port, backlog=1024
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"benchmark server on http://127.0.0.1:{bound}/v1", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    global RECORDING
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--answer", type=Path, help="answer every request with this file")
    parser.add_argument("--gzip", action="store_true", help="gzip the --answer file")
    parser.add_argument("--arrivals", type=Path, help="write each request's arrival time here")
    parser.add_argument("--bill", action="store_true", help="bill rerank as the service does")
    arguments = parser.parse_args()
    if arguments.bill:
        ANSWERS[b"/v1/rerank"] = billed_rerank()
    canned = None
    if arguments.answer is not None:
        canned = canned_reply(arguments.answer.read_bytes(), arguments.gzip)
    if arguments.arrivals is not None:
        RECORDING = True
        # Written when the server is stopped (SIGTERM), not per request.
        signal.signal(signal.SIGTERM, lambda *_: _stop(arguments.arrivals))
    asyncio.run(serve(arguments.port, arguments.latency_ms / 1000, canned))


def _stop(arrivals: Path) -> None:
    arrivals.write_text("".join(f"{t:.6f} {n}\n" for t, n in ARRIVALS), encoding="utf-8")
    sys.exit(0)


if __name__ == "__main__":
    main()
