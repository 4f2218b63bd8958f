"""Keeps as an input to the decision: how far a keep may move a deadline, and what the decision makes of it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from culler.core.decide import Action, evaluate
from culler.core.keeps import KeepRefused, Kept, next_until
from culler.core.snapshot import ServerSnapshot
from culler.policy.model import Keep, PolicyError, parse_policy

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
STARTED = NOW - 10 * DAY
KEEP = Keep(step=86400, max=3 * 86400)

POLICY = parse_policy(
    """\
version: 1
defaults: {idle: 7d, keep: {step: 1d, max: 3d}}
rules:
  - {id: gpu, match: {users: [gpu-*]}, idle: 1d, max_age: 9d, keep: {step: 12h, max: 2d}}
  - {id: no-keep, match: {users: [quick-*]}, idle: 1d, keep: null}
""",
    "test",
)


@dataclass
class Keeps:
    keeps: dict[str, Kept]
    problem: str | None = None

    def kept(self, user: str, server: str) -> Kept | None:
        return self.keeps.get(f"{user}/{server}")


def server(user: str, idle: timedelta, started: datetime = STARTED) -> ServerSnapshot:
    return ServerSnapshot(user, "", False, (), NOW - idle, started, None, True)


def kept(user: str, until: datetime, started: datetime = STARTED) -> Kept:
    return Kept(user, "", until, user, NOW - DAY, started)


def test_a_keep_moves_the_deadline_by_a_step_from_the_later_of_now_and_the_deadline() -> None:
    normal = NOW + DAY
    assert next_until(KEEP, normal, None, None, NOW) == normal + DAY
    assert next_until(KEEP, normal, None, normal + DAY, NOW) == normal + 2 * DAY  # a second keep stacks
    overdue = NOW - DAY  # due already (settling, say): a keep counts from now
    assert next_until(KEEP, overdue, None, None, NOW) == NOW + DAY


def test_a_keep_never_reaches_past_max_nor_max_age() -> None:
    normal = NOW + DAY
    assert next_until(KEEP, normal, None, normal + 2.5 * DAY, NOW) == normal + 3 * DAY  # the rest of the way
    with pytest.raises(KeepRefused, match=r"already kept to the limit: 2026-12-05T12:00:00Z \(at most 3d past"):
        next_until(KEEP, normal, None, normal + 3 * DAY, NOW)
    age_due = NOW + 1.5 * DAY
    assert next_until(KEEP, normal, age_due, None, NOW) == age_due
    with pytest.raises(KeepRefused):
        next_until(KEEP, normal, age_due, age_due, NOW)


def test_no_keep_section_or_no_idle_deadline_refuses() -> None:
    with pytest.raises(KeepRefused, match="does not allow keeping"):
        next_until(None, NOW, None, None, NOW)
    with pytest.raises(KeepRefused, match="no idle deadline"):
        next_until(KEEP, None, None, None, NOW)


def test_a_kept_server_is_kept_past_its_normal_deadline_and_stopped_after_the_kept_one() -> None:
    idle = server("alice", 8 * DAY)  # 7d idle limit: due a day ago
    assert evaluate(POLICY, idle, NOW).action is Action.STOP
    keeps = Keeps({"alice/": kept("alice", NOW + 2 * DAY)})
    decision = evaluate(POLICY, idle, NOW, keeps=keeps)
    assert decision.action is Action.KEEP and decision.kept_until == NOW + 2 * DAY
    assert decision.stop_at == NOW + 2 * DAY and "kept until 2026-12-03T12:00:00Z" in decision.reason
    later = evaluate(POLICY, idle, NOW + 2 * DAY, keeps=keeps)
    assert later.action is Action.STOP and "kept until" in later.reason


def test_a_keep_is_capped_by_the_rule_in_force_and_not_by_the_one_it_was_made_under() -> None:
    gpu = server("gpu-bob", 2 * DAY, started=NOW - 3 * DAY)  # idle limit 1d: normally due a day ago
    far = Keeps({"gpu-bob/": kept("gpu-bob", NOW + 5 * DAY, started=NOW - 3 * DAY)})
    decision = evaluate(POLICY, gpu, NOW, keeps=far)
    assert decision.kept_until == NOW + DAY  # normal deadline (NOW - 1d) + max 2d


def test_max_age_is_never_extended_by_a_keep() -> None:
    old = server("gpu-carol", timedelta(hours=1), started=NOW - 10 * DAY)  # max_age 9d: due by age
    keeps = Keeps({"gpu-carol/": kept("gpu-carol", NOW + DAY, started=NOW - 10 * DAY)})
    decision = evaluate(POLICY, old, NOW, keeps=keeps)
    assert decision.action is Action.STOP and "max age" in decision.reason


def test_a_keep_of_an_earlier_run_and_a_rule_without_keep_count_for_nothing() -> None:
    restarted = server("alice", 8 * DAY, started=NOW - 9 * DAY)
    earlier_run = Keeps({"alice/": kept("alice", NOW + 2 * DAY, started=NOW - 20 * DAY)})
    assert evaluate(POLICY, restarted, NOW, keeps=earlier_run).action is Action.STOP
    quick = server("quick-dan", 2 * DAY)
    no_keep = Keeps({"quick-dan/": kept("quick-dan", NOW + DAY)})
    assert evaluate(POLICY, quick, NOW, keeps=no_keep).action is Action.STOP


def test_while_keeps_cannot_be_read_only_servers_that_could_be_kept_are_kept() -> None:
    unreadable = Keeps({}, problem="database /srv/culler.sqlite: file is not a database")
    could_be_kept = evaluate(POLICY, server("alice", 8 * DAY), NOW, keeps=unreadable)
    assert could_be_kept.action is Action.KEEP and could_be_kept.error is not None
    assert "keeps cannot be read: database /srv/culler.sqlite" in could_be_kept.reason
    cannot_be_kept = evaluate(POLICY, server("quick-erin", 2 * DAY), NOW, keeps=unreadable)
    assert cannot_be_kept.action is Action.STOP


def test_the_policy_refuses_keeps_without_bounds() -> None:
    for bad in ("{step: 2d, max: 1d}", "{step: never, max: 1d}", "{step: 0, max: 1d}", "{step: 1d}"):
        with pytest.raises(PolicyError, match=r"defaults\.keep"):
            parse_policy(f"version: 1\ndefaults: {{keep: {bad}}}\n", "test")
