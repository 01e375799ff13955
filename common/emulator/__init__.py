"""A local SiliconFlow emulator (rerank and embeddings): a real HTTP server for offline development
and tests.

It is an emulator, not a model. It validates requests, answers with the API's status codes, body
shapes and headers, chunks long documents, reports usage and injects faults on demand, but its
scores and vectors come from deterministic lexical functions: same input, same answer, on every
machine. Vectors hash the same weighted terms the scores use, so cosine similarity ranks obvious
matches first. Media items score from the words of their URL's file name, or the readable words
inside inline data.

Example:
    >>> from siliconflow_rerank import SiliconFlowClient
    >>> from siliconflow_rerank.emulator import Fault, RerankEmulator
    >>> with RerankEmulator() as emulator:  # doctest: +SKIP
    ...     emulator.enqueue(Fault.overloaded())
    ...     client = SiliconFlowClient(api_key="any", base_url=emulator.base_url)
    ...     client.rerank("apple", ["apple pie", "car"]).results[0].index
    0

Command line: `python -m siliconflow_rerank.emulator --port 8000`.
"""

from __future__ import annotations

from ._server import EmulatorStats, Fault, RerankEmulator

__all__ = ["EmulatorStats", "Fault", "RerankEmulator"]
