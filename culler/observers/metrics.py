"""Prometheus metrics, all in one place.

Names follow ``activity_culler_<noun>_<verb or unit>``; counters end in ``_total``, durations are in
seconds. Known label values are created up front so every series exists at zero. No label carries a
user name, except the opt-in ``activity_culler_server_seconds_until_stop`` gauge.

Values are recorded as they happen: ``Metrics`` observes the engine's events (culler.events) and is the
hub client's request observer. Only states are read at scrape time: the policy in force, the number of
servers settling (from the ledger) and the clocks' skew.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from culler.adapters.policy_store import PolicyStore
from culler.core.clock import ClockWatch
from culler.core.decide import Action, Decision
from culler.core.events import CycleDecided, Event, NoticeSent, PolicyRead, ServerKept, SettleObserved, StopEnded
from culler.core.lifecycle import OUTCOMES, Ledger, Phase
from culler.core.listing import REASONS as LISTING_FAILURES
from culler.core.report import CycleReport
from culler.core.settle import DEFERRAL_REASONS, deferrals
from culler.core.text import utcnow
from culler.core.views import ServerState, state_of

PREFIX = "activity_culler"
STOP_OUTCOMES = tuple(str(phase) for phase in Phase if phase in OUTCOMES)
SERVER_STATES = tuple(str(state) for state in ServerState)  # exclusive: they sum to the listed servers
ENDPOINTS = (
    ("GET", "user"),  # whose token a caller holds (the page, the settling API, the metrics endpoint)
    ("GET", "users"),
    ("GET", "users/{name}"),
    ("DELETE", "users/{name}/server"),
    ("DELETE", "users/{name}/servers/{server}"),
    ("DELETE", "users/{name}"),
)
NOTICE_KINDS = ("warning", "stopped")


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None, per_server: bool = False) -> None:
        self.registry = registry or CollectorRegistry()
        self.per_server = per_server
        self._cycle_metrics(self.registry)
        self._stop_metrics(self.registry)
        self._hub_metrics(self.registry)
        self._settle_and_notice_metrics(self.registry)
        self._precreate()

    def _cycle_metrics(self, r: CollectorRegistry) -> None:
        self.listing_failures = Counter(
            f"{PREFIX}_listing_failures",
            "Listings that failed (no stops that cycle), by the bound broken or 'error'",
            ["reason"],
            registry=r,
        )
        self.listed_twice = Counter(
            f"{PREFIX}_servers_listed_twice", "Servers a listing returned more than once (judged once)", registry=r
        )
        self.cycles = Counter(f"{PREFIX}_cycles", "Cull cycles run, by result", ["result"], registry=r)
        self.cycle_duration = Histogram(
            f"{PREFIX}_cycle_duration_seconds",
            "Time one cull cycle took",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=r,
        )
        self.last_success = Gauge(
            f"{PREFIX}_last_successful_cycle_timestamp_seconds", "When the last successful cycle ended", registry=r
        )
        self.servers = Gauge(
            f"{PREFIX}_servers", "Servers seen by the last cycle, by state (each in exactly one)", ["state"], registry=r
        )

    def _stop_metrics(self, r: CollectorRegistry) -> None:
        self.stops = Counter(f"{PREFIX}_stops", "Stops by outcome and policy rule", ["outcome", "rule"], registry=r)
        self.unverified = Counter(
            f"{PREFIX}_settle_unverified_stops", "Stops made at the settle cap without quiet", registry=r
        )
        self.guard = Counter(
            f"{PREFIX}_mass_stop_guard_activations", "Cycles in which the mass-stop guard held stops", registry=r
        )
        self.held = Gauge(f"{PREFIX}_mass_stop_guard_held_servers", "Servers held by the guard last cycle", registry=r)
        self.users_deleted = Counter(f"{PREFIX}_users_deleted", "Users deleted from the hub", registry=r)

    def _hub_metrics(self, r: CollectorRegistry) -> None:
        self.requests = Counter(
            f"{PREFIX}_hub_requests",
            "Hub API requests by method, endpoint and status",
            ["method", "endpoint", "status"],
            registry=r,
        )
        self.request_duration = Histogram(
            f"{PREFIX}_hub_request_duration_seconds", "Hub API request latency", ["method", "endpoint"], registry=r
        )
        self.until_stop = Gauge(
            f"{PREFIX}_server_seconds_until_stop",
            "Seconds until a server is due (opt-in: a series per server)",
            ["user", "server"],
            registry=r,
        )

    def _settle_and_notice_metrics(self, r: CollectorRegistry) -> None:
        self.reloads = Counter(f"{PREFIX}_policy_reloads", "Policy file reads by result", ["result"], registry=r)
        self.deferrals = Counter(
            f"{PREFIX}_settle_deferrals",
            "Settle polls that deferred a stop, by reason and probe",
            ["reason", "probe"],
            registry=r,
        )
        self.probe_errors = Counter(f"{PREFIX}_probe_errors", "Probe observations that failed", ["probe"], registry=r)
        self.notices = Counter(
            f"{PREFIX}_warnings", "Webhook notices by kind and result", ["kind", "result"], registry=r
        )
        self.keeps = Counter(f"{PREFIX}_keeps", "Keeps users (or admins) made, by policy rule", ["rule"], registry=r)
        self.kept = Gauge(f"{PREFIX}_kept_servers", "Servers whose idle deadline a keep moved, last cycle", registry=r)

    def _precreate(self) -> None:
        for result in ("loaded", "rejected"):
            self.reloads.labels(result)
        for kind in NOTICE_KINDS:
            for result in ("sent", "failed"):
                self.notices.labels(kind, result)
        for result in ("ok", "failed"):
            self.cycles.labels(result)
        for reason in (*LISTING_FAILURES, "error"):
            self.listing_failures.labels(reason)
        for state in SERVER_STATES:
            self.servers.labels(state)
        for outcome in STOP_OUTCOMES:
            self.stops.labels(outcome, "default")
        for method, endpoint in ENDPOINTS:
            self.request_duration.labels(method, endpoint)

    def watch(self, store: PolicyStore, ledger: Ledger, clocks: Iterable[ClockWatch] = ()) -> None:
        """Read the policy in force, the settling servers and the clocks' skew at scrape time."""
        self.registry.register(_LiveCollector(store, ledger, list(clocks)))

    def known_probes(self, names: Iterable[str]) -> None:
        for probe in names:
            self.probe_errors.labels(probe)
            for reason in DEFERRAL_REASONS:
                self.deferrals.labels(reason, probe)

    def known_rules(self, rule_ids: Iterable[str]) -> None:
        for rule in rule_ids:
            self.keeps.labels(rule)
            for outcome in STOP_OUTCOMES:
                self.stops.labels(outcome, rule)

    # -- recorders ---------------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        match event:
            case CycleDecided(report=report):
                self.cycle_done(report)
            case StopEnded(decision=decision, result=result, settle=settle):
                self.server_stopped(decision, result, settle)
            case SettleObserved(decision=decision, observations=observations, verdict=verdict):
                window = decision.settle.window if decision.settle is not None else 0.0
                for name, observation in observations.items():
                    if observation.error:
                        self.probe_errors.labels(name).inc()
                for reason, probe in deferrals(observations, window, verdict):
                    self.deferrals.labels(reason, probe).inc()
            case NoticeSent(kind=kind, ok=ok):
                self.notices.labels(kind, "sent" if ok else "failed").inc()
            case PolicyRead(result=result):
                self.reloads.labels(result).inc()
            case ServerKept(rule=rule):
                self.keeps.labels(rule).inc()

    def hub_request(self, method: str, endpoint: str, status: str, seconds: float) -> None:
        self.requests.labels(method, endpoint, status).inc()
        self.request_duration.labels(method, endpoint).observe(seconds)

    def cycle_done(self, report: CycleReport) -> None:
        self.cycles.labels("ok" if report.ok else "failed").inc()
        if report.ok:
            self.kept.set(sum(1 for decision in report.decisions if decision.kept_until is not None))
        self.cycle_duration.observe(report.duration)
        if report.listing_failure is not None:
            self.listing_failures.labels(report.listing_failure).inc()
        if not report.ok:
            return
        self.listed_twice.inc(report.duplicates)
        self.last_success.set(time.time())
        self._count_servers(report)
        if report.guard is not None:
            self.held.set(len(report.guard.held))
            if report.guard.tripped:
                self.guard.inc()
        self.users_deleted.inc(len(report.users_deleted))
        if self.per_server:
            self._until_stop(report.decisions)

    def server_stopped(self, decision: Decision, result: Phase, settle: str | None) -> None:
        self.stops.labels(str(result), decision.rule_id).inc()
        if settle == "unverified" and result in (Phase.STOPPED, Phase.GONE, Phase.SLOW):
            self.unverified.inc()

    def _count_servers(self, report: CycleReport) -> None:
        counts = Tally(state_of(d, d.server.key in report.settling) for d in report.decisions)
        for state in ServerState:
            self.servers.labels(str(state)).set(counts[state])

    def _until_stop(self, decisions: list[Decision]) -> None:
        self.until_stop.clear()
        now = utcnow()
        for decision in decisions:
            if decision.stop_at is not None and decision.action in (Action.KEEP, Action.STOP):
                seconds = max(0.0, (decision.stop_at - now).total_seconds())
                self.until_stop.labels(decision.server.user, decision.server.name).set(seconds)


