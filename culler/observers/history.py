"""The stop history: which servers the service stopped, when and why (an observer of stops).

Kept in memory (bounded) and, when a path is set, appended as JSON lines so that it outlives restarts."""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from culler.core.decide import Decision
from culler.core.events import Event, StopEnded
from culler.core.lifecycle import Phase
from culler.core.text import isoformat, utcnow

log = logging.getLogger("culler.history")

RECORDED = frozenset({Phase.STOPPED, Phase.GONE, Phase.SLOW})
FIELDS = ("user", "server", "time", "rule", "reason", "result", "settle")


class StopHistory:
    def __init__(self, path: Path | None, limit: int = 1000, clock: Callable[[], datetime] = utcnow) -> None:
        self.path = path
        self.clock = clock
        self.entries: deque[dict[str, str | None]] = deque(maxlen=max(1, limit))
        self._last: dict[tuple[str | None, str | None], dict[str, str | None]] = {}  # the page asks per server
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            with path.open(encoding="utf-8") as lines:
                for number, line in enumerate(lines, 1):
                    entry = _parse(line)
                    if entry is None:
                        if line.strip():
                            log.warning("skipping bad stop history line %d in %s", number, path)
                        continue
                    self._append(entry)
        except FileNotFoundError:
            return
        except OSError as error:
            log.warning("cannot read the stop history %s: %s", path, error)

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
        if self.path is not None:
            try:
                with self.path.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(entry, sort_keys=True) + "\n")
            except OSError as error:
                log.warning("cannot append to the stop history %s: %s", self.path, error)

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
