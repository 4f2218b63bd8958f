"""Metrics: what cycle reports, stop results and hub requests record, and what the live collector reads."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest

from culler.adapters.policy_store import PolicyStore
from culler.core.decide import Action, Decision
from culler.core.events import ServerKept, StopEnded
from culler.core.guard import GuardResult
from culler.core.keeps import Kept
from culler.core.lifecycle import Ledger, Phase, Record
from culler.core.report import CycleReport
from culler.core.settle import Observation, active, unknown
from culler.core.snapshot import ServerSnapshot
from culler.core.text import utcnow
from culler.engine.settler import Settler
from culler.observers.metrics import SERVER_STATES, STOP_OUTCOMES, Metrics
from culler.policy.model import Settle

P = "activity_culler"
GOOD_POLICY = "version: 1\ndefaults:\n  idle: 1h\nrules:\n  - id: short\n    match: {users: ['a-*']}\n    idle: 5m\n"


def snapshot(user: str, name: str = "", pending: str | None = None) -> ServerSnapshot:
    now = utcnow()
    return ServerSnapshot(
        user, name, False, (), now - timedelta(hours=2), now - timedelta(days=1), pending, not pending
    )


def decision(user: str, action: Action, rule: str = "short", name: str = "", **kw: object) -> Decision:
    server = snapshot(user, name, pending="spawn" if action is Action.SKIP else None)
    stop_at = kw.pop("stop_at", utcnow() + timedelta(minutes=10) if action is not Action.SKIP else None)
    return Decision(server, action, rule, "test", 60.0, stop_at, **kw)  # type: ignore[arg-type]


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def new_metrics(per_server: bool = False) -> Metrics:
    return Metrics(registry=CollectorRegistry(), per_server=per_server)


def a_report(ok: bool = True, seconds: float = 1.5) -> CycleReport:
    report = CycleReport(started=utcnow() - timedelta(seconds=seconds), duration=seconds)
    if not ok:
        report.error = "listing users failed, no stops this cycle: 503"
        return report
    due1, due2 = decision("a-1", Action.STOP), decision("a-2", Action.STOP)
    report.decisions = [
        decision("p-1", Action.SKIP, "-"),
        decision("k-1", Action.KEEP, "default"),
        decision("vip-1", Action.EXEMPT, "vip"),
        due1,
        due2,
    ]
    report.results = {due1.server.key: Phase.STOPPED, due2.server.key: Phase.SETTLING}
    report.guard = GuardResult(allowed=[due1], held=[due2], limit=1)
    report.users_deleted = ["gone-1"]
    return report


def test_every_known_series_exists_at_zero_before_anything_happens() -> None:
    metrics = new_metrics()
    assert value(metrics, f"{P}_cycles_total", result="ok") == 0
    assert value(metrics, f"{P}_cycles_total", result="failed") == 0
    for outcome in STOP_OUTCOMES:
        assert value(metrics, f"{P}_stops_total", outcome=outcome, rule="default") == 0
    assert value(metrics, f"{P}_servers", state="settling") == 0
    assert value(metrics, f"{P}_last_successful_cycle_timestamp_seconds") == 0
    assert value(metrics, f"{P}_mass_stop_guard_activations_total") == 0
    assert value(metrics, f"{P}_hub_request_duration_seconds_count", method="DELETE", endpoint="users/{name}") == 0
    metrics.known_rules(["short", "gpu"])
    assert value(metrics, f"{P}_stops_total", outcome="failed", rule="gpu") == 0


def test_a_successful_cycle_records_servers_guard_duration_and_deletions() -> None:
    metrics = new_metrics()
    before = utcnow().timestamp()
    metrics.cycle_done(a_report(seconds=1.5))

    assert value(metrics, f"{P}_cycles_total", result="ok") == 1
    assert value(metrics, f"{P}_cycles_total", result="failed") == 0
    states = {state: value(metrics, f"{P}_servers", state=state) for state in SERVER_STATES}
    # exclusive: every listed server in exactly one state (no "ready" superset)
    assert states == {"pending": 1, "exempt": 1, "keep": 1, "due": 2, "settling": 0}  # no settler watched
    assert value(metrics, f"{P}_servers", state="ready") is None
    assert value(metrics, f"{P}_mass_stop_guard_activations_total") == 1
    assert value(metrics, f"{P}_mass_stop_guard_held_servers") == 1
    assert value(metrics, f"{P}_users_deleted_total") == 1
    assert value(metrics, f"{P}_cycle_duration_seconds_count") == 1
    assert 1.4 <= (value(metrics, f"{P}_cycle_duration_seconds_sum") or 0) < 5
    assert value(metrics, f"{P}_cycle_duration_seconds_bucket", le="1.0") == 0
    assert value(metrics, f"{P}_cycle_duration_seconds_bucket", le="2.5") == 1
    last = value(metrics, f"{P}_last_successful_cycle_timestamp_seconds") or 0
    assert before - 1 <= last <= utcnow().timestamp() + 1


def test_a_failed_cycle_is_counted_and_leaves_the_last_success_and_server_counts_alone() -> None:
    metrics = new_metrics()
    metrics.cycle_done(a_report())
    last = value(metrics, f"{P}_last_successful_cycle_timestamp_seconds")
    metrics.cycle_done(a_report(ok=False))

    assert value(metrics, f"{P}_cycles_total", result="failed") == 1
    assert value(metrics, f"{P}_cycles_total", result="ok") == 1
    assert value(metrics, f"{P}_cycle_duration_seconds_count") == 2
    assert value(metrics, f"{P}_last_successful_cycle_timestamp_seconds") == last
    assert value(metrics, f"{P}_servers", state="keep") == 1
    assert value(metrics, f"{P}_mass_stop_guard_activations_total") == 1


def test_a_cycle_without_guard_trip_does_not_count_an_activation() -> None:
    metrics = new_metrics()
    report = a_report()
    report.guard = GuardResult(allowed=list(report.decisions), held=[], limit=10)
    metrics.cycle_done(report)
    assert value(metrics, f"{P}_mass_stop_guard_activations_total") == 0
    assert value(metrics, f"{P}_mass_stop_guard_held_servers") == 0


def test_stop_results_count_by_outcome_and_rule_and_unverified_settles() -> None:
    """Driven through the ledger: each stop decision is counted once, at its outcome."""
    metrics = new_metrics()
    ledger = Ledger(metrics.observe)

    def through(d: Decision, *phases: Phase, note: str | None = None) -> None:
        record = ledger.admit(d)
        for phase in phases:
            ledger.move(record, phase, note)

    due = decision("a-1", Action.STOP, "short")
    through(due, Phase.SENDING, Phase.STOPPED)
    through(due, Phase.SETTLING, Phase.CONFIRMING, Phase.SENDING, Phase.STOPPED, note="unverified")
    through(due, Phase.SENDING, Phase.STOPPING)  # a 202: counted with its final result...
    assert value(metrics, f"{P}_stops_total", outcome="stopped", rule="short") == 2
    [following] = ledger.in_phase(Phase.STOPPING)
    ledger.move(following, Phase.SLOW)  # ...here
    through(due, Phase.SETTLING, Phase.CONFIRMING, Phase.SENDING, Phase.STOPPING, Phase.SLOW, note="unverified")
    through(due, Phase.SENDING, Phase.FAILED)
    through(due, Phase.SENDING, Phase.FAILED, note="unverified")  # a failed stop is not an unverified stop
    through(decision("g-1", Action.STOP, "gpu"), Phase.WOULD_STOP)
    for not_a_stop in (Phase.HELD, Phase.INTERRUPTED):
        through(due, not_a_stop)
    through(due, Phase.SETTLING, Phase.RELEASED)

    assert value(metrics, f"{P}_stops_total", outcome="stopped", rule="short") == 2
    assert value(metrics, f"{P}_stops_total", outcome="stopping", rule="short") is None
    assert value(metrics, f"{P}_stops_total", outcome="slow-stopping", rule="short") == 2
    assert value(metrics, f"{P}_stops_total", outcome="failed", rule="short") == 2
    assert value(metrics, f"{P}_stops_total", outcome="would-stop", rule="gpu") == 1
    assert value(metrics, f"{P}_settle_unverified_stops_total") == 2
    for outcome in ("held", "interrupted", "settling", "released", "sending"):
        assert value(metrics, f"{P}_stops_total", outcome=outcome, rule="short") is None
    assert len(ledger) == 0


def test_hub_requests_count_by_status_and_observe_latency() -> None:
    metrics = new_metrics()
    metrics.hub_request("GET", "users", "200", 0.02)
    metrics.hub_request("GET", "users", "200", 0.3)
    metrics.hub_request("DELETE", "users/{name}/server", "error", 1.0)

    assert value(metrics, f"{P}_hub_requests_total", method="GET", endpoint="users", status="200") == 2
    assert (
        value(metrics, f"{P}_hub_requests_total", method="DELETE", endpoint="users/{name}/server", status="error") == 1
    )
    assert value(metrics, f"{P}_hub_request_duration_seconds_count", method="GET", endpoint="users") == 2
    assert value(metrics, f"{P}_hub_request_duration_seconds_bucket", method="GET", endpoint="users", le="0.025") == 1


def labels_by_family(registry: CollectorRegistry) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            found.setdefault(family.name, set()).update(sample.labels)
    return found


def test_per_server_gauge_is_off_by_default() -> None:
    metrics = new_metrics()
    metrics.cycle_done(a_report())
    assert labels_by_family(metrics.registry).get(f"{P}_server_seconds_until_stop") is None
    assert b"a-1" not in generate_latest(metrics.registry)


def test_per_server_gauge_when_asked_for() -> None:
    metrics = new_metrics(per_server=True)
    report = a_report()
    report.decisions.append(decision("a-3", Action.STOP, stop_at=utcnow() - timedelta(hours=1)))
    metrics.cycle_done(report)

    seconds = value(metrics, f"{P}_server_seconds_until_stop", user="k-1", server="")
    assert seconds is not None and 500 < seconds <= 600
    assert value(metrics, f"{P}_server_seconds_until_stop", user="a-3", server="") == 0  # overdue: 0, not negative
    assert value(metrics, f"{P}_server_seconds_until_stop", user="vip-1", server="") is None  # exempt
    assert value(metrics, f"{P}_server_seconds_until_stop", user="p-1", server="") is None  # pending

    later = CycleReport(started=utcnow(), decisions=[decision("k-1", Action.KEEP, "default")])
    metrics.cycle_done(later)  # servers that went away lose their series
    assert value(metrics, f"{P}_server_seconds_until_stop", user="a-1", server="") is None
    assert value(metrics, f"{P}_server_seconds_until_stop", user="k-1", server="") is not None


def live_metrics(tmp_path: Path, per_server: bool = True) -> tuple[Metrics, PolicyStore, Settler]:
    """Metrics wired as the service wires them: observing the store's, the ledger's and the settler's events."""
    metrics = new_metrics(per_server=per_server)
    policy = tmp_path / "policy.yaml"
    policy.write_text(GOOD_POLICY)
    store = PolicyStore(path=policy, publish=metrics.observe)
    store.refresh()

    async def stop(record: Record, note: str) -> None:
        return None

    ledger = Ledger(metrics.observe)
    probes = {"tree-scan": FixedProbe(active("writing")), "prometheus": FixedProbe(unknown("x"))}
    settler = Settler(probes, stop, ledger=ledger, publish=metrics.observe)
    metrics.known_probes(probes)
    metrics.watch(store, ledger)
    return metrics, store, settler


