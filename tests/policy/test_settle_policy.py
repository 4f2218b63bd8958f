"""The policy's settle sections: parsing, precise errors, overrides, and Decision.settle from evaluate."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from culler.core.decide import Action, Verdict, evaluate
from culler.core.snapshot import ServerSnapshot
from culler.policy.model import PolicyError, Settle, parse_policy

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)

WITH_SETTLE = """
version: 1
defaults:
  idle: 1h
  settle:
    probes: [tree-scan]
    window: 2m
    max_deferral: 6h
rules:
  - id: staff
    match: {admin: true}
    exempt: true
  - id: gpu
    match: {user_options: {gpu: "*"}}
    idle: 30m
    settle: {probes: [tree-scan, prometheus], window: 5m, max_deferral: 1h, at_cap: skip}
  - id: scratch
    match: {servers: ["scratch-*"]}
    settle: {probes: []}
  - id: aged
    match: {users: ["old-*"]}
    idle: never
    max_age: 1d
"""


def parse(text: str, probes: list[str] | None = None) -> Any:
    return parse_policy(text, "policy.yaml", probes=probes)


def errors(text: str, probes: list[str] | None = None) -> list[str]:
    with pytest.raises(PolicyError) as caught:
        parse(text, probes)
    return caught.value.errors


def server(**overrides: Any) -> ServerSnapshot:
    fields: dict[str, Any] = {
        "user": "alice",
        "name": "",
        "admin": False,
        "groups": (),
        "last_activity": NOW - timedelta(hours=2),
        "started": NOW - timedelta(days=2),
        "pending": None,
        "ready": True,
        "user_options": {},
    }
    return ServerSnapshot(**{**fields, **overrides})


def test_settle_in_defaults_and_rules_parses() -> None:
    policy = parse(WITH_SETTLE, probes=["tree-scan", "prometheus"])
    assert policy.defaults.settle == Settle(probes=["tree-scan"], window=120, max_deferral=6 * 3600, at_cap="stop")
    gpu = policy.rules[1].settle
    assert gpu == Settle(probes=["tree-scan", "prometheus"], window=300, max_deferral=3600, at_cap="skip")
    assert policy.rules[2].settle == Settle()  # "settle: {}" means: no probes here
    assert policy.rules[0].settle is None and policy.rules[3].settle is None  # inherit the defaults'


def test_no_settle_anywhere_means_no_probes() -> None:
    policy = parse("version: 1\n")
    assert policy.defaults.settle.probes == []
    assert evaluate(policy, server(), NOW).settle is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "version: 1\nrules:\n  - id: gpu\n    settle: {probes: [inotify], window: 1m}\n",
            "policy.yaml: rules[0] (id 'gpu'): settle.probes.0: Input should be 'tree-scan', 'prometheus' or 'server'",
        ),
        (
            "version: 1\nrules:\n  - {}\n  - settle: {probes: [tree-scan, fanotify]}\n",
            "policy.yaml: rules[1] (id 'rule-2'): settle.probes.1: "
            "Input should be 'tree-scan', 'prometheus' or 'server'",
        ),
        (
            "version: 1\ndefaults:\n  settle: {probes: [kubelet]}\n",
            "policy.yaml: defaults.settle.probes.0: Input should be 'tree-scan', 'prometheus' or 'server'",
        ),
        (
            "version: 1\nrules:\n  - id: gpu\n    settle: {probes: [tree-scan], window: 10m, max_deferral: 10m}\n",
            "policy.yaml: rules[0] (id 'gpu'): settle: max_deferral must be longer than window, or no server could "
            "ever settle (with defaults.settle filling in)",
        ),
        (
            "version: 1\ndefaults:\n  settle: {probes: [tree-scan], window: 1h, max_deferral: 30m}\n",
            "policy.yaml: defaults.settle: max_deferral must be longer than window, or no server could ever settle",
        ),
        (
            "version: 1\ndefaults:\n  settle: {probes: [tree-scan], window: never}\n",
            "policy.yaml: defaults.settle: max_deferral must be longer than window, or no server could ever settle",
        ),
        (
            "version: 1\nrules:\n  - id: gpu\n    settle: {probes: [tree-scan], window: 0}\n",
            "policy.yaml: rules[0] (id 'gpu'): settle: window must be longer than 0s (with defaults.settle filling in)",
        ),
        (
            "version: 1\nrules:\n  - id: gpu\n    settle: {probes: [tree-scan], at_cap: maybe}\n",
            "policy.yaml: rules[0] (id 'gpu'): settle.at_cap: Input should be 'stop' or 'skip'",
        ),
        (
            "version: 1\nrules:\n  - id: gpu\n    settle: {probes: [tree-scan], windw: 1m}\n",
            "policy.yaml: rules[0] (id 'gpu'): settle.windw: Extra inputs are not permitted",
        ),
        (
            "version: 1\nrules:\n  - id: gpu\n    settle: {probes: [tree-scan], window: soon}\n",
            "policy.yaml: rules[0] (id 'gpu'): settle.window: not a duration: 'soon' (use e.g. 90s, 30m, 36h, 7d, 2w, "
            "1d12h or never)",
        ),
    ],
    ids=[
        "unknown-probe",
        "unknown-probe-auto-id",
        "unknown-probe-defaults",
        "cap-equals-window",
        "cap-below-window-defaults",
        "window-never",
        "window-zero",
        "at-cap",
        "typo",
        "bad-duration",
    ],
)
def test_settle_errors_name_the_rule_and_field(text: str, expected: str) -> None:
    assert errors(text) == [expected]


def test_without_probes_window_and_cap_are_not_checked() -> None:
    policy = parse("version: 1\ndefaults:\n  settle: {window: 1h, max_deferral: 1m}\n")
    assert policy.defaults.settle.probes == []


def test_a_probe_the_service_does_not_configure_is_rejected() -> None:
    found = errors(WITH_SETTLE, probes=["tree-scan"])
    assert found == [
        "policy.yaml: rules[1] (id 'gpu'): settle.probes: 'prometheus' is not configured in the service's settings "
        "(set CULLER_PROMETHEUS_URL and CULLER_PROMETHEUS_QUERY)"
    ]
    found = errors(WITH_SETTLE, probes=[])
    assert len(found) == 3  # defaults' tree-scan, gpu's tree-scan and prometheus
    assert found[0].startswith("policy.yaml: defaults: settle.probes: 'tree-scan' is not configured")
    assert "CULLER_TREE_SCAN_PATH" in found[0]
    parse(WITH_SETTLE, probes=None)  # None: not checked (e.g. linting a policy without the settings)


def test_evaluate_attaches_settle_only_to_stops_with_probes() -> None:
    policy = parse(WITH_SETTLE)
    plain = evaluate(policy, server(), NOW)
    assert plain.action is Action.STOP and plain.rule_id == "default"
    assert plain.settle == policy.defaults.settle
    gpu = evaluate(policy, server(user_options={"gpu": "a100"}), NOW)
    assert gpu.action is Action.STOP and gpu.rule_id == "gpu"
    assert gpu.settle == policy.rules[1].settle  # the rule sets every field: nothing inherited
    scratch = evaluate(policy, server(name="scratch-1"), NOW)
    assert scratch.action is Action.STOP and scratch.settle is None  # "settle: {probes: []}": stop at once
    aged = evaluate(policy, server(user="old-timer", last_activity=NOW), NOW)
    assert aged.action is Action.STOP and "max age" in aged.reason
    assert aged.settle == policy.defaults.settle  # max-age stops settle too
    for kept in (
        evaluate(policy, server(last_activity=NOW - timedelta(minutes=5)), NOW),
        evaluate(policy, server(admin=True), NOW),
        evaluate(policy, server(pending="spawn", ready=False), NOW),
        evaluate(policy, server(activity_error="no route"), NOW),
    ):
        assert kept.action is not Action.STOP and kept.settle is None


def test_a_plugin_stop_settles_under_its_rule() -> None:
    policy = parse(
        "version: 1\nrules:\n  - id: plug\n    plugin: mine\n"
        "    settle: {probes: [tree-scan], window: 1m, max_deferral: 1h}\n"
    )
    decision = evaluate(policy, server(), NOW, {"mine": lambda s, args, now: Verdict("stop", "plugin says so")})
    assert decision.action is Action.STOP and decision.settle == policy.rules[0].settle
    keep = evaluate(policy, server(), NOW, {"mine": lambda s, args, now: Verdict("keep", "plugin says no")})
    assert keep.settle is None


def test_settle_defaults() -> None:
    settle = Settle(probes=["tree-scan"])
    assert (settle.window, settle.max_deferral, settle.at_cap) == (120, 6 * 3600, "stop")
    assert Settle(probes=["tree-scan"], window=60, max_deferral="never").max_deferral == math.inf


def test_a_rule_settle_inherits_the_fields_it_does_not_set() -> None:
    policy = parse(
        "version: 1\ndefaults:\n  idle: 1h\n  settle: {probes: tree-scan, window: 2m, max_deferral: 3h, at_cap: skip}\n"
        "rules:\n  - id: slow\n    match: {users: [a]}\n    settle: {window: 5m}\n"
    )
    settle = evaluate(policy, server(user="a"), NOW).settle
    assert settle is not None
    assert (settle.probes, settle.window, settle.max_deferral, settle.at_cap) == (["tree-scan"], 300, 3 * 3600, "skip")


def test_a_rule_settle_is_judged_with_the_defaults_filling_in() -> None:
    """max_deferral 60s is fine under the defaults' 30s window (not the class default of 2m)."""
    policy = parse(
        "version: 1\ndefaults:\n  settle: {window: 30s}\n"
        "rules:\n  - id: fast\n    settle: {probes: [tree-scan], max_deferral: 60s}\n"
    )
    assert (policy.settle_for(policy.rules[0]).window, policy.settle_for(policy.rules[0]).max_deferral) == (30, 60)


def test_an_inherited_settle_that_cannot_settle_is_rejected() -> None:
    with pytest.raises(PolicyError) as caught:
        parse(
            "version: 1\ndefaults:\n  settle: {probes: [tree-scan], window: 2m, max_deferral: 1h}\n"
            "rules:\n  - id: long\n    match: {users: [a]}\n    settle: {window: 2h}\n"
        )
    assert "rules[0] (id 'long'): settle: max_deferral must be longer than window" in str(caught.value)
