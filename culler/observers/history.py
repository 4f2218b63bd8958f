"""The stop history: which servers the service stopped, when and why (an observer of stops).

Kept in the database (culler.adapters.database), whose entries older than the retention are dropped, and
the newest ``limit`` in memory for the activity page. A JSON-lines history of an earlier version is
imported once (``import_json_lines``); ``history export`` writes the database's back as JSON lines."""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO

from culler.adapters.database import Database, DatabaseError
from culler.core.decide import Decision
from culler.core.events import Event, StopEnded
from culler.core.lifecycle import Phase
from culler.core.text import isoformat, utcnow

log = logging.getLogger("culler.history")

RECORDED = frozenset({Phase.STOPPED, Phase.GONE, Phase.SLOW})
FIELDS = ("user", "server", "time", "rule", "reason", "result", "settle")
MOST_STORED = 100_000  # a bound on the stored history beside its retention
PRUNE_EVERY = 100  # stops between two prunings


class StopHistory:
    def __init__(
        self,
        database: Database | None = None,
        limit: int = 1000,
        clock: Callable[[], datetime] = utcnow,
        retention: float = 90 * 86400.0,
    ) -> None:
        self.database = database if database is not None else Database(None)
        self.clock = clock
        self.retention = timedelta(seconds=retention)
        self.entries: deque[dict[str, str | None]] = deque(maxlen=max(1, limit))
        self._last: dict[tuple[str | None, str | None], dict[str, str | None]] = {}  # the page asks per server
        self._since_prune = 0
        self.reload()

    def reload(self) -> None:
        """Read the newest stops from the database into memory."""
        self.entries.clear()
        self._last.clear()
        try:
            self._prune()
            stored = self.database.stops(self.entries.maxlen or 1)
        except DatabaseError as error:
            log.warning("cannot read the stop history: %s", error)
            return
        for entry in stored:
            self._append({key: entry.get(key) for key in FIELDS})

    def _prune(self) -> None:
        self.database.prune_stops(self.clock() - self.retention, MOST_STORED)

    def observe(self, event: Event) -> None:
        match event:
            case StopEnded(decision=decision, result=result, settle=settle):
                self.server_stopped(decision, result, settle)

    def server_stopped(self, decision: Decision, result: Phase, settle: str | None) -> None:
        if result not in RECORDED:
            return
        entry: dict[str, str | None] = {
            "user": decision.server.user,
            "server": decision.server.name,
            "time": isoformat(self.clock()),
            "rule": decision.rule_id,
            "reason": decision.reason,
            "result": str(result),
            "settle": settle,
        }
        self._append(entry)
        try:
            self.database.add_stop(entry)
            self._since_prune += 1
            if self._since_prune >= PRUNE_EVERY:
                self._since_prune = 0
                self._prune()
        except DatabaseError as error:  # kept in memory; the page still shows it until a restart
            log.warning("cannot store the stop of %s: %s", decision.server.label, error)

    def _append(self, entry: dict[str, str | None]) -> None:
        if len(self.entries) == self.entries.maxlen:  # the oldest entry falls out
            oldest = self.entries[0]
            if self._last.get((oldest["user"], oldest["server"])) is oldest:
                del self._last[(oldest["user"], oldest["server"])]
        self.entries.append(entry)
        self._last[(entry["user"], entry["server"])] = entry

    def for_user(self, name: str) -> list[dict[str, str | None]]:
        """The user's stops, newest first."""
        return [dict(e) for e in reversed(self.entries) if e["user"] == name]

    def last_stop(self, user: str, server: str) -> dict[str, str | None] | None:
        entry = self._last.get((user, server))
        return None if entry is None else dict(entry)

    def all(self) -> list[dict[str, str | None]]:
        return [dict(e) for e in reversed(self.entries)]


def import_json_lines(database: Database, path: Path) -> int | None:
    """Copy an earlier version's JSON-lines history into the database, once per file (by its full
    path). The number imported; None when it was imported before or is missing. Bad lines are skipped."""
    marker = f"imported:{path.resolve()}"
    if database.meta(marker) is not None or not path.exists():
        return None
    entries = []
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            entry = _parse(line)
            if entry is None:
                if line.strip():
                    log.warning("skipping bad stop history line %d in %s", number, path)
                continue
            entries.append(entry)
    database.add_stops(entries, marker)
    return len(entries)


def export_json_lines(database: Database, out: TextIO) -> int:
    """Write every stored stop as one JSON line, oldest first; how many."""
    count = 0
    for entry in database.iter_stops():
        out.write(json.dumps(entry, sort_keys=True) + "\n")
        count += 1
    return count


def _parse(line: str) -> dict[str, str | None] | None:
    try:
        data = json.loads(line)
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str) or not isinstance(data.get("server"), str):
        return None
    if not isinstance(data.get("time"), str):
        return None
    return {key: (None if data.get(key) is None else str(data.get(key))) for key in FIELDS}