class _LiveCollector(Collector):
    def __init__(self, store: PolicyStore, ledger: Ledger, clocks: list[ClockWatch]) -> None:
        self.store = store
        self.ledger = ledger
        self.clocks = clocks

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily | InfoMetricFamily]:
        state = self.store.state
        info = InfoMetricFamily(f"{PREFIX}_policy", "The policy in force")
        info.add_metric([], {"hash": state.hash or "none", "source": state.source})
        yield info
        valid = GaugeMetricFamily(f"{PREFIX}_policy_valid", "1 if the newest policy file validated, else 0")
        valid.add_metric([], 0.0 if state.error or state.policy is None else 1.0)
        yield valid
        settling = GaugeMetricFamily(f"{PREFIX}_settling_servers", "Due servers waiting for a quiet home")
        settling.add_metric([], len(self.ledger.settling()))
        yield settling
        yield from self._clocks()

    def _clocks(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily]:
        skew = GaugeMetricFamily(
            f"{PREFIX}_clock_skew_seconds", "The source's clock minus ours, by its latest Date", labels=["source"]
        )
        undated = CounterMetricFamily(
            f"{PREFIX}_undated_answers", "Answers without a Date header (judged by our clock)", labels=["source"]
        )
        for clock in self.clocks:
            skew.add_metric([clock.source], clock.skew_seconds)
            undated.add_metric([clock.source], clock.undated)
        yield skew
        yield undated
