"""One cull cycle: list the hub, decide per server, guard, stop concurrently, report."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Protocol

from culler.decide import Action, Decision, PluginFn, UserDecision, evaluate, evaluate_user
from culler.durations import format_duration
from culler.guard import GuardResult, apply_guard
from culler.hub import HubClient, HubError, HubInterrupted, StopOutcome
from culler.logs import event
from culler.policy import Policy
from culler.probes import Probe
from culler.proxy_activity import ProxyActivity, ProxyActivityError
from culler.settler import Settler
from culler.snapshot import ServerSnapshot, SnapshotError, UserSnapshot, servers_of, user_of, with_route_activity
from culler.timeutil import utcnow

log = logging.getLogger("culler.cycle")
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


@dataclass(frozen=True)
class CycleOptions:
    dry_run: bool = False
    max_stops: int = 100
    max_stop_fraction: float = 0.5
    follow_up_timeout: float = 120.0
    follow_up_interval: float = 2.0
    probe_timeout: float = 30.0  # seconds one settle probe may take to answer


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

    @property
    def ok(self) -> bool:
        return self.error is None

    def counts(self) -> Counter[str]:
        return Counter(self.results.values())


class Listener(Protocol):
    """Told about cycles and stop outcomes (metrics, warnings, stop history). Must return quickly: work
    that waits (a webhook) goes to a task of its own. Exceptions are logged, never raised."""

    def cycle_done(self, report: CycleReport) -> None: ...

    def server_stopped(self, decision: Decision, result: Result, settle: str | None) -> None: ...


def snapshots(users: list[object]) -> tuple[list[ServerSnapshot], list[str]]:
    """Servers of every well-formed user model, and one problem line per model that was not."""
    servers: list[ServerSnapshot] = []
    problems: list[str] = []
    for model in users:
        try:
            servers.extend(servers_of(model))
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


@dataclass
class Listing:
    servers: list[ServerSnapshot] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # one line per malformed user model
    users: dict[str, UserSnapshot] = field(default_factory=dict)  # as listed, before any stop


def _users(models: list[object]) -> dict[str, UserSnapshot]:
    users: dict[str, UserSnapshot] = {}
    for model in models:
        with contextlib.suppress(SnapshotError):
            user = user_of(model)
            users[user.name] = user
    return users


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
        self.listeners: list[Listener] = []

    async def run(self, policy: Policy) -> CycleReport:
        began, cpu_began = time.monotonic(), time.process_time()
        report = await self._run(policy)
        report.duration = time.monotonic() - began
        report.cpu_seconds = time.process_time() - cpu_began
        if report.ok:
            self._summarise(report)
        self._notify("cycle_done", report)
        return report

    def _notify(self, what: str, *args: object) -> None:
        for listener in self.listeners:
            try:
                getattr(listener, what)(*args)
            except Exception:  # an observer's bug must not cost a stop or a cycle
                log.exception("listener %s.%s failed", type(listener).__name__, what)

    async def _run(self, policy: Policy) -> CycleReport:
        report = CycleReport(started=self.clock())
        self._policy = policy
        try:
            listing = await self._list_ready(with_users=policy.users is not None)
            routes = await self.activity.routes() if self.activity is not None else None
        except HubError as error:
            what = "reading the proxy's activity" if isinstance(error, ProxyActivityError) else "listing users"
            report.error = f"{what} failed, no stops this cycle: {error}"
            event(log, logging.ERROR, "cycle failed", error=report.error)
            return report
        servers, problems = listing.servers, listing.problems
        if routes is not None:
            servers = with_route_activity(servers, routes)
        report.skipped_users = len(problems)
        for problem in problems:
            event(log, logging.WARNING, "user skipped", error=problem, action="keeping its servers")
        now = self.clock()
        report.decisions = [evaluate(policy, server, now, self.plugins) for server in servers]
        self._log_doubts(report.decisions)
        await self._stop_due(report)
        if policy.users is not None and not self.stopping.is_set():
            await self._delete_users(policy, report, listing.users)
        return report

    async def _list_ready(self, with_users: bool) -> Listing:
        """The ready servers, page by page, keeping only snapshots (a user model is several times bigger)."""
        listing = Listing()
        async for page in self.hub.user_pages("ready"):
            servers, problems = snapshots(page)
            listing.servers.extend(servers)
            listing.problems.extend(problems)
            if with_users:
                listing.users.update(_users(page))
        return listing

    def _log_doubts(self, decisions: list[Decision]) -> None:
        current = {(d.server.key, d.error) for d in decisions if d.error}
        for key, error in sorted(current - self._reported):
            event(log, logging.WARNING, "keeping server", server=key, error=error)
        self._reported = current

    async def _stop_due(self, report: CycleReport) -> None:
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
        results = await asyncio.gather(*(self._stop(decision) for decision in direct))
        for decision, result in zip(direct, results, strict=True):
            report.results[decision.server.key] = result

    async def _stop(self, decision: Decision, settle: str | None = None) -> Result:
        """Stop one server now; ``settle`` says whether a settle step vouched for its home."""
        result = await self._stop_once(decision, settle)
        if result is not Result.INTERRUPTED:
            self._notify("server_stopped", decision, result, settle)
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
            self._notify("server_stopped", decision, result, fields.get("settle"))
            return result
        finally:
            self._follow_ups.pop(server.key, None)

    async def _still_due(self, decision: Decision) -> bool | None:
        """Fresh look at one settled server right before its stop (see ``ConfirmFn``): still due under
        the policy of the latest cycle, by the hub's (and the proxy's) current data?"""
        before = decision.server
        try:
            model = await self.hub.get_user(before.user)
            routes = await self.activity.routes() if self.activity is not None else None
            found = [s for s in servers_of(model) if s.name == before.name] if model is not None else []
        except (HubError, SnapshotError) as error:
            event(
                log,
                logging.WARNING,
                "cannot confirm a settled server is still idle",
                server=before.key,
                error=str(error),
            )
            return None
        if not found or self._policy is None:
            return False if not found else None
        now = with_route_activity(found, routes)[0] if routes is not None else found[0]
        fresh = evaluate(self._policy, now, self.clock(), self.plugins)
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
        try:
            models = await self.hub.list_users("inactive")
        except HubError as error:
            event(log, logging.ERROR, "listing inactive users failed, no deletions this cycle", error=str(error))
            return
        stopped = _users_with_every_server(report, Result.STOPPED)
        users: dict[str, UserSnapshot] = {}
        for model in models:
            try:
                user = user_of(model)
            except SnapshotError as error:
                event(log, logging.WARNING, "user skipped", error=str(error))
                continue
            if user.name in stopped and user.name in listed and report.stops_began is not None:
                user = _judged_before_our_stop(user, listed[user.name], report.stops_began)
            users[user.name] = user
        if self.options.dry_run:  # show the deletions acting would make once these servers are stopped
            for name in _users_with_every_server(report, Result.WOULD_STOP) & listed.keys():
                users.setdefault(name, replace(listed[name], has_servers=False))
        now = self.clock()
        candidates = [evaluate_user(policy, user, now) for user in users.values()]
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
