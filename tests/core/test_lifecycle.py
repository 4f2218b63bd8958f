"""The ledger's phase table: every legal move is allowed, every other one raises, and each move is told."""

from __future__ import annotations

from datetime import UTC, datetime
from itertools import product

import pytest

from culler.core.decide import Action, Decision
from culler.core.events import Event, PhaseChanged, StopEnded
from culler.core.lifecycle import ENDS, MOVES, OUTCOMES, IllegalMove, Ledger, Phase, Record
from culler.core.snapshot import ServerSnapshot
from culler.policy.model import Settle

NOW = datetime(2026, 12, 2, tzinfo=UTC)
P = Phase

# How a record reaches each phase that has moves out of it, from a fresh admission.
PATHS: dict[Phase, list[Phase]] = {
    P.DUE: [],
    P.SETTLING: [P.SETTLING],
    P.CONFIRMING: [P.SETTLING, P.CONFIRMING],
    P.SENDING: [P.SENDING],
    P.STOPPING: [P.SENDING, P.STOPPING],
}
LEGAL = sorted((a, b) for a, targets in MOVES.items() for b in targets)
ILLEGAL = sorted((a, b) for a, b in product(MOVES, Phase) if b not in MOVES[a])


def due(user: str = "alice", settle: bool = False) -> Decision:
    server = ServerSnapshot(user, "", False, (), NOW, NOW, None, True)
    how = Settle(probes=["tree-scan"], window=10, max_deferral=60, at_cap="stop") if settle else None
    return Decision(server, Action.STOP, "default", "idle", 7200.0, NOW, settle=how)


def at(phase: Phase, events: list[Event] | None = None) -> tuple[Ledger, Record]:
    ledger = Ledger(events.append if events is not None else None, clock=lambda: NOW)
    record = ledger.admit(due())
    for step in PATHS[phase]:
        ledger.move(record, step)
    assert record.phase is phase
    return ledger, record


def test_the_table_is_the_one_the_engine_was_designed_to() -> None:
    """Written out here on purpose: a new move must be added in both places, on purpose."""
    assert {
        P.DUE: {P.HELD, P.SETTLING, P.CONFIRMING, P.SENDING, P.WOULD_STOP, P.INTERRUPTED, P.FAILED},
        P.SETTLING: {P.CONFIRMING, P.RELEASED},
        P.CONFIRMING: {P.SENDING, P.SETTLING, P.RELEASED, P.RECHECKED, P.WOULD_STOP, P.INTERRUPTED, P.FAILED},
        P.SENDING: {P.STOPPED, P.GONE, P.FAILED, P.STOPPING, P.INTERRUPTED},
        P.STOPPING: {P.STOPPED, P.SLOW},
    } == MOVES
    assert {P.STOPPED, P.GONE, P.SLOW, P.FAILED, P.WOULD_STOP, P.RECHECKED} == OUTCOMES
    # Sample of moves that would be bugs: stopping what settling has not vouched for, a 202 undone, ...
    for was, to in [(P.SETTLING, P.SENDING), (P.STOPPING, P.FAILED), (P.SETTLING, P.STOPPED), (P.DUE, P.STOPPED)]:
        assert to not in MOVES[was]


def test_every_phase_with_moves_is_reachable_and_every_phase_is_an_end_or_has_moves() -> None:
    assert set(PATHS) == set(MOVES)
    assert set(Phase) - set(MOVES) == ENDS and OUTCOMES <= ENDS
    reached = {P.DUE} | {b for _, b in LEGAL}
    assert reached == set(Phase)  # no phase is dead code


@pytest.mark.parametrize(("was", "to"), LEGAL, ids=[f"{a}->{b}" for a, b in LEGAL])
def test_every_legal_move_is_allowed_and_told(was: Phase, to: Phase) -> None:
    events: list[Event] = []
    ledger, record = at(was, events)
    del events[:]
    ledger.move(record, to, "verified")
    assert record.phase is to
    assert events[0] == PhaseChanged(record.decision, was, to)
    if to in OUTCOMES:
        assert events[1:] == [StopEnded(record.decision, to, "verified")]
    else:
        assert events[1:] == []
    assert ledger.busy("alice/") is (to not in ENDS)
    assert ledger.holds(record) is (to not in ENDS)


@pytest.mark.parametrize(("was", "to"), ILLEGAL, ids=[f"{a}->{b}" for a, b in ILLEGAL])
def test_every_other_move_raises_and_changes_nothing(was: Phase, to: Phase) -> None:
    events: list[Event] = []
    ledger, record = at(was, events)
    del events[:]
    with pytest.raises(IllegalMove, match=f"{was} -> {to}"):
        ledger.move(record, to)
    assert record.phase is was and ledger.get("alice/") is record and events == []


def test_a_record_that_ended_cannot_move_again() -> None:
    ledger, record = at(P.SENDING)
    ledger.move(record, P.STOPPED)
    with pytest.raises(IllegalMove, match="not in the ledger"):
        ledger.move(record, P.STOPPED)


def test_a_server_is_admitted_once_until_its_record_ends() -> None:
    events: list[Event] = []
    ledger = Ledger(events.append)
    first = ledger.admit(due())
    with pytest.raises(IllegalMove, match="admitted twice"):
        ledger.admit(due())
    ledger.move(first, P.HELD)  # held for a later cycle: the record ends, the server may come back
    again = ledger.admit(due())
    assert again is not first and ledger.holds(again) and not ledger.holds(first)
    with pytest.raises(IllegalMove):
        ledger.move(first, P.SENDING)  # the old record cannot move the new one
    assert [type(e) for e in events] == [PhaseChanged, PhaseChanged, PhaseChanged]


def test_a_202_is_one_stop_told_once_at_its_final_result() -> None:
    events: list[Event] = []
    ledger, record = at(P.SENDING, events)
    ledger.move(record, P.STOPPING)
    assert ledger.in_phase(P.STOPPING) == [record] and ledger.busy("alice/")
    ledger.move(record, P.STOPPED)
    assert [e for e in events if isinstance(e, StopEnded)] == [StopEnded(record.decision, P.STOPPED, None)]


def test_settling_is_a_query_on_phases_of_records_that_settle() -> None:
    ledger = Ledger()
    settles = ledger.admit(due("alice", settle=True))
    direct = ledger.admit(due("bob"))
    ledger.move(settles, P.SETTLING)
    ledger.move(direct, P.CONFIRMING)  # a direct stop re-checked before it is sent: not settling
    assert [r.key for r in ledger.settling()] == ["alice/"]
    ledger.move(settles, P.CONFIRMING)
    ledger.move(settles, P.SENDING, "verified")  # the stop a quiet home allowed: still settling until it ends
    assert [r.key for r in ledger.settling()] == ["alice/"] and settles.settle_note == "verified"
    ledger.move(settles, P.STOPPING)
    assert ledger.settling() == [] and ledger.busy("alice/")


@pytest.mark.parametrize("phase", [P.DUE, P.CONFIRMING, P.SENDING])
def test_a_stop_that_raised_before_it_ended_is_failed_not_busy_forever(phase: Phase) -> None:
    events: list[Event] = []
    ledger, record = at(phase, events)
    assert ledger.fail_unfinished(record) is True
    assert not ledger.busy("alice/") and isinstance(events[-1], StopEnded) and events[-1].result is P.FAILED


@pytest.mark.parametrize("phase", [P.SETTLING, P.STOPPING])
def test_records_that_wait_on_purpose_are_not_failed(phase: Phase) -> None:
    ledger, record = at(phase)
    assert ledger.fail_unfinished(record) is False and ledger.holds(record)
