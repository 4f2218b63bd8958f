"""The activity page's login sessions: in memory for speed, in the database so they outlive a restart.

The database holds a hash of each session id (a stolen file yields no usable cookie) and the identity the
hub gave at login (name, admin, scopes: no token). A session the database cannot store still works until
the service restarts; the failure is logged once per kind."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Any

from culler.adapters.database import Database, DatabaseError
from culler.core.ttlmap import TTLMap

log = logging.getLogger("culler.page")


def _key(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


class Sessions:
    def __init__(self, database: Database | None, ttl: float, cap: int, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.ttl = ttl
        self.clock = clock
        self.memory: TTLMap[str, dict[str, Any]] = TTLMap(ttl, cap)
        self._failed: set[str] = set()

    def get(self, sid: str) -> dict[str, Any] | None:
        identity = self.memory.get(sid)
        if identity is not None or self.database is None:
            return identity
        try:
            stored = self.database.session(_key(sid), self.clock())
        except DatabaseError as error:
            self._warn("read", error)
            return None
        if stored is not None:
            self.memory.put(sid, stored)
        return stored

    def put(self, sid: str, identity: dict[str, Any]) -> None:
        self.memory.put(sid, identity)
        if self.database is None:
            return
        try:
            now = self.clock()
            self.database.prune_sessions(now)
            self.database.save_session(_key(sid), identity, now + self.ttl)
        except DatabaseError as error:
            self._warn("store", error)

    def pop(self, sid: str) -> None:
        self.memory.pop(sid)
        if self.database is None:
            return
        try:
            self.database.drop_session(_key(sid))
        except DatabaseError as error:
            self._warn("drop", error)

    def _warn(self, what: str, error: DatabaseError) -> None:
        if what not in self._failed:
            self._failed.add(what)
            log.warning("cannot %s page sessions in the database (kept in memory): %s", what, error)