def test_no_label_carries_a_user_name_except_the_opt_in_gauge(tmp_path: Path) -> None:
    metrics, _, _ = live_metrics(tmp_path, per_server=True)
    metrics.cycle_done(a_report())
    metrics.observe(StopEnded(decision("a-1", Action.STOP), Phase.STOPPED, None))
    metrics.hub_request("GET", "users/{name}", "200", 0.01)

    labels = labels_by_family(metrics.registry)
    assert labels[f"{P}_server_seconds_until_stop"] == {"user", "server"}
    for name, names in labels.items():
        if name != f"{P}_server_seconds_until_stop":
            assert not names & {"user", "username", "name"}, f"{name} has a per-user label: {names}"
            assert name.startswith(f"{P}_"), name


class FixedProbe:
    def __init__(self, observation: Observation) -> None:
        self.observation = observation

    async def observe(self, snapshot: ServerSnapshot, window: float = 0.0) -> Observation:
        return self.observation

    def forget(self, key: str) -> None:
        pass


def test_live_collector_reports_the_policy_in_force_and_reloads(tmp_path: Path) -> None:
    metrics, store, _ = live_metrics(tmp_path)
    digest = store.state.hash
    assert digest
    source = str(tmp_path / "policy.yaml")
    assert value(metrics, f"{P}_policy_info", hash=digest, source=source) == 1
    assert value(metrics, f"{P}_policy_valid") == 1
    assert value(metrics, f"{P}_policy_reloads_total", result="loaded") == 1
    assert value(metrics, f"{P}_policy_reloads_total", result="rejected") == 0

    (tmp_path / "policy.yaml").write_text("version: 1\ndefaults:\n  idle: soon\n")
    store.refresh()
    assert value(metrics, f"{P}_policy_valid") == 0  # the newest file is bad...
    assert value(metrics, f"{P}_policy_info", hash=digest, source=source) == 1  # ...the last good one stays
    assert value(metrics, f"{P}_policy_reloads_total", result="rejected") == 1

    (tmp_path / "policy.yaml").write_text(GOOD_POLICY.replace("5m", "6m"))
    store.refresh()
    assert value(metrics, f"{P}_policy_valid") == 1
    assert value(metrics, f"{P}_policy_reloads_total", result="loaded") == 2
    assert value(metrics, f"{P}_policy_info", hash=digest, source=source) is None
    assert value(metrics, f"{P}_policy_info", hash=store.state.hash or "", source=source) == 1


