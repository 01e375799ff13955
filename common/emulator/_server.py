"""A local HTTP server speaking SiliconFlow's rerank and embeddings APIs, with faults on demand."""

from __future__ import annotations

import collections
import contextlib
import errno
import json
import math
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

from .._capabilities import ModelCapabilities, embedding_capabilities, model_capabilities
from . import _scoring
from ._scoring import float32_base64, float32_values

__all__ = ["EmulatorStats", "Fault", "RerankEmulator"]

TRACE_HEADER = "x-siliconcloud-trace-id"
MAX_BODY_BYTES = 128 * 1024 * 1024
"""Larger request bodies get 413 without being read."""
MAX_WORKERS = 512
"""Connections served at once; more wait for a free handler thread."""
READ_TIMEOUT = 30.0
"""Seconds a request may take to arrive whole, from its first byte."""
RATE_LIMIT_MESSAGE = (
    "Request was rejected due to rate limiting. If you want more, please contact "
    "contact@siliconflow.cn. Details:{which} limit reached."
)
BAD_GATEWAY_HTML = (
    b"<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1>"
    b"</center><hr><center>nginx</center></body></html>"
)

FaultKind = Literal[
    "status",
    "disconnect",
    "truncated_json",
    "not_json",
    "slow",
    "index_out_of_range",
    "duplicate_index",
    "missing_results",
    "dropped_results",
    "non_finite_score",
]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour, applied to one upcoming API request (rerank or embeddings).

    Build faults with the class methods (`Fault.rate_limited()`, `Fault.disconnect()`, ...).
    """

    kind: FaultKind
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0

    @classmethod
    def http_status(
        cls,
        status: int,
        body: bytes | str | dict[str, Any],
        *,
        headers: dict[str, str] | None = None,
        content_type: str | None = None,
    ) -> Fault:
        """Answer with any status and body (a dict or str body is sent as JSON)."""
        if isinstance(body, bytes):
            raw, kind = body, content_type or "text/plain; charset=utf-8"
        else:
            raw, kind = json.dumps(body).encode(), content_type or "application/json"
        return cls("status", status, raw, kind, tuple((headers or {}).items()))

    @classmethod
    def rate_limited(cls, retry_after: str | None = None, which: str = "RPM") -> Fault:
        """429 with the vendor's message, with a `Retry-After` header if given."""
        headers = {"Retry-After": retry_after} if retry_after is not None else None
        body = {"message": RATE_LIMIT_MESSAGE.format(which=which), "data": None}
        return cls.http_status(429, body, headers=headers)

    @classmethod
    def overloaded(cls) -> Fault:
        """503 with code 50505, "Model service overloaded"."""
        body = {"code": 50505, "message": "Model service overloaded. Please try again later."}
        return cls.http_status(503, {**body, "data": None})

    @classmethod
    def server_error(cls) -> Fault:
        """500 with code 50507, "Unknown error"."""
        return cls.http_status(500, {"code": 50507, "message": "Unknown error.", "data": None})

    @classmethod
    def bad_gateway_html(cls) -> Fault:
        """502 with an HTML page, as a proxy in front of the API would send."""
        return cls.http_status(502, BAD_GATEWAY_HTML, content_type="text/html")

    @classmethod
    def gateway_timeout(cls) -> Fault:
        """504 with a bare text body."""
        return cls.http_status(504, b"Gateway Timeout")

    @classmethod
    def disconnect(cls) -> Fault:
        """Send the headers and part of the body, then close the connection."""
        return cls("disconnect")

    @classmethod
    def truncated_json(cls) -> Fault:
        """200 whose body is the first half of the real JSON (with a matching Content-Length)."""
        return cls("truncated_json")

    @classmethod
    def not_json(cls) -> Fault:
        """200 whose body is not JSON at all."""
        return cls("not_json")

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        """Wait `seconds` before answering normally (longer than a client's timeout, say)."""
        return cls("slow", delay=seconds)

    @classmethod
    def index_out_of_range(cls) -> Fault:
        """200 whose first result points past the end of the documents."""
        return cls("index_out_of_range")

    @classmethod
    def duplicate_index(cls) -> Fault:
        """200 whose results name one document twice."""
        return cls("duplicate_index")

    @classmethod
    def missing_results(cls) -> Fault:
        """200 without a `results` field."""
        return cls("missing_results")

    @classmethod
    def dropped_results(cls) -> Fault:
        """200 whose list lacks its last entry (a result, or a vector)."""
        return cls("dropped_results")

    @classmethod
    def non_finite_score(cls) -> Fault:
        """200 whose first result has a NaN score."""
        return cls("non_finite_score")


