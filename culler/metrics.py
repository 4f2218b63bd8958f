"""Prometheus metrics, all in one place.

Names follow ``activity_culler_<noun>_<verb or unit>``; counters end in ``_total``, durations are in
seconds. Known label values are created up front so every series exists at zero. No label carries a
user name, except the opt-in ``activity_culler_server_seconds_until_stop`` gauge.

Most values are recorded as they happen (``Metrics`` is a cycle listener and the hub client's request
observer); the policy and settling figures are read from their owners at scrape time.
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from culler.clock import ClockWatch
from culler.cycle import CycleReport, Result
from culler.decide import Action, Decision
from culler.events import CycleAndStopObserver
from culler.listing import REASONS as LISTING_FAILURES
from culler.policy_store import PolicyStore
from culler.settler import Settler
from culler.timeutil import utcnow
from culler.views import ServerState, state_of
from culler.warnings import WarningSender

PREFIX = "activity_culler"
STOP_OUTCOMES = ("stopped", "slow-stopping", "gone", "failed", "would-stop", "kept-on-recheck")
SERVER_STATES = tuple(str(state) for state in ServerState)  # exclusive: they sum to the listed servers
ENDPOINTS = (
    ("GET", "users"),
    ("GET", "users/{name}"),
    ("DELETE", "users/{name}/server"),
    ("DELETE", "users/{name}/servers/{server}"),
    ("DELETE", "users/{name}"),
)
DEFERRAL_REASONS = ("active", "unknown", "window", "cap")


class Metrics(CycleAndStopObserver):
    def __init__(self, registry: CollectorRegistry | None = None, per_server: bool = False) -> None:
        self.registry = registry or CollectorRegistry()
        self.per_server = per_server
        self._settler: Settler | None = None
        r = self.registry
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
        self.stops = Counter(f"{PREFIX}_stops", "Stops by outcome and policy rule", ["outcome", "rule"], registry=r)
        self.unverified = Counter(
            f"{PREFIX}_settle_unverified_stops", "Stops made at the settle cap without quiet", registry=r
        )
        self.guard = Counter(
            f"{PREFIX}_mass_stop_guard_activations", "Cycles in which the mass-stop guard held stops", registry=r
        )
        self.held = Gauge(f"{PREFIX}_mass_stop_guard_held_servers", "Servers held by the guard last cycle", registry=r)
        self.users_deleted = Counter(f"{PREFIX}_users_deleted", "Users deleted from the hub", registry=r)
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
        self._precreate()

    def _precreate(self) -> None:
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

    def watch(
        self,
        store: PolicyStore,
        settler: Settler,
        warnings: WarningSender | None = None,
        clocks: Iterable[ClockWatch] = (),
    ) -> None:
        """Read the policy's, the settler's, the warning sender's and the clocks' figures at scrape time."""
        self._settler = settler
        self.registry.register(_LiveCollector(store, settler, warnings, list(clocks)))

    def known_rules(self, rule_ids: Iterable[str]) -> None:
        for rule in rule_ids:
            for outcome in STOP_OUTCOMES:
                self.stops.labels(outcome, rule)

    # -- recorders ---------------------------------------------------------------------------------

    def hub_request(self, method: str, endpoint: str, status: str, seconds: float) -> None:
        self.requests.labels(method, endpoint, status).inc()
        self.request_duration.labels(method, endpoint).observe(seconds)

    def cycle_done(self, report: CycleReport) -> None:
        self.cycles.labels("ok" if report.ok else "failed").inc()
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

    def server_stopped(self, decision: Decision, result: Result, settle: str | None) -> None:
        # A 202 ("stopping") is told again with its final result after the follow-up: count that one.
        if result in (Result.HELD, Result.INTERRUPTED, Result.SETTLING, Result.STOPPING):
            return
        self.stops.labels(str(result), decision.rule_id).inc()
        if settle == "unverified" and result in (Result.STOPPED, Result.GONE, Result.SLOW):
            self.unverified.inc()

    def _count_servers(self, report: CycleReport) -> None:
        settling = self._settler.settling if self._settler is not None else {}
        counts = Tally(state_of(d, d.server.key in settling) for d in report.decisions)
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
    def __init__(
        self, store: PolicyStore, settler: Settler, warnings: WarningSender | None, clocks: list[ClockWatch]
    ) -> None:
        self.store = store
        self.settler = settler
        self.warnings = warnings
        self.clocks = clocks

    def collect(self) -> Iterable[CounterMetricFamily | GaugeMetricFamily | InfoMetricFamily]:
        state = self.store.state
        info = InfoMetricFamily(f"{PREFIX}_policy", "The policy in force")
        info.add_metric([], {"hash": state.hash or "none", "source": state.source})
        yield info
        valid = GaugeMetricFamily(f"{PREFIX}_policy_valid", "1 if the newest policy file validated, else 0")
        valid.add_metric([], 0.0 if state.error or state.policy is None else 1.0)
        yield valid
        reloads = CounterMetricFamily(f"{PREFIX}_policy_reloads", "Policy file reads by result", labels=["result"])
        for result in ("loaded", "rejected"):
            reloads.add_metric([result], self.store.outcomes[result])
        yield reloads
        settling = GaugeMetricFamily(f"{PREFIX}_settling_servers", "Due servers waiting for a quiet home")
        settling.add_metric([], len(self.settler.settling))
        yield settling
        deferrals = CounterMetricFamily(
            f"{PREFIX}_settle_deferrals",
            "Settle polls that deferred a stop, by reason and probe",
            labels=["reason", "probe"],
        )
        for probe in self.settler.probes:
            for reason in DEFERRAL_REASONS:
                deferrals.add_metric([reason, probe], self.settler.deferrals[(reason, probe)])
        yield deferrals
        errors = CounterMetricFamily(f"{PREFIX}_probe_errors", "Probe observations that failed", labels=["probe"])
        for probe in self.settler.probes:
            errors.add_metric([probe], self.settler.probe_errors[probe])
        yield errors
        warned = CounterMetricFamily(
            f"{PREFIX}_warnings", "Webhook notices by kind and result", labels=["kind", "result"]
        )
        for kind in ("warning", "stopped"):
            warned.add_metric([kind, "sent"], self.warnings.sent[kind] if self.warnings else 0)
            warned.add_metric([kind, "failed"], self.warnings.failed[kind] if self.warnings else 0)
        yield warned
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
