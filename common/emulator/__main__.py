"""Command line: serve the rerank emulator until interrupted."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading

from ._server import Fault, RerankEmulator

_FAULTS = {
    "429": lambda: Fault.rate_limited(),
    "429-retry-after": lambda: Fault.rate_limited(retry_after="1"),
    "500": Fault.server_error,
    "502": Fault.bad_gateway_html,
    "503": Fault.overloaded,
    "504": Fault.gateway_timeout,
    "disconnect": Fault.disconnect,
    "truncated": Fault.truncated_json,
    "not-json": Fault.not_json,
    "bad-index": Fault.index_out_of_range,
    "duplicate-index": Fault.duplicate_index,
}


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(
        prog="python -m siliconflow_rerank.emulator",
        description="Serve a local SiliconFlow rerank emulator (lexical scores, not a model).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", help="the only key accepted (default: any)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="delay before each answer")
    parser.add_argument(
        "--latency-per-doc-ms", type=float, default=0.0, help="further delay per document"
    )
    parser.add_argument("--rpm", type=int, help="requests per minute before 429")
    parser.add_argument("--tpm", type=int, help="input tokens per minute before 429")
    parser.add_argument(
        "--window-seconds", type=float, default=60.0, help="the window --rpm and --tpm count over"
    )
    parser.add_argument(
        "--read-timeout",
        type=float,
        default=30.0,
        help="seconds a request may take to arrive whole; slower uploads are dropped",
    )
    parser.add_argument(
        "--fault",
        action="append",
        default=[],
        choices=sorted(_FAULTS),
        help="script a fault for the next request (repeatable, served in order)",
    )
    args = parser.parse_args(argv)
    emulator = RerankEmulator(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        latency=args.latency_ms / 1000,
        latency_per_document=args.latency_per_doc_ms / 1000,
        requests_per_minute=args.rpm,
        tokens_per_minute=args.tpm,
        window_seconds=args.window_seconds,
        read_timeout=args.read_timeout,
    )
    emulator.enqueue(*(_FAULTS[name]() for name in args.fault))
    try:
        emulator.start()
    except OSError as error:
        print(f"cannot start the emulator: {error.strerror}", file=sys.stderr)
        return 2
    try:
        print(
            f"SiliconFlow rerank emulator (lexical scores, not a model) serving "
            f"{emulator.base_url} ; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
