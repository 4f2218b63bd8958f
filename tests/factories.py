"""The types of the shared factory fixtures in tests/conftest.py, for annotations in test modules."""

from __future__ import annotations

from collections.abc import Callable

from culler.adapters.hub import HubClient
from culler.engine.cycle import Culler

ClientFactory = Callable[..., HubClient]
CullerFactory = Callable[..., Culler]


def stop_lines() -> list[dict[str, str | None]]:
    """Two stop-history entries as the service writes them (one with a fraction of a second)."""
    return [
        {
            "user": "alice",
            "server": "",
            "time": "2024-05-30T10:00:00Z",
            "rule": "default",
            "reason": "idle",
            "result": "stopped",
            "settle": None,
        },
        {
            "user": "bob",
            "server": "gpu",
            "time": "2024-05-31T10:00:00.250000Z",
            "rule": "gpu",
            "reason": "idle",
            "result": "gone",
            "settle": "home quiet",
        },
    ]
