"""A map with a time-to-live and a cap, for caches and sessions that must stay bounded in a long run.

Entries expire ``ttl`` seconds after they were put; beyond ``cap`` entries the oldest go first, one at a
time (no cliff that drops every session at once). With one ttl per map, insertion order is expiry order,
so pruning only ever looks at the front: O(1) per put, amortized.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TTLMap(Generic[K, V]):
    def __init__(self, ttl: float, cap: int, clock: Callable[[], float] = time.monotonic) -> None:
        if cap < 1:
            raise ValueError("cap must be at least 1")
        self.ttl = ttl
        self.cap = cap
        self._clock = clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[K]:
        return list(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def __contains__(self, key: object) -> bool:
        return self.get(key) is not None  # type: ignore[arg-type]

    def put(self, key: K, value: V) -> None:
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self.ttl, value)
        self._prune()

    def pop(self, key: K) -> V | None:
        """The live value, removed (``None`` if absent or expired)."""
        value = self.get(key)
        self._entries.pop(key, None)
        return value

    def _prune(self) -> None:
        now = self._clock()
        while self._entries:
            key, (expires, _) = next(iter(self._entries.items()))
            if expires > now and len(self._entries) <= self.cap:
                return
            del self._entries[key]
