"""What both clients share: settings validated once into a `Pipeline`, and the fork guard."""

from __future__ import annotations

import os
import weakref
from typing import Any

from ._config import resolve_api_key, resolve_base_url
from ._exceptions import redact_in_logs
from ._pipeline import Pipeline
from ._settings import CLIENT_SETTINGS, ClientSettings

__all__ = ["POOL_OWNERS", "ClientBase"]

POOL_OWNERS: weakref.WeakSet[ClientBase] = weakref.WeakSet()
"""Clients that opened a pool: a forked child makes each of them start afresh."""


def _forget_pools_after_fork() -> None:
    for client in list(POOL_OWNERS):
        client._forget_pool()
    POOL_OWNERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools_after_fork)


class ClientBase:
    """What both clients share: the settings, validated once, resolved into a `Pipeline`."""

    def __init__(self, settings: ClientSettings, pipeline: Pipeline | None = None) -> None:
        if type(settings) is not ClientSettings:
            # An adapter's fields (a subclass): the settings alone, already validated, so that the
            # client holds no reference back to the adapter that holds it.
            settings = ClientSettings.model_construct(
                {name for name in CLIENT_SETTINGS if name in settings.model_fields_set},
                **{name: getattr(settings, name) for name in CLIENT_SETTINGS},
            )
        if pipeline is None:
            api_key = resolve_api_key(settings.api_key)
            pipeline = Pipeline(settings, api_key, resolve_base_url(settings.base_url))
        self._pipeline = pipeline
        redact_in_logs(self, pipeline.secret)
        self.settings = settings
        """The client's settings, as validated."""
        self.base_url = pipeline.base_url
        """The API root, without a trailing `/` or endpoint path."""

    @property
    def attempt_deadline(self) -> float | None:
        """Seconds one attempt may take in all: the setting, or derived from the timeout."""
        return self._pipeline.deadline

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def __getstate__(self) -> None:
        raise TypeError(f"{type(self).__name__} holds live connections and cannot be pickled")

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        # A client is a shared resource (a thread-safe connection pool), like a lock or a file:
        # deep copies of objects that hold one share it.
        return self

    def _forget_pool(self) -> None:
        """In a forked child: drop the parent's pools (unclosed: the parent still uses them)."""
