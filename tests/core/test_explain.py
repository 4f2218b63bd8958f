"""Explain: one-line verdicts, and which decisions a candidate policy would change."""

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fakehub import API, TOKEN, FakeHub

from culler.adapters.hub import HubClient
from culler.cli.explain import _fetch_servers
from culler.core.decide import Action, Decision, evaluate
from culler.core.explain import changes, changes_table, describe, explain_table, verdict
from culler.core.snapshot import ServerSnapshot
from culler.engine.look import Look
from culler.policy.model import Policy

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=timezone.utc)


def ago(**delta) -> datetime:
    return NOW - timedelta(**delta)


def server(user: str, name: str = "", idle_hours: float = 2, **overrides) -> ServerSnapshot:
    fields = {
        "user": user,
        "name": name,
        "admin": False,
        "groups": (),
        "last_activity": ago(hours=idle_hours),
        "started": ago(days=30),
        "pending": None,
        "ready": True,
    }
    return ServerSnapshot(**{**fields, **overrides})


def policy(*rules: dict, **defaults) -> Policy:
    return Policy.model_validate({"version": 1, "defaults": defaults, "rules": list(rules)})


def decide(the_policy: Policy, servers: list[ServerSnapshot]) -> list[Decision]:
    return [evaluate(the_policy, s, NOW) for s in servers]


@pytest.mark.parametrize(
    ("the_policy", "overrides", "text"),
    [
        pytest.param(policy(idle="1h"), {}, "stop now", id="stop"),
        pytest.param(policy(idle="3h"), {}, "keep, stop at 2024-06-01T13:00:00Z (in 1h)", id="keep-until"),
        pytest.param(policy(idle="never"), {}, "keep", id="keep-forever"),
        pytest.param(policy({"id": "vip", "exempt": True}), {}, "exempt", id="exempt"),
        pytest.param(policy(), {"pending": "spawn"}, "skip-pending", id="pending"),
    ],
)
def test_verdict(the_policy, overrides, text):
    assert verdict(evaluate(the_policy, server("alice", **overrides), NOW), NOW) == text


def test_describe_row():
    row = describe(
        evaluate(policy(idle="3h"), server("alice", "nb", last_activity=None, started=ago(hours=1)), NOW), NOW
    )
    assert row == {
        "server": "alice/nb",
        "activity": "2024-06-01T11:00:00Z",
        "source": "started",
        "idle": "1h",
        "rule": "default",
        "decision": "keep, stop at 2024-06-01T14:00:00Z (in 2h)",
        "reason": "idle 1h of 3h (rule default); stops at 2024-06-01T14:00:00Z",
        "state": "keep",  # the page's and the metrics' word for it (culler.views)
    }


def test_explain_table_sorted_by_server():
    table = explain_table(decide(policy(idle="1h"), [server("bob"), server("alice")]), NOW)
    header, first, second = table.splitlines()
    assert header.split() == ["SERVER", "ACTIVITY", "IDLE", "RULE", "DECISION", "REASON"]
    assert (first.split()[0], second.split()[0]) == ("alice", "bob")


def test_explain_table_empty():
    assert explain_table([], NOW) == "(no servers)"


SERVERS = [server("alice", idle_hours=2), server("bob", idle_hours=30), server("carol", "gpu", idle_hours=10)]
CURRENT = policy({"id": "gpu", "match": {"servers": ["gpu"]}, "idle": "1d"}, idle="1d")


