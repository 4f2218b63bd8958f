"""Each due server's one record: its phase and the legal moves between phases (pure, no I/O).

The ledger holds a record from the moment a cycle finds a server due until that stop decision ends
(stopped, gone, failed, held for a later cycle, released, ...). Only the engine moves phases; every move
is checked against ``MOVES`` (an illegal one is a bug: ``IllegalMove``) and published as a
``PhaseChanged`` event, and a move into an outcome also as the one ``StopEnded`` for that decision.
"Busy", "settling" and "following a 202" are queries on the ledger, not containers of their own.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

from culler.core.decide import Decision
from culler.core.events import Event, PhaseChanged, StopEnded
from culler.core.text import utcnow


class Phase(StrEnum):
    """Where a due server's stop decision is. The values are the words logs and reports always used."""

    DUE = "due"  # the cycle found it due; nothing done yet
    HELD = "held"  # over the mass-stop cap: left for a later cycle
    SETTLING = "settling"  # waiting for the user's home to be quiet (settle probes)
    CONFIRMING = "confirming"  # re-reading it from the hub right before its stop
    SENDING = "sending"  # the stop request is on its way to the hub
    STOPPING = "stopping"  # the hub answered 202: followed up in the background until it says stopped
    STOPPED = "stopped"
    GONE = "gone"  # already stopped or removed when we asked
    SLOW = "slow-stopping"  # still stopping at the follow-up deadline
    FAILED = "failed"
    WOULD_STOP = "would-stop"  # dry run
    INTERRUPTED = "interrupted"  # shutdown began before the stop was sent
    RECHECKED = "kept-on-recheck"  # re-read before the stop: used again, gone, or the hub could not say
    RELEASED = "released"  # settling ended without a stop: used again, a policy edit, or no longer running


P = Phase
MOVES: dict[Phase, frozenset[Phase]] = {
    P.DUE: frozenset({P.HELD, P.SETTLING, P.CONFIRMING, P.SENDING, P.WOULD_STOP, P.INTERRUPTED, P.FAILED}),
    P.SETTLING: frozenset({P.CONFIRMING, P.RELEASED}),
    P.CONFIRMING: frozenset({P.SENDING, P.SETTLING, P.RELEASED, P.RECHECKED, P.WOULD_STOP, P.INTERRUPTED, P.FAILED}),
    P.SENDING: frozenset({P.STOPPED, P.GONE, P.FAILED, P.STOPPING, P.INTERRUPTED}),
    P.STOPPING: frozenset({P.STOPPED, P.SLOW}),
}
ENDS = frozenset(Phase) - MOVES.keys()  # a record that reaches one of these leaves the ledger
# The ends that are a stop decision's result: counted in metrics, recorded in the stop history.
OUTCOMES = frozenset({P.STOPPED, P.GONE, P.SLOW, P.FAILED, P.WOULD_STOP, P.RECHECKED})


class IllegalMove(RuntimeError):
    """A phase change the table does not allow: a bug in the engine, never a hub's doing."""


@dataclass
class Record:
    decision: Decision  # as admitted: fixed for the record's life (probe traffic cannot change it)
    phase: Phase
    since: datetime  # when it was admitted, by our clock
    started: float  # the same, monotonic
    settle_note: str | None = None  # "verified" / "unverified" once settling vouched (or gave up)
    progress: Any = None  # the settler's state while it watches this server's home

    @property
    def key(self) -> str:
        return self.decision.server.key

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started

    @property
    def settling(self) -> bool:
        """Waiting for a quiet home, or sending the stop a quiet home allowed."""
        if self.phase in (P.SETTLING, P.CONFIRMING):
            return self.decision.settle is not None
        return self.phase is P.SENDING and self.decision.settle is not None


class Ledger:
    """At most one record per server (by ``ServerSnapshot.key``)."""

    def __init__(self, publish: Callable[[Event], None] | None = None, clock: Callable[[], datetime] = utcnow) -> None:
        self._records: dict[str, Record] = {}
        self._publish = publish or (lambda event: None)
        self._clock = clock

    def admit(self, decision: Decision) -> Record:
        key = decision.server.key
        if key in self._records:
            raise IllegalMove(f"{key} is already {self._records[key].phase}: admitted twice")
        record = self._records[key] = Record(decision, P.DUE, self._clock(), time.monotonic())
        self._publish(PhaseChanged(decision, None, P.DUE))
        return record

    def move(self, record: Record, to: Phase, settle_note: str | None = None) -> None:
        if self._records.get(record.key) is not record:
            raise IllegalMove(f"{record.key} is not in the ledger (it was {record.phase})")
        if to not in MOVES.get(record.phase, frozenset()):
            raise IllegalMove(f"{record.key}: {record.phase} -> {to} is not a legal move")
        was, record.phase = record.phase, to
        if settle_note is not None:
            record.settle_note = settle_note
        if to in ENDS:
            del self._records[record.key]
        self._publish(PhaseChanged(record.decision, was, to))
        if to in OUTCOMES:
            self._publish(StopEnded(record.decision, to, record.settle_note))

    def fail_unfinished(self, record: Record) -> bool:
        """End a stop that raised before it ended its record (a bug, never a hub's answer: the stopper
        catches those) as failed, so that the server is not busy forever. True if it had to."""
        if not self.holds(record) or record.phase not in (P.DUE, P.CONFIRMING, P.SENDING):
            return False
        self.move(record, P.FAILED)
        return True

    def holds(self, record: Record) -> bool:
        """Whether ``record`` is still the live one for its server (not ended, not admitted anew)."""
        return self._records.get(record.key) is record

    def get(self, key: str) -> Record | None:
        return self._records.get(key)

    def busy(self, key: str) -> bool:
        """A stop decision for this server is still under way: a cycle must not admit it again."""
        return key in self._records

    def in_phase(self, *phases: Phase) -> list[Record]:
        return [r for r in self._records.values() if r.phase in phases]

    def settling(self) -> list[Record]:
        return sorted((r for r in self._records.values() if r.settling), key=lambda r: r.key)

    def __len__(self) -> int:
        return len(self._records)
