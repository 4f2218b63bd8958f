"""The keeps in force, read from the database once and kept in memory; every new keep is stored before
it counts. While the database cannot be read, ``problem`` says why, and no server whose rule allows
keeping is stopped (culler.core.decide)."""

from __future__ import annotations

import logging
from datetime import datetime

from culler.adapters.database import Database, DatabaseError
from culler.core.keeps import Kept

log = logging.getLogger("culler.keeps")


class KeepStore:
    def __init__(self, database: Database, problem: str | None = None) -> None:
        self.database = database
        self.problem = problem
        self._keeps: dict[str, Kept] = {}
        if problem is None:
            self.reload()

    def reload(self) -> None:
        try:
            self._keeps = {kept.key: kept for kept in self.database.keeps()}
        except DatabaseError as error:
            self.problem = str(error)
            log.error("cannot read the keeps; servers whose rule allows keeping are not stopped: %s", error)
        else:
            self.problem = None

    @property
    def count(self) -> int:
        return len(self._keeps)

    def kept(self, user: str, server: str) -> Kept | None:
        return self._keeps.get(f"{user}/{server}")

    def all(self) -> list[Kept]:
        return sorted(self._keeps.values(), key=lambda kept: kept.key)

    def save(self, kept: Kept) -> None:
        """Stored first (``DatabaseError`` if it cannot be), then in force."""
        if self.problem is not None:
            raise DatabaseError(f"keeps cannot be read, so none is saved: {self.problem}")
        self.database.save_keep(kept)
        self._keeps[kept.key] = kept

    def expire(self, now: datetime) -> None:
        """Forget keeps whose deadline has passed (the audit log keeps them)."""
        for key in [key for key, kept in self._keeps.items() if kept.until < now]:
            del self._keeps[key]
        try:
            self.database.drop_keeps_until(now)
        except DatabaseError as error:
            log.warning("cannot drop expired keeps: %s", error)