@pytest.mark.parametrize(
    ("candidate", "rows"),
    [
        pytest.param(CURRENT, [], id="same-policy"),
        pytest.param(
            policy({"id": "gpu", "match": {"servers": ["gpu"]}, "idle": "6h"}, idle="1d"),
            [
                {
                    "server": "carol/gpu",
                    "now": "keep, stop at 2024-06-02T02:00:00Z (in 14h) [gpu]",
                    "candidate": "stop now [gpu]",
                }
            ],
            id="shorter-limit-stops",
        ),
        pytest.param(
            policy({"id": "gpu", "match": {"servers": ["gpu"]}, "idle": "1d"}, idle="3d"),
            [
                {
                    "server": "alice",
                    "now": "keep, stop at 2024-06-02T10:00:00Z (in 22h) [default]",
                    "candidate": "keep, stop at 2024-06-04T10:00:00Z (in 2d22h) [default]",
                },
                {
                    "server": "bob",
                    "now": "stop now [default]",
                    "candidate": "keep, stop at 2024-06-03T06:00:00Z (in 1d18h) [default]",
                },
            ],
            id="longer-default",
        ),
        pytest.param(
            policy({"id": "gpu", "match": {"servers": ["gpu"]}, "idle": "1d"}, idle="20h"),
            [
                {
                    "server": "alice",
                    "now": "keep, stop at 2024-06-02T10:00:00Z (in 22h) [default]",
                    "candidate": "keep, stop at 2024-06-02T06:00:00Z (in 18h) [default]",
                }
            ],
            id="due-servers-still-due-are-unchanged",
        ),
        pytest.param(
            policy({"id": "everyone", "idle": "1d"}),
            [
                {"server": s, "now": n, "candidate": c}
                for s, n, c in [
                    (
                        "alice",
                        "keep, stop at 2024-06-02T10:00:00Z (in 22h) [default]",
                        "keep, stop at 2024-06-02T10:00:00Z (in 22h) [everyone]",
                    ),
                    ("bob", "stop now [default]", "stop now [everyone]"),
                    (
                        "carol/gpu",
                        "keep, stop at 2024-06-02T02:00:00Z (in 14h) [gpu]",
                        "keep, stop at 2024-06-02T02:00:00Z (in 14h) [everyone]",
                    ),
                ]
            ],
            id="rule-renamed",
        ),
    ],
)
def test_changes(candidate, rows):
    assert changes(decide(CURRENT, SERVERS), decide(candidate, SERVERS), NOW) == rows


def test_changes_ignore_servers_only_in_one_list():
    assert changes(decide(CURRENT, SERVERS[:1]), decide(policy(idle="1h"), SERVERS[1:]), NOW) == []


def test_changes_table():
    rows = changes(decide(CURRENT, SERVERS), decide(policy(idle="1h"), SERVERS), NOW)
    assert changes_table(rows, 3).endswith("\n2 of 3 server(s) would change")
    assert changes_table([], 3) == "no decision changes for 3 server(s)"


def test_stop_now_when_candidate_is_due_earlier_is_not_a_change():
    a = Decision(server("bob"), Action.STOP, "default", "x", 30 * 3600, ago(hours=6))
    b = Decision(server("bob"), Action.STOP, "default", "y", 30 * 3600, ago(hours=26))
    assert changes([a], [b], NOW) == []


async def test_explain_skips_a_malformed_user_as_the_service_does(aiohttp_server: Any, capsys: Any) -> None:
    fake = FakeHub()
    fake.add_server("alice", last_activity=NOW - timedelta(hours=2))
    fake.add_server("broken", last_activity=NOW - timedelta(hours=2))
    fake.users["broken"]["servers"][""]["last_activity"] = "last tuesday"
    server = await aiohttp_server(fake.make_app())
    look = Look(HubClient(str(server.make_url(API)), TOKEN))
    servers = await _fetch_servers(look, None)
    await look.hub.close()
    assert [s.user for s in servers] == ["alice"]
    assert "broken" in capsys.readouterr().err


def test_explain_names_the_state_the_page_and_metrics_use():
    due = evaluate(policy(idle="1m"), server("alice"), NOW)
    assert describe(due, NOW)["state"] == "due"
    assert describe(due, NOW, {"alice": {"since": "x", "cap_in": "1h", "at_cap": "stop", "state": "s"}})["state"] == (
        "settling"
    )
    assert describe(evaluate(policy(), server("bob", pending="spawn"), NOW), NOW)["state"] == "pending"
