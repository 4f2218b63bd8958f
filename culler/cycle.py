"""One cull cycle: list the hub, decide per server, guard, stop concurrently, report."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from culler.clock import Reading
from culler.decide import Action, Decision, PluginFn, UserDecision, evaluate, evaluate_user
from culler.durations import format_duration
from culler.events import Bus, CycleDecided, StopEnded
from culler.guard import GuardResult, apply_guard
from culler.hub import HubClient, HubError, HubInterrupted, HubListingError, StopOutcome
from culler.logs import event
from culler.policy import Policy
from culler.probes import Probe
from culler.proxy_activity import ProxyActivity, ProxyActivityError
from culler.settler import Settler
from culler.snapshot import (
    ServerSnapshot,
    SnapshotError,
    UserSnapshot,
    servers_of,
    user_of,
    with_route_activity,
)
from culler.timeutil import utcnow

log = logging.getLogger("culler.cycle")
_EPOCH = datetime.min.replace(tzinfo=UTC)  # "no activity known": older than any
# How far the hub's clock may trail ours when we tell our own stop's touch of last_activity from real use.
CLOCK_SLACK = timedelta(seconds=2)


class Result(StrEnum):
    """What became of a server the policy said to stop."""

    STOPPED = "stopped"
    SETTLING = "settling"  # waiting for the user's home to be quiet (settle probes)
    STOPPING = "stopping"  # the hub answered 202: followed up in the background, outside the cycle
    SLOW = "slow-stopping"  # the hub still reports it stopping after the follow-up deadline
    GONE = "gone"
    FAILED = "failed"
    WOULD_STOP = "would-stop"  # dry run
    HELD = "held"  # over the mass-stop cap: left for a later cycle
    INTERRUPTED = "interrupted"  # shutdown began before the stop was sent
    RECHECKED = "kept-on-recheck"  # re-read right before the stop: used again, gone, or the hub could not say


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


@dataclass
class CycleReport:
    started: datetime
    decisions: list[Decision] = field(default_factory=list)
    results: dict[str, Result] = field(default_factory=dict)
    guard: GuardResult | None = None
    users_deleted: list[str] = field(default_factory=list)
    error: str | None = None
    skipped_users: int = 0
    duration: float = 0.0  # seconds, by the monotonic clock
    cpu_seconds: float = 0.0  # this process's CPU time while the cycle ran (other tasks included)
    stops_began: datetime | None = None  # when this cycle sent its first stop
    listing_seconds: float = 0.0  # how long listing the hub took, first request to last answer
    listing_failure: str | None = None  # the bound a listing broke (a culler.listing reason), or "error"
    duplicates: int = 0  # servers listed more than once (offset paging while users come and go)

    @property
    def ok(self) -> bool:
        return self.error is None

    def counts(self) -> Counter[str]:
        return Counter(self.results.values())


def snapshots(users: list[object], reading: Reading | None = None) -> tuple[list[ServerSnapshot], list[str]]:
    """Servers of every well-formed user model, and one problem line per model that was not."""
    servers: list[ServerSnapshot] = []
    problems: list[str] = []
    for model in users:
        try:
            servers.extend(servers_of(model, reading))
        except SnapshotError as error:
            problems.append(str(error))
    return servers, problems


def _users_with_every_server(report: CycleReport, result: Result) -> set[str]:
    """Users all of whose listed servers came to ``result`` this cycle."""
    outcome: dict[str, bool] = {}
    for decision in report.decisions:
        user = decision.server.user
        outcome[user] = outcome.get(user, True) and report.results.get(decision.server.key) is result
    return {user for user, every in outcome.items() if every}


def _keeps_more(new: ServerSnapshot, old: ServerSnapshot) -> bool:
    """Of two listings of one server, the one that argues for keeping it: not ready, else newer activity."""

    def weight(s: ServerSnapshot) -> tuple[bool, datetime]:
        return (bool(s.pending) or not s.ready, s.activity_time or _EPOCH)

    return weight(new) > weight(old)


@dataclass
class Listing:
    servers: dict[str, ServerSnapshot] = field(default_factory=dict)  # by key: a server listed twice counts once
    problems: list[str] = field(default_factory=list)  # one line per malformed user model
    users: dict[str, UserSnapshot] = field(default_factory=dict)  # as listed, before any stop
    duplicates: int = 0

    def add(self, servers: list[ServerSnapshot]) -> None:
        for server in servers:
            old = self.servers.get(server.key)
            if old is not None:
                self.duplicates += 1
                if not _keeps_more(server, old):
                    continue
            self.servers[server.key] = server


def _users(models: list[object], reading: Reading | None, into: dict[str, UserSnapshot]) -> list[str]:
    """Add the well-formed users; a user listed twice keeps its newest activity (towards keeping it).
    Returns one problem line per malformed model."""
    problems = []
    for model in models:
        try:
            user = user_of(model, reading)
        except SnapshotError as error:
            problems.append(str(error))
            continue
        old = into.get(user.name)
        if old is None or _since(user) > _since(old):
            into[user.name] = user
    return problems


def _since(user: UserSnapshot) -> datetime:
    return user.last_activity or user.created or _EPOCH


def _judged_before_our_stop(current: UserSnapshot, listed: UserSnapshot, stops_began: datetime) -> UserSnapshot:
    """The hub sets a user's last_activity when a server stops: when that can be our stop, judge the listed one.

    Activity older than our stops is real and kept. A user listed without activity is judged on that (so on
    when the account was created), as before the stop.
    """
    if current.last_activity is None:
        return current
    if current.last_activity < stops_began - CLOCK_SLACK:
        return current
    return replace(current, last_activity=listed.last_activity)


class Culler:
    """Runs cycles against one hub. Holds only what must outlive a cycle: errors already logged."""

    def __init__(
        self,
        hub: HubClient,
        options: CycleOptions,
        plugins: Mapping[str, PluginFn] | None = None,
        clock: Callable[[], datetime] = utcnow,
        probes: Mapping[str, Probe] | None = None,
        activity: ProxyActivity | None = None,
    ) -> None:
        self.hub = hub
        self.options = options
        self.plugins = dict(plugins or {})
        self.clock = clock
        self.stopping = asyncio.Event()  # set at shutdown: no new stop is sent after it
        self._reported: set[tuple[str, str]] = set()
        self._follow_ups: dict[str, asyncio.Task[Result]] = {}
        self.settler = Settler(probes or {}, self._stop, confirm=self._still_due, probe_timeout=options.probe_timeout)
        self.activity = activity  # None: the hub's last_activity; else the proxy's route activity
        self._policy: Policy | None = None  # the latest cycle's, for confirming settled stops
        self.events = Bus()  # metrics, warnings, stop history and the page observe cycles and stops

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
            listing = await self._list_ready(with_users=policy.users is not None, report=report)
            routes = await self.activity.routes() if self.activity is not None else None
        except HubError as error:
            what = "reading the proxy's activity" if isinstance(error, ProxyActivityError) else "listing users"
            report.error = f"{what} failed, no stops this cycle: {error}"
            report.listing_failure = error.reason if isinstance(error, HubListingError) else "error"
            event(log, logging.ERROR, "cycle failed", error=report.error)
            return report
        servers, problems = list(listing.servers.values()), listing.problems
        if routes is not None:
            servers = with_route_activity(servers, routes)
        report.skipped_users = len(problems)
        report.duplicates = listing.duplicates
        for problem in problems:
            event(log, logging.WARNING, "user skipped", error=problem, action="keeping its servers")
        if listing.duplicates:
            event(log, logging.WARNING, "servers listed twice; judged once", count=listing.duplicates)
        report.decisions = [self._evaluate(policy, server) for server in servers]
        self._log_doubts(report.decisions)
        await self._stop_due(report, self._needs_recheck(policy, report.listing_seconds))
        if policy.users is not None and not self.stopping.is_set():
            await self._delete_users(policy, report, listing.users)
        return report

    def _evaluate(self, policy: Policy, server: ServerSnapshot) -> Decision:
        """The decision as of when the source answered with this server's data (see culler.clock)."""
        return evaluate(policy, server, server.observed_at or self.clock(), self.plugins)

    def _needs_recheck(self, policy: Policy, listing_seconds: float) -> bool:
        shortest = policy.shortest_idle()
        return shortest is not None and listing_seconds > self.options.recheck_fraction * shortest

    async def _list_ready(self, with_users: bool, report: CycleReport) -> Listing:
        """The ready servers, page by page, keeping only snapshots (a user model is several times bigger)."""
        listing = Listing()
        began = time.monotonic()
        async for page in self.hub.user_pages("ready", self._listing_cap()):
            servers, problems = snapshots(page.users, page.reading)
            listing.add(servers)
            listing.problems.extend(problems)
            if with_users:
                _users(page.users, page.reading, listing.users)
        report.listing_seconds = time.monotonic() - began
        return listing

    def _listing_cap(self) -> float:
        return self.options.listing_deadline or self.options.interval

    def _log_doubts(self, decisions: list[Decision]) -> None:
        current = {(d.server.key, d.error) for d in decisions if d.error}
        for key, error in sorted(current - self._reported):
            event(log, logging.WARNING, "keeping server", server=key, error=error)
        self._reported = current

    async def _stop_due(self, report: CycleReport, recheck: bool = False) -> None:
        self.settler.reconcile(report.decisions)
        busy = self._follow_ups.keys() | self.settler.settling.keys()
        due = [d for d in report.decisions if d.action is Action.STOP and d.server.key not in busy]
        ready = sum(1 for d in report.decisions if d.action is not Action.SKIP)
        settling = len(self.settler.settling)
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
            report.results[decision.server.key] = Result.HELD
        for decision in report.guard.allowed:
            if decision.settle is not None:
                self.settler.admit(decision)
                report.results[decision.server.key] = Result.SETTLING
        direct = [d for d in report.guard.allowed if d.settle is None]
        report.stops_began = self.clock()
        if recheck and direct:
            event(
                log,
                logging.INFO,
                "listing was slow; re-reading each due server before its stop",
                listing=f"{report.listing_seconds:.1f}s",
                due=len(direct),
            )
        results = await asyncio.gather(*(self._stop(decision, recheck=recheck) for decision in direct))
        for decision, result in zip(direct, results, strict=True):
            report.results[decision.server.key] = result

    async def _stop(self, decision: Decision, settle: str | None = None, recheck: bool = False) -> Result:
        """Stop one server now; ``settle`` says whether a settle step vouched for its home; ``recheck``
        re-reads it from the hub first (its listing is old) and keeps it unless it is still due."""
        if recheck and not self.stopping.is_set() and await self._still_due(decision) is not True:
            fields = {"user": decision.server.user, "server": decision.server.name, "rule": decision.rule_id}
            event(log, logging.INFO, "not stopping: re-read before the stop, it is not (surely) idle", **fields)
            self.events.publish(StopEnded(decision, Result.RECHECKED, settle))
            return Result.RECHECKED
        result = await self._stop_once(decision, settle)
        if result is not Result.INTERRUPTED:
            self.events.publish(StopEnded(decision, result, settle))
        return result

    async def _stop_once(self, decision: Decision, settle: str | None) -> Result:
        server = decision.server
        fields = {
            "user": server.user,
            "server": server.name,
            "idle": format_duration(decision.idle_seconds),
            "rule": decision.rule_id,
            "reason": decision.reason,
            "settle": settle,
        }
        if self.options.dry_run:
            event(log, logging.INFO, "would stop (dry run)", **fields)
            return Result.WOULD_STOP
        if self.stopping.is_set():
            event(log, logging.INFO, "not stopping: shutting down", **fields)
            return Result.INTERRUPTED
        try:
            outcome = await self.hub.stop_server(server.user, server.name, remove=decision.remove, abort=self.stopping)
        except HubInterrupted:
            # Queued behind the concurrency limit (or waiting to retry) when shutdown began.
            event(log, logging.INFO, "not stopping: shutting down", **fields)
            return Result.INTERRUPTED
        except HubError as error:
            event(log, logging.ERROR, "stop failed", error=str(error), **fields)
            return Result.FAILED
        except Exception as error:  # one server's surprise must not lose the whole cycle's report
            event(log, logging.ERROR, "stop failed", error=f"{type(error).__name__}: {error}", **fields)
            return Result.FAILED
        except asyncio.CancelledError:
            event(log, logging.WARNING, "stop interrupted by shutdown; the hub may still stop it", **fields)
            raise
        if outcome is StopOutcome.STOPPING:
            event(log, logging.INFO, "server stopping (hub answered 202); following up", **fields)
            self._follow_ups[server.key] = asyncio.create_task(self._follow_through(decision, fields))
            return Result.STOPPING
        result = Result.STOPPED if outcome is StopOutcome.STOPPED else Result.GONE
        event(log, logging.INFO, f"server {result}", **fields)
        return result

    async def _follow_through(self, decision: Decision, fields: dict[str, str | None]) -> Result:
        """Report a stop the hub answered 202 to as stopped only once the hub says so."""
        server = decision.server
        try:
            outcome = await self._follow_up(server)
            result = Result.STOPPED if outcome is StopOutcome.STOPPED else Result.SLOW
            event(log, logging.INFO if result is Result.STOPPED else logging.WARNING, f"server {result}", **fields)
            self.events.publish(StopEnded(decision, result, fields.get("settle")))
            return result
        finally:
            self._follow_ups.pop(server.key, None)

    async def _still_due(self, decision: Decision) -> bool | None:
        """Fresh look at one server right before its stop (see ``ConfirmFn``): True when it is still due
        under the policy of the latest cycle by the hub's (and the proxy's) current data, judged as of that
        answer; False when it is not (used again, a policy edit) or gone; None when the hub cannot say.
        Activity that leaves it due (older than the limit, or under max age) does not hold the stop."""
        before = decision.server
        try:
            model, reading = await self.hub.read_user(before.user)
            routes = await self.activity.routes() if self.activity is not None else None
            found = [s for s in servers_of(model, reading) if s.name == before.name] if model is not None else []
        except (HubError, SnapshotError) as error:
            event(log, logging.WARNING, "cannot confirm a server is still idle", server=before.key, error=str(error))
            return None
        if not found or self._policy is None:
            return False if not found else None
        now = with_route_activity(found, routes)[0] if routes is not None else found[0]
        fresh = self._evaluate(self._policy, now)
        if fresh.error:
            return None
        return fresh.action is Action.STOP

    async def close(self) -> None:
        """Close every HTTP session: the hub's, the proxy's, the probes'."""
        await self.hub.close()
        if self.activity is not None:
            await self.activity.close()
        for probe in self.settler.probes.values():
            close = getattr(probe, "close", None)
            if close is not None:
                await close()

    async def follow_ups_done(self) -> dict[str, Result]:
        """Wait for the stops still being followed up (``--once``, shutdown and tests)."""
        tasks = dict(self._follow_ups)
        results = await asyncio.gather(*tasks.values())
        return dict(zip(tasks, results, strict=True))

    async def _follow_up(self, server: ServerSnapshot) -> StopOutcome:
        """A 202 means the hub is still stopping: poll until it says stopped, or give up waiting."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.follow_up_timeout
        while loop.time() < deadline and not self.stopping.is_set():
            await asyncio.sleep(min(self.options.follow_up_interval, max(0.0, deadline - loop.time())))
            try:
                if await self.hub.is_stopped(server.user, server.name):
                    return StopOutcome.STOPPED
            except HubError as error:
                event(log, logging.WARNING, "stop follow-up failed", server=server.key, error=str(error))
        return StopOutcome.STOPPING

    async def _delete_users(self, policy: Policy, report: CycleReport, listed: dict[str, UserSnapshot]) -> None:
        users: dict[str, UserSnapshot] = {}
        try:
            async for page in self.hub.user_pages("inactive", self._listing_cap()):
                for problem in _users(page.users, page.reading, users):
                    event(log, logging.WARNING, "user skipped", error=problem)
        except HubError as error:
            event(log, logging.ERROR, "listing inactive users failed, no deletions this cycle", error=str(error))
            return
        stopped = _users_with_every_server(report, Result.STOPPED)
        for name, user in users.items():
            if name in stopped and name in listed and report.stops_began is not None:
                users[name] = _judged_before_our_stop(user, listed[name], report.stops_began)
        if self.options.dry_run:  # show the deletions acting would make once these servers are stopped
            for name in _users_with_every_server(report, Result.WOULD_STOP) & listed.keys():
                users.setdefault(name, replace(listed[name], has_servers=False))
        candidates = [evaluate_user(policy, user, user.observed_at or self.clock()) for user in users.values()]
        to_delete = [c for c in candidates if c.delete][: self.options.max_stops or None]
        for decision in to_delete:
            if self.stopping.is_set():
                return
            await self._delete_user(decision, report)

    async def _delete_user(self, decision: UserDecision, report: CycleReport) -> None:
        name = decision.user.name
        if self.options.dry_run:
            event(log, logging.INFO, "would delete user (dry run)", user=name, reason=decision.reason)
            return
        try:
            await self.hub.delete_user(name, abort=self.stopping)
        except HubInterrupted:
            return
        except HubError as error:
            event(log, logging.ERROR, "user deletion failed", user=name, error=str(error))
            return
        report.users_deleted.append(name)
        event(log, logging.INFO, "user deleted", user=name, reason=decision.reason)

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