async def test_live_collector_reports_settling_servers_deferrals_and_probe_errors(tmp_path: Path) -> None:
    metrics, _, settler = live_metrics(tmp_path)
    assert value(metrics, f"{P}_settling_servers") == 0
    assert value(metrics, f"{P}_settle_deferrals_total", reason="active", probe="tree-scan") == 0
    assert value(metrics, f"{P}_probe_errors_total", probe="prometheus") == 0

    settle = Settle(probes=["tree-scan", "prometheus"], window=60, max_deferral=3600, at_cap="stop")
    settler.admit(decision("a-1", Action.STOP, settle=settle))
    settler.admit(decision("a-2", Action.STOP, settle=settle))
    assert value(metrics, f"{P}_settling_servers") == 2
    report = a_report()
    report.settling = frozenset(settler.settling)  # as the cycle reports them
    metrics.cycle_done(report)  # the listed settling servers count as settling, and not as due too
    assert value(metrics, f"{P}_servers", state="settling") == 2
    assert value(metrics, f"{P}_servers", state="due") == 0
    assert sum(value(metrics, f"{P}_servers", state=state) or 0 for state in SERVER_STATES) == 5

    await settler.poll()
    await settler.poll()
    assert value(metrics, f"{P}_settling_servers") == 2  # active homes: still waiting
    assert value(metrics, f"{P}_settle_deferrals_total", reason="active", probe="tree-scan") == 4
    assert value(metrics, f"{P}_settle_deferrals_total", reason="unknown", probe="prometheus") == 4
    assert value(metrics, f"{P}_settle_deferrals_total", reason="cap", probe="tree-scan") == 0
    assert value(metrics, f"{P}_probe_errors_total", probe="prometheus") == 0  # unknown, not an error

    settler.probes["prometheus"] = FixedProbe(unknown("timed out", error=True))
    await settler.poll()
    assert value(metrics, f"{P}_probe_errors_total", probe="prometheus") == 2
    assert value(metrics, f"{P}_probe_errors_total", probe="tree-scan") == 0


