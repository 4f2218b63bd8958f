"""One cull cycle: look at the hub, decide per server, guard, admit the due ones to the ledger, stop."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime

from culler.adapters.errors import HubListingError, ProxyActivityError, SourceError
from culler.adapters.hub import HubClient
from culler.adapters.probes.base import Probe
from culler.adapters.proxy import ProxyActivity
from culler.core.decide import Action, Decision, PluginFn
from culler.core.events import Bus, CycleDecided
from culler.core.guard import apply_guard
from culler.core.keeps import NO_KEEPS, KeepView
from culler.core.lifecycle import Ledger, Phase
from culler.core.report import CycleReport
from culler.core.snapshot import SnapshotError
from culler.core.text import utcnow
from culler.engine.deletion import UserDeleter
from culler.engine.look import Listing, Look, decisions_for
from culler.engine.settler import Settler
from culler.engine.stopper import StopOptions, Stopper
from culler.logs import event
from culler.policy.model import Policy

log = logging.getLogger("culler.cycle")


@dataclass(frozen=True)
class CycleOptions:
    dry_run: bool = False
    max_stops: int = 100
    max_stop_fraction: float = 0.5
    follow_up_timeout: float = 120.0
    follow_up_interval: float = 2.0
    probe_timeout: float = 30.0  # seconds one settle probe may take to answer
    interval: float = 300.0  # seconds between cycles: the longest a listing may take, unless listing_deadline
    listing_deadline: float = 0.0  # seconds; 0: derived from the first page (see culler.listing)
    # Re-read each due server right before its stop when the listing took longer than this share of the
    # shortest idle limit in force: data that old may no longer be true.
    recheck_fraction: float = 0.01


class Culler:
    """Runs cycles against one hub. The ledger holds every due server's stop decision until it ends;
    the look, the settler, the stopper and user deletion each do their part of it."""

    def __init__(
        self,
        hub: HubClient,
        options: CycleOptions,
        plugins: Mapping[str, PluginFn] | None = None,
        clock: Callable[[], datetime] = utcnow,
        probes: Mapping[str, Probe] | None = None,
        activity: ProxyActivity | None = None,
        events: Bus | None = None,
        keeps: KeepView = NO_KEEPS,
    ) -> None:
        self.hub = hub
        self.keeps = keeps  # users' keeps: an input to every decision, the re-check before a stop included
        self.options = options
        self.plugins = dict(plugins or {})
        self.clock = clock
        # metrics, warnings, stop history and the page observe the engine
        self.events = events if events is not None else Bus()
        self.ledger = Ledger(self.events.publish)
        self.look = Look(hub, activity)
        stops = StopOptions(options.dry_run, options.follow_up_timeout, options.follow_up_interval)
        self.stopper = Stopper(hub, self.ledger, stops, confirm=self._still_due)
        self.stopping = self.stopper.stopping  # set at shutdown: no new stop is sent after it
        self.settler = Settler(
            probes or {},
            self.stopper.stop,
            confirm=self._still_due,
            probe_timeout=options.probe_timeout,
            ledger=self.ledger,
            publish=self.events.publish,
        )
        self.deleter = UserDeleter(hub, self.stopping, clock, options.dry_run, options.max_stops)
        self._reported: set[tuple[str, str]] = set()  # doubts already logged (logged again once they clear)
        self._policy: Policy | None = None  # the latest cycle's, for confirming stops

    @property
    def activity(self) -> ProxyActivity | None:
        return self.look.activity

    async def run(self, policy: Policy) -> CycleReport:
        began, cpu_began = time.monotonic(), time.process_time()
        report = await self._run(policy)
        report.duration = time.monotonic() - began
        report.cpu_seconds = time.process_time() - cpu_began
        if report.ok:
            self._summarise(report)
        self.events.publish(CycleDecided(report))
        return report

    async def _run(self, policy: Policy) -> CycleReport:
        report = CycleReport(started=self.clock())
        self._policy = policy
        try:
            listing = await self.look.everything(self._listing_cap(), with_users=policy.users is not None)
        except SourceError as error:
            what = "reading the proxy's activity" if isinstance(error, ProxyActivityError) else "listing users"
            report.error = f"{what} failed, no stops this cycle: {error}"
            report.listing_failure = error.reason if isinstance(error, HubListingError) else "error"
            event(log, logging.ERROR, "cycle failed", error=report.error)
            return report
        self._note_listing(report, listing)
        report.decisions = listing.decide(policy, self.plugins, self.clock, self.keeps)
        self._log_doubts(report.decisions)
        await self._stop_due(report, self._needs_recheck(policy, report.listing_seconds))
        report.settling = frozenset(record.key for record in self.ledger.settling())
        if policy.users is not None and not self.stopping.is_set():
            await self.deleter.run(policy, report, listing.users, self._listing_cap())
        return report

    def _note_listing(self, report: CycleReport, listing: Listing) -> None:
        report.listing_seconds = listing.seconds
        report.skipped_users = len(listing.problems)
        report.duplicates = listing.duplicates
        for problem in listing.problems:
            event(log, logging.WARNING, "user skipped", error=problem, action="keeping its servers")
        if listing.duplicates:
            event(log, logging.WARNING, "servers listed twice; judged once", count=listing.duplicates)

    def _needs_recheck(self, policy: Policy, listing_seconds: float) -> bool:
        shortest = policy.shortest_idle()
        return shortest is not None and listing_seconds > self.options.recheck_fraction * shortest

    def _listing_cap(self) -> float:
        return self.options.listing_deadline or self.options.interval

    def _log_doubts(self, decisions: list[Decision]) -> None:
        current = {(d.server.key, d.error) for d in decisions if d.error}
        for key, error in sorted(current - self._reported):
            event(log, logging.WARNING, "keeping server", server=key, error=error)
        self._reported = current

    async def _stop_due(self, report: CycleReport, recheck: bool = False) -> None:
        self.settler.reconcile(report.decisions)
        due = [d for d in report.decisions if d.action is Action.STOP and not self.ledger.busy(d.server.key)]
        ready = sum(1 for d in report.decisions if d.action is not Action.SKIP)
        settling = len(self.ledger.settling())
        report.guard = apply_guard(due, ready, self.options.max_stops, self.options.max_stop_fraction, settling)
        if report.guard.tripped:
            event(
                log,
                logging.WARNING,
                "MASS-STOP GUARD: holding stops",
                due=len(due),
                limit=report.guard.limit,
                held=len(report.guard.held),
                settling=settling,
                ready=ready,
            )
        for decision in report.guard.held:
            self.ledger.move(self.ledger.admit(decision), Phase.HELD)
            report.results[decision.server.key] = Phase.HELD
        for decision in report.guard.allowed:
            if decision.settle is not None:
                self.settler.admit(decision)
                report.results[decision.server.key] = Phase.SETTLING
        direct = [self.ledger.admit(d) for d in report.guard.allowed if d.settle is None]
        report.stops_began = self.clock()
        if recheck and direct:
            event(
                log,
                logging.INFO,
                "listing was slow; re-reading each due server before its stop",
                listing=f"{report.listing_seconds:.1f}s",
                due=len(direct),
            )
        results = await asyncio.gather(*(self.stopper.stop(record, recheck=recheck) for record in direct))
        for record, result in zip(direct, results, strict=True):
            report.results[record.key] = result

    async def _still_due(self, decision: Decision) -> bool | None:
        """Fresh look at one server right before its stop (see ``ConfirmFn``): True when it is still due
        under the policy of the latest cycle by the hub's (and the proxy's) current data, judged as of that
        answer; False when it is not (used again, a policy edit) or gone; None when the hub cannot say.
        Activity that leaves it due (older than the limit, or under max age) does not hold the stop."""
        before = decision.server
        try:
            found = await self.look.user(before.user, before.name)
        except (SourceError, SnapshotError) as error:
            event(log, logging.WARNING, "cannot confirm a server is still idle", server=before.key, error=str(error))
            return None
        if not found:
            return False
        if self._policy is None:
            return None
        [fresh] = decisions_for(found[:1], self._policy, self.plugins, self.clock, self.keeps)
        if fresh.error:
            return None
        return fresh.action is Action.STOP

    async def follow_ups_done(self) -> dict[str, Phase]:
        """Wait for the stops still being followed up (``--once``, shutdown and tests)."""
        return await self.stopper.follow_ups_done()

    def _summarise(self, report: CycleReport) -> None:
        actions = Counter(d.action.value for d in report.decisions)
        results = report.counts()
        event(
            log,
            logging.INFO,
            "cycle done",
            servers=len(report.decisions),
            **{k: actions[k] for k in Action},
            **{k.replace("-", "_"): v for k, v in sorted(results.items())},
            users_deleted=len(report.users_deleted),
            dry_run=self.options.dry_run or None,
            seconds=f"{report.duration:.3f}",
            cpu=f"{report.cpu_seconds:.3f}",
        )