@dataclass
class EmulatorStats:
    """Counters a test can read (a snapshot; see `RerankEmulator.stats`)."""

    requests: int = 0
    """Requests received on any path."""
    by_status: dict[int, int] = field(default_factory=dict)
    """Answers sent, per status (a dropped connection counts as status 0)."""
    last_request_body: Any = None
    """The decoded JSON body of the latest API (rerank or embeddings) request."""
    last_request_headers: dict[str, str] = field(default_factory=dict, repr=False)
    """The headers of the latest API request (names in lower case)."""
    in_flight: int = 0
    """API requests being handled right now."""
    max_in_flight: int = 0
    """The most API requests handled at the same time since the last reset."""
    connections: int = 0
    """TCP connections accepted (fewer than `requests` when clients keep connections alive)."""
    open_connections: int = 0
    """TCP connections open right now (clients that closed their pools have none left)."""

    def __repr__(self) -> str:
        # The headers hold the client's key: a repr (in a test failure, a log) shows them redacted.
        shown = {
            k: "[redacted]" if k == "authorization" else v
            for k, v in self.last_request_headers.items()
        }
        fields = ", ".join(
            f"{name}={getattr(self, name)!r}"
            for name in self.__dataclass_fields__
            if name != "last_request_headers"
        )
        return f"EmulatorStats({fields}, last_request_headers={shown!r})"


