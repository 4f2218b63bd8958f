"""The settle probe interface. A probe tells whether a user's home is still being written to.

Probes must never create activity on the user's server: no traffic through the proxy, no tracked
jupyter-server endpoints. Per-server state lives in the probe; ``forget`` drops it when a server
leaves settling (stopped, active again, or gone).
"""

from __future__ import annotations

from typing import Protocol

from culler.core.settle import Observation
from culler.core.snapshot import ServerSnapshot


class Probe(Protocol):
    name: str

    async def observe(self, server: ServerSnapshot, window: float = 0.0) -> Observation:
        """Active, quiet for N seconds, or cannot tell. Raising counts as "cannot tell". ``window`` is
        the quiet the settle step needs (a probe may pace its work by it)."""
        ...

    def forget(self, key: str) -> None: ...