def test_the_exposition_has_no_per_user_series_by_default(tmp_path: Path) -> None:
    metrics, _, _ = live_metrics(tmp_path, per_server=False)
    metrics.cycle_done(a_report())
    text = generate_latest(metrics.registry).decode()
    assert 'user="' not in text and "username" not in text
    assert f'{P}_servers{{state="due"}} 2.0' in text


def test_keeps_are_counted_by_rule_and_kept_servers_by_cycle() -> None:
    metrics = new_metrics()
    metrics.known_rules(["short"])
    assert value(metrics, f"{P}_keeps_total", rule="short") == 0
    now = utcnow()
    kept = Kept("a-1", "", now + timedelta(hours=1), "a-1", now, now - timedelta(days=1))
    metrics.observe(ServerKept(kept, "short"))
    metrics.observe(ServerKept(kept, "short"))
    assert value(metrics, f"{P}_keeps_total", rule="short") == 2
    report = a_report()
    report.decisions.append(decision("a-3", Action.KEEP, kept_until=now + timedelta(hours=1)))
    metrics.cycle_done(report)
    assert value(metrics, f"{P}_kept_servers") == 1
    failed = a_report(ok=False)
    metrics.cycle_done(failed)  # a failed cycle says nothing new about keeps
    assert value(metrics, f"{P}_kept_servers") == 1