class _Invalid(Exception):
    def __init__(self, message: str, code: int = 20015, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class RerankEmulator:
    """A SiliconFlow-compatible rerank and embeddings server on a real loopback socket. Not a model.

    Scores and vectors come from deterministic lexical functions (see the
    `siliconflow_rerank.emulator` docs); everything else (validation, status codes, body shapes,
    headers, chunking, usage) follows the API. Faults, the key check, rate limits and counters
    apply to both endpoints alike.

    Example:
        >>> with RerankEmulator() as emulator:  # doctest: +SKIP
        ...     client = SiliconFlowClient(api_key="any", base_url=emulator.base_url)
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str | None = None,
        latency: float = 0.0,
        latency_per_document: float = 0.0,
        requests_per_minute: int | None = None,
        tokens_per_minute: int | None = None,
        max_workers: int = MAX_WORKERS,
        window_seconds: float = 60.0,
        read_timeout: float = READ_TIMEOUT,
    ) -> None:
        """Configure the server; `start()` (or `with`) binds it.

        Args:
            host: Interface to bind; keep the loopback default unless you know why.
            port: Port to bind; 0 picks a free one (see `base_url`).
            api_key: The only key accepted; None accepts any non-empty bearer token.
            latency: Seconds to wait before each answer.
            latency_per_document: Further seconds per document (or input to embed) in a request.
            requests_per_minute: Answer 429 past this many requests in a minute.
            tokens_per_minute: Answer 429 past this many input tokens in a minute.
            max_workers: Connections served at once; further ones wait for a free handler.
            window_seconds: The window the two limits count over (a minute, as the service's;
                shorter in tests).
            read_timeout: Seconds a request may take to arrive whole (headers and body), from
                its first byte; a connection that takes longer is closed, so that stalled or
                trickled uploads cannot hold the handler threads.
        """
        self.host = host
        self.port = port
        self.api_key = api_key
        self.latency = latency
        self.latency_per_document = latency_per_document
        self.requests_per_minute = requests_per_minute
        self.tokens_per_minute = tokens_per_minute
        self.max_workers = max_workers
        self.window_seconds = window_seconds
        self.read_timeout = read_timeout
        self._lock = threading.Lock()
        self._faults: collections.deque[Fault] = collections.deque()
        self._stats = EmulatorStats()
        self._window: collections.deque[tuple[float, int]] = collections.deque()
        self._window_tokens = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._sockets: set[socket.socket] = set()
        self._reading: dict[socket.socket, float] = {}
        """Connections whose request is arriving, with the time by which it must have arrived."""
        self._wake = threading.Event()

    @property
    def base_url(self) -> str:
        """The API root to give a client, e.g. `http://127.0.0.1:54321/v1`."""
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() or use it in a with")
        return f"http://{self.host}:{self._server.server_address[1]}/v1"

    def start(self) -> RerankEmulator:
        """Bind the socket and serve in a background thread."""
        handler = type("_BoundHandler", (_Handler,), {"emulator": self})
        try:
            server = _Server((self.host, self.port), handler)
        except OSError as error:
            if error.errno != errno.EADDRINUSE:
                raise
            raise OSError(
                error.errno,
                f"port {self.port} on {self.host} is already in use (another emulator or server "
                "runs there): choose another port, or port 0 for a free one",
            ) from None
        server.max_workers = self.max_workers
        server.emulator = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and drop every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> RerankEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def enqueue(self, *faults: Fault) -> None:
        """Script faults: each of the next API requests gets the next fault, in order."""
        with self._lock:
            self._faults.extend(faults)

    @property
    def pending_faults(self) -> int:
        """How many scripted faults have not been served yet."""
        with self._lock:
            return len(self._faults)

    @property
    def stats(self) -> EmulatorStats:
        """A snapshot of the counters."""
        with self._lock:
            return EmulatorStats(
                requests=self._stats.requests,
                by_status=dict(self._stats.by_status),
                last_request_body=self._stats.last_request_body,
                last_request_headers=dict(self._stats.last_request_headers),
                in_flight=self._stats.in_flight,
                max_in_flight=self._stats.max_in_flight,
                connections=self._stats.connections,
                open_connections=len(self._sockets),
            )

    def reset(self) -> None:
        """Clear the counters, the scripted faults and the rate-limit window."""
        # Wake answers still sleeping (slow faults, latency) so they cannot overlap what comes next.
        self._wake.set()
        deadline = time.monotonic() + 2.0
        while self.stats.in_flight and time.monotonic() < deadline:
            time.sleep(0.005)
        with self._lock:
            self._wake = threading.Event()
            busy = self._stats.in_flight
            self._stats = EmulatorStats(in_flight=busy, max_in_flight=busy)
            self._faults.clear()
            self._window.clear()
            self._window_tokens = 0

    def rank(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer a rerank body as the server would (raises `ValueError` where it answers 400).

        Handy as ground truth in tests: the scores a request over HTTP would get.
        """
        try:
            return _rerank_answer(body)
        except _Invalid as error:
            raise ValueError(str(error)) from None

    def embed(self, body: dict[str, Any]) -> dict[str, Any]:
        """Answer an embeddings body as the server would (raises `ValueError` where it answers
        400 or 413): the vectors a request over HTTP would get."""
        try:
            return _embedding_answer(body)
        except _Invalid as error:
            raise ValueError(str(error)) from None

    # -- internals used by the handler --------------------------------------------------------

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _count(self, status: int) -> None:
        with self._lock:
            self._stats.by_status[status] = self._stats.by_status.get(status, 0) + 1

    def _rate_limited(self, tokens: int, now: float) -> str | None:
        """Whether a request that arrived at `now` (whole: the service counts a request when it
        has it, however long answering it takes) is over a limit, and which."""
        if self.requests_per_minute is None and self.tokens_per_minute is None:
            return None  # no window to keep: it would grow with every request of a long run
        with self._lock:
            while self._window and self._window[0][0] <= now - self.window_seconds:
                self._window_tokens -= self._window.popleft()[1]
            if (
                self.requests_per_minute is not None
                and len(self._window) >= self.requests_per_minute
            ):
                return "RPM"
            used = self._window_tokens
            if self.tokens_per_minute is not None and used + tokens > self.tokens_per_minute:
                return "TPM"
            self._window.append((now, tokens))
            self._window_tokens += tokens
            return None


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True
    max_workers = MAX_WORKERS
    emulator: RerankEmulator

    def service_actions(self) -> None:
        # Called by serve_forever between polls: drop each connection whose request did not
        # arrive in time (its handler thread, blocked reading, then ends).
        emulator = self.emulator
        now = time.monotonic()
        with emulator._lock:
            late = [sock for sock, until in emulator._reading.items() if now > until]
            for sock in late:
                del emulator._reading[sock]
        for sock in late:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def process_request(self, request: Any, client_address: Any) -> None:
        # A bounded pool of handler threads, not one new thread per connection: a flood of
        # connections waits in line instead of exhausting the machine.
        pool = self.__dict__.get("_pool")
        if pool is None:
            pool = self.__dict__["_pool"] = ThreadPoolExecutor(
                self.max_workers, thread_name_prefix="siliconflow-emulator"
            )
        pool.submit(self.process_request_thread, request, client_address)

    def server_close(self) -> None:
        super().server_close()
        pool = self.__dict__.get("_pool")
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that time out or vanish mid-answer are part of the job, not server errors.
        pass


class _Handler(BaseHTTPRequestHandler):
    emulator: RerankEmulator
    protocol_version = "HTTP/1.1"
    server_version = "SiliconFlowRerankEmulator/1.0"
    timeout = 60
    # Headers and body go out in separate writes; with Nagle's algorithm on, a client's delayed
    # ACK would hold every answer back.
    disable_nagle_algorithm = True

    def setup(self) -> None:
        super().setup()
        with self.emulator._lock:
            self.emulator._sockets.add(self.connection)
            self.emulator._stats.connections += 1

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.emulator._lock:
                self.emulator._sockets.discard(self.connection)
                self.emulator._reading.pop(self.connection, None)

    def handle_one_request(self) -> None:
        # An idle connection waits for its next request (up to `timeout`); once the request's
        # first byte is in, the whole of it must arrive within the emulator's read_timeout.
        try:
            if not self.rfile.peek(1):  # type: ignore[attr-defined]  # a BufferedReader
                self.close_connection = True
                return
        except OSError:
            self.close_connection = True
            return
        emulator = self.emulator
        with emulator._lock:
            emulator._reading[self.connection] = time.monotonic() + emulator.read_timeout
        try:
            super().handle_one_request()
        finally:
            self._arrived()

    def _arrived(self) -> None:
        """The request is in: serving it is not bounded by read_timeout."""
        with self.emulator._lock:
            self.emulator._reading.pop(self.connection, None)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str = "application/json",
        headers: Iterable[tuple[str, str]] = (),
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header(TRACE_HEADER, uuid.uuid4().hex)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        # Counted before the body goes out, so a client that has its answer sees it counted.
        self.emulator._count(status)
        self.wfile.write(body)

    def _send_fault(self, fault: Fault) -> None:
        self._send(fault.status, fault.body, fault.content_type, fault.headers)

    def _not_found(self) -> None:
        self._send(404, b"404 page not found", "text/plain; charset=utf-8")

    def _send_json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload, ensure_ascii=False).encode())

    def _read_body(self) -> bytes | None:
        """The request body, or None when the client went away before sending all of it, or the
        length was refused (answered with 400 or 413 here)."""
        lengths = self.headers.get_all("Content-Length") or []
        try:
            length = int(lengths[0]) if lengths else 0
        except ValueError:
            length = -1
        if length < 0 or len(set(lengths)) > 1:
            self._refuse(400, "Content-Length is not one non-negative number.")
            return None
        if length > MAX_BODY_BYTES:
            self._refuse(413, f"Request body is larger than {MAX_BODY_BYTES} bytes.")
            return None
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            self.close_connection = True
            return None
        return raw

    def _authorized(self) -> bool:
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
        expected = self.emulator.api_key
        return bool(token) and (expected is None or token == expected)

    def _refuse(self, status: int, message: str) -> None:
        # The body is not read, so the connection cannot be reused.
        self.close_connection = True
        with self.emulator._lock:
            self.emulator._stats.requests += 1
        self._send_json(status, {"code": 20015 if status == 400 else 20042, "message": message})

    def do_GET(self) -> None:
        with self.emulator._lock:
            self.emulator._stats.requests += 1
        self._not_found()

    def do_POST(self) -> None:
        emulator = self.emulator
        if not self._authorized():
            # Refused before the body is read: nobody without the key makes the emulator read
            # or parse a body.
            self.close_connection = True
            with emulator._lock:
                emulator._stats.requests += 1
            self._send_json(401, "Invalid token")
            return
        raw = self._read_body()
        if raw is None:  # an abandoned upload is not a request: nothing to count or answer
            return
        arrived = time.monotonic()
        self._arrived()
        with emulator._lock:
            emulator._stats.requests += 1
        # A client sends the absolute form ("POST http://host/v1/rerank") through a proxy; as a
        # server must, take it too, so that the emulator can stand in for a proxy in tests.
        endpoint = _ENDPOINTS.get(urlsplit(self.path).path.rstrip("/"))
        if endpoint is None:
            self._not_found()
            return
        with emulator._lock:
            stats = emulator._stats
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            stats.last_request_headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            self._serve(raw, endpoint, arrived)
        finally:
            with emulator._lock:
                emulator._stats.in_flight -= 1

    def _serve(self, raw: bytes, endpoint: _Endpoint, arrived: float) -> None:
        emulator = self.emulator
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            body = None
        with emulator._lock:
            emulator._stats.last_request_body = body

        fault = emulator._next_fault()
        if fault is not None and fault.kind == "status":
            self._send_fault(fault)
            return
        if fault is not None and fault.kind == "disconnect":
            # Counted first: a client that sees the connection drop must find the drop counted.
            emulator._count(0)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "4096")
            self.end_headers()
            self.wfile.write(endpoint.cut_short)
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return

        if not isinstance(body, dict):
            self._send_json(400, {"code": 20015, "message": "Invalid JSON body.", "data": None})
            return
        try:
            answer = endpoint.answer(body)
        except _Invalid as error:
            payload = {"code": error.code, "message": str(error), "data": None}
            self._send_json(error.status, payload)
            return

        limited = emulator._rate_limited(endpoint.tokens(answer), arrived)
        if limited is not None:
            self._send_fault(Fault.rate_limited(which=limited))
            return
        delay = emulator.latency + emulator.latency_per_document * endpoint.items(body)
        if fault is not None and fault.kind == "slow":
            delay += fault.delay
        if delay > 0:
            emulator._wake.wait(delay)
        self._send_answer(answer, fault, endpoint)

    def _send_answer(
        self, answer: dict[str, Any], fault: Fault | None, endpoint: _Endpoint
    ) -> None:
        kind = fault.kind if fault is not None else None
        entries = answer[endpoint.entries]
        if kind == "index_out_of_range" and entries:
            entries[0]["index"] = len(entries) + 1000
        elif kind == "duplicate_index" and entries:
            entries.append(dict(entries[0]))
        elif kind == "non_finite_score" and entries:
            endpoint.spoil(entries[0])
        elif kind == "missing_results":
            del answer[endpoint.entries]
        elif kind == "dropped_results" and entries:
            entries.pop()
        stream = answer.pop("_stream", None)
        if stream is not None:
            events = [f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n" for chunk in stream]
            body = ("".join(events) + "data: [DONE]\n\n").encode()
            self._send(200, body, "text/event-stream; charset=utf-8")
            return
        encoded = json.dumps(answer, ensure_ascii=False).encode()
        if kind == "truncated_json":
            encoded = encoded[: len(encoded) // 2]
        elif kind == "not_json":
            encoded = b"upstream said: everything is fine"
        self._send(200, encoded)


def _need_int(body: dict[str, Any], name: str, low: int, high: int | None = None) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Invalid(f"{name} must be an integer.")
    if value < low or (high is not None and value > high):
        raise _Invalid(f"{name} is out of range.")
    return value


def _item_terms(item: object, caps: ModelCapabilities, model: str, what: str) -> _Item:
    if isinstance(item, str):
        return _Item(_scoring.units(item), 0, 0)
    if isinstance(item, dict) and len(item) == 1:
        ((key, value),) = item.items()
        if isinstance(value, str) and key in ("text", "image", "video"):
            if key not in caps.modalities:
                raise _Invalid(f"Model {model} does not support {key} input in {what}.")
            if key == "text":
                return _Item(_scoring.units(value), 0, 0)
            if not value:
                raise _Invalid(f"{what} has an empty {key}.")
            images = 1 if key == "image" else 0
            videos = 1 if key == "video" else 0
            return _Item(_scoring.media_tokens(value), images, videos)
    raise _Invalid(f"{what} has an unsupported format.")


@dataclass
class _Item:
    tokens: list[str]
    images: int
    videos: int
    characters: int = 0

    @property
    def length(self) -> int:
        """Tokens, as a length limit counts them: a long run of letters without spaces is
        several tokens to a real tokenizer, not one word."""
        return max(len(self.tokens), self.characters // 4)


def _rerank_answer(body: dict[str, Any]) -> dict[str, Any]:
    """Validate a rerank body as the API does and build the answer."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("model is required.")
    caps = model_capabilities(model)
    if caps is None:
        raise _Invalid("Model does not exist. Please check it carefully.", code=20012)
    query = body.get("query")
    if query is None or query == "":
        raise _Invalid("query is required and its length must be >= 1.")
    documents = body.get("documents")
    if isinstance(documents, str):
        documents = [documents]
    if not isinstance(documents, list) or not documents:
        raise _Invalid("documents is required and must hold at least 1 document.")
    instruction = body.get("instruction")
    if instruction is not None:
        if not isinstance(instruction, str) or not instruction:
            raise _Invalid("instruction length must be >= 1.")
        if not caps.instruction:
            raise _Invalid(f"Model {model} does not support instruction.")
    top_n = _need_int(body, "top_n", 1)
    max_chunks = _need_int(body, "max_chunks_per_doc", 1) or 1024
    overlap = _need_int(body, "overlap_tokens", 0, 80) or 0
    return_documents = body.get("return_documents", False)
    if not isinstance(return_documents, bool):
        raise _Invalid("return_documents must be a boolean.")

    q = _item_terms(query, caps, model, "query")
    items = [_item_terms(d, caps, model, f"documents[{i}]") for i, d in enumerate(documents)]
    query_terms = _scoring.scoring_terms(q.tokens)
    budget = max(caps.context_tokens - len(q.tokens) - 2, 16)
    results = []
    input_tokens = 0
    for index, item in enumerate(items):
        if caps.chunking:
            pieces = _scoring.chunks(item.tokens, budget, min(overlap, budget - 1), max_chunks)
        else:
            pieces = [item.tokens[:budget]]
        score = max(_scoring.relevance(query_terms, _scoring.scoring_terms(p)) for p in pieces)
        input_tokens += sum(len(p) + len(q.tokens) + 2 for p in pieces)
        result: dict[str, Any] = {"index": index, "relevance_score": score}
        if return_documents:
            document = documents[index]
            result["document"] = {"text": document} if isinstance(document, str) else document
        results.append(result)
    results.sort(key=lambda r: (-r["relevance_score"], r["index"]))
    if top_n is not None:
        results = results[:top_n]
    image_tokens = sum(
        (i.images + q.images) * _scoring.IMAGE_TOKENS
        + (i.videos + q.videos) * _scoring.VIDEO_TOKENS
        for i in items
    )
    tokens = {"input_tokens": input_tokens, "output_tokens": 0, "image_tokens": image_tokens}
    billed = {**tokens, "search_units": 0, "classifications": 0}
    return {
        "id": f"rerank-emu-{uuid.uuid4().hex[:16]}",
        "results": results,
        "meta": {"tokens": tokens, "billed_units": billed},
    }


def _embedding_item(item: object, model: str, modalities: frozenset[str], what: str) -> _Item:
    if isinstance(item, dict) and len(item) == 1 and "text" in item:
        item = item["text"]
    if isinstance(item, str):
        if not item.strip():
            raise _Invalid(f"{what} must not be empty.")
        return _Item(_scoring.units(item), 0, 0, len(item))
    if isinstance(item, dict) and len(item) == 1 and isinstance(item.get("image"), str):
        if "image" not in modalities:
            raise _Invalid(f"Model {model} does not support image input in {what}.")
        if not item["image"]:
            raise _Invalid(f"{what} has an empty image.")
        return _Item(_scoring.media_tokens(item["image"]), 1, 0)
    raise _Invalid(f"{what} has an unsupported format.")


def _embedding_answer(body: dict[str, Any]) -> dict[str, Any]:
    """Validate an embeddings body as the API does and build the answer."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("model is required.")
    caps = embedding_capabilities(model)
    if caps is None:
        raise _Invalid("Model does not exist. Please check it carefully.", code=20012)
    inputs = body.get("input")
    if isinstance(inputs, str | dict):
        inputs = [inputs]
    if not isinstance(inputs, list) or not inputs:
        raise _Invalid("input is required and must hold at least 1 item.")
    if len(inputs) > MAX_EMBEDDING_INPUTS:
        raise _Invalid(f"input must hold at most {MAX_EMBEDDING_INPUTS} items, got {len(inputs)}.")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64"):
        raise _Invalid("encoding_format must be float or base64.")
    dimensions = body.get("dimensions")
    if dimensions is not None:
        if caps.dimension_choices is None:
            raise _Invalid(f"Model {model} does not support dimensions.")
        valid = isinstance(dimensions, int) and not isinstance(dimensions, bool) and dimensions > 0
        if not valid or (caps.dimension_choices and dimensions not in caps.dimension_choices):
            raise _Invalid(f"dimensions {dimensions!r} is not supported by model {model}.")
        if dimensions > caps.dimensions:  # no model gives more than its full length
            raise _Invalid(
                f"dimensions {dimensions} is more than model {model}'s {caps.dimensions}."
            )
    size = dimensions or caps.dimensions
    items = [
        _embedding_item(item, model, caps.modalities, f"input[{i}]")
        for i, item in enumerate(inputs)
    ]
    data = []
    tokens = 0
    for index, item in enumerate(items):
        count = item.length + item.images * _scoring.IMAGE_TOKENS
        if count > caps.max_input_tokens:
            raise _Invalid(
                f"input[{index}] has {count} tokens, over the model's {caps.max_input_tokens}.",
                code=20042,
                status=413,
            )
        tokens += count
        vector = _scoring.embedding(model, _scoring.scoring_terms(item.tokens), size)
        encoded: list[float] | str = vector
        if encoding == "base64":
            encoded = float32_base64(vector)
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    return {
        "object": "list",
        "model": model,
        "data": data,
        "usage": {"prompt_tokens": tokens, "completion_tokens": 0, "total_tokens": tokens},
    }


MAX_EMBEDDING_INPUTS = 32
"""The most inputs one embeddings request may hold, as on the service."""


def _spoil_score(result: dict[str, Any]) -> None:
    result["relevance_score"] = math.nan


def _spoil_vector(entry: dict[str, Any]) -> None:
    vector = entry["embedding"]
    if isinstance(vector, str):
        entry["embedding"] = float32_base64([math.nan, *float32_values(vector)[1:]])
    else:
        vector[0] = math.nan


@dataclass(frozen=True)
class _Endpoint:
    """What differs between the endpoints: the answer, and where faults reach into it."""

    answer: Callable[[dict[str, Any]], dict[str, Any]]
    tokens: Callable[[dict[str, Any]], int]
    """Input tokens of an answer, for the TPM limit."""
    items: Callable[[dict[str, Any]], int]
    """Documents or inputs in a (valid) request, for `latency_per_document`."""
    entries: str
    """The answer's list that faults spoil."""
    spoil: Callable[[dict[str, Any]], None]
    """Makes one entry non-finite."""
    cut_short: bytes
    """What a dropped connection sends before it drops."""


def _text_of(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return ""


def _chat_answer(body: dict[str, Any]) -> dict[str, Any]:
    """A deterministic stand-in for a chat model: it answers by quoting the last message."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _Invalid("model is required.")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _Invalid("messages is required and must hold at least 1 message.")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _Invalid(f"messages[{i}] must be an object with a role.")
        content = message.get("content")
        if not (content is None or isinstance(content, str | list)):
            raise _Invalid(f"messages[{i}].content must be a string or a list of parts.")
    for name in ("stream", "logprobs"):
        if not isinstance(body.get(name, False), bool):
            raise _Invalid(f"{name} must be a boolean.")
    for name, low, high in (("temperature", 0, 2), ("top_p", 0, 1), ("frequency_penalty", -2, 2)):
        value = body.get(name)
        if value is None:
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not low <= value <= high
        ):
            raise _Invalid(f"{name} must be a number from {low} to {high}.")
    _need_int(body, "n", 1, MAX_CHOICES)
    _need_int(body, "max_tokens", 1, MAX_COMPLETION_TOKENS)
    question = " ".join(_text_of(messages[-1].get("content")).split())
    content = f"(emulated answer) You asked: {question}"
    reasoning = None
    if any(mark in model.lower() for mark in ("r1", "thinking", "qwq")):
        reasoning = "An emulator does not reason; it quotes the question."
    prompt = sum(len(_scoring.units(_text_of(m.get("content")))) for m in messages)
    completion = len(_scoring.units(content)) + len(_scoring.units(reasoning or ""))
    usage = {"prompt_tokens": prompt, "completion_tokens": completion}
    usage["total_tokens"] = prompt + completion
    identity = {
        "id": f"chat-emu-{uuid.uuid4().hex[:16]}",
        "created": int(time.time()),
        "model": model,
    }
    message = {"role": "assistant", "content": content}
    if reasoning is not None:
        message["reasoning_content"] = reasoning
    answer: dict[str, Any] = {
        **identity,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": usage,
    }
    if body.get("stream"):
        # SiliconFlow's habit, kept: every chunk carries the usage totals so far.
        pieces = [("reasoning_content", reasoning)] if reasoning else []
        pieces += [("content", word + " ") for word in content.split(" ")[:-1]]
        pieces.append(("content", content.split(" ")[-1]))
        chunks = []
        for number, (field_name, text) in enumerate(pieces, start=1):
            so_far = {"prompt_tokens": prompt, "completion_tokens": min(number, completion)}
            so_far["total_tokens"] = prompt + so_far["completion_tokens"]
            delta = {"role": "assistant", field_name: text}
            last = number == len(pieces)
            choice = {"index": 0, "delta": delta, "finish_reason": "stop" if last else None}
            chunks.append(
                {
                    **identity,
                    "object": "chat.completion.chunk",
                    "choices": [choice],
                    "usage": usage if last else so_far,
                }
            )
        answer["_stream"] = chunks
    return answer


MAX_CHOICES = 16
"""The most completions one chat request may ask for (`n`)."""
MAX_COMPLETION_TOKENS = 32768
"""The largest `max_tokens` a chat request may ask for."""


def _listed(body: dict[str, Any], name: str) -> int:
    value = body[name]
    return len(value) if isinstance(value, list) else 1


_ENDPOINTS = {
    "/v1/rerank": _Endpoint(
        answer=_rerank_answer,
        tokens=lambda answer: int(answer["meta"]["tokens"]["input_tokens"]),
        items=lambda body: _listed(body, "documents"),
        entries="results",
        spoil=_spoil_score,
        cut_short=b'{"id": "rerank-emu", "results": [{"ind',
    ),
    "/v1/embeddings": _Endpoint(
        answer=_embedding_answer,
        tokens=lambda answer: int(answer["usage"]["prompt_tokens"]),
        items=lambda body: _listed(body, "input"),
        entries="data",
        spoil=_spoil_vector,
        cut_short=b'{"object": "list", "data": [{"object": "embedding", "ind',
    ),
    "/v1/chat/completions": _Endpoint(
        answer=_chat_answer,
        tokens=lambda answer: int(answer["usage"]["prompt_tokens"]),
        items=lambda body: _listed(body, "messages"),
        entries="choices",
        spoil=lambda choice: None,
        cut_short=b'{"object": "chat.completion", "choices": [{"ind',
    ),
}
