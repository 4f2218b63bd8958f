"""Settling, the moving part: due servers wait here while probes watch their homes.

Once admitted, a server's decision stays fixed: probe traffic cannot cancel it; only new activity
from the activity source (seen by a later cycle, ``reconcile``) or the server going away ends it.
A settle poll, on its own interval, asks every probe of every settling server and stops those whose
homes are quiet (or whose deferral hit the cap, as the policy says). Nothing here outlives the
process: after a restart, settling starts again from scratch, which can delay a stop, never hasten it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from culler.decide import Action, Decision
from culler.durations import format_duration
from culler.logs import event
from culler.probes import Probe
from culler.settle import Observation, Seen, Verdict, judge, unknown
from culler.timeutil import isoformat, utcnow

log = logging.getLogger("culler.settle")

StopFn = Callable[[Decision, str], Awaitable[object]]  # decision, settle note ("verified"/"unverified")
# Right before a settled stop: is the server still due by fresh hub data? True yes, False no (new
# activity, or gone), None cannot tell (then wait: a hub outage must not let stale decisions through).
ConfirmFn = Callable[[Decision], Awaitable[bool | None]]


@dataclass
class Settling:
    decision: Decision
    since: datetime
    started: float  # monotonic
    observations: dict[str, Observation] = field(default_factory=dict)
    reason: str = "no observation yet"
    at_cap: bool = False
    stopping: bool = False  # the stop is being sent: still "busy" for the cycle, no longer polled
    errors_logged: set[str] = field(default_factory=set)
    tasks: dict[str, asyncio.Task[Observation]] = field(default_factory=dict)

    def cancel_tasks(self) -> None:
        """Probe calls still running when settling ends must not write stale per-server state back."""
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    @property
    def waited(self) -> float:
        return time.monotonic() - self.started

    def describe(self) -> dict[str, object]:
        settle = self.decision.settle
        assert settle is not None
        cap = settle.max_deferral - self.waited
        return {
            "server": self.decision.server.label,
            "rule": self.decision.rule_id,
            "since": isoformat(self.since),
            "waited": format_duration(self.waited),
            "window": format_duration(settle.window),
            "cap_in": "reached" if cap <= 0 else format_duration(cap),
            "at_cap": settle.at_cap,
            "probes": {name: str(observation) for name, observation in sorted(self.observations.items())},
            "state": self.reason,
        }


class Settler:
    def __init__(
        self,
        probes: Mapping[str, Probe],
        stop: StopFn,
        probe_timeout: float = 30.0,
        confirm: ConfirmFn | None = None,
    ) -> None:
        self.probes = dict(probes)
        self._stop = stop
        self._confirm = confirm
        self.probe_timeout = probe_timeout
        self.settling: dict[str, Settling] = {}
        self.stopped_unverified = 0
        # For metrics: (why, probe) of every deferral a poll made; probe -> failed observations.
        self.deferrals: Counter[tuple[str, str]] = Counter()
        self.probe_errors: Counter[str] = Counter()

    def admit(self, decision: Decision) -> None:
        settle = decision.settle
        assert settle is not None
        server = decision.server
        self.settling[server.key] = Settling(decision, utcnow(), time.monotonic())
        event(
            log,
            logging.INFO,
            "settling before stop",
            user=server.user,
            server=server.name,
            rule=decision.rule_id,
            probes=",".join(settle.probes),
            window=format_duration(settle.window),
            max_deferral=format_duration(settle.max_deferral),
            reason=decision.reason,
        )

    def reconcile(self, decisions: list[Decision]) -> None:
        """After a cycle: end settling for servers no longer due (new activity, a policy edit) or running."""
        current = {decision.server.key: decision for decision in decisions}
        for key, settling in list(self.settling.items()):
            if settling.stopping:
                continue  # the stop is on its way: its result is the stop's business
            now = current.get(key)
            before = settling.decision.server.activity_time
            if now is None or now.action is Action.SKIP:
                self._drop(key, "server no longer running; settling ends")
            elif now.action is Action.STOP:
                continue  # still due (activity that does not undo that, e.g. under max age, changes nothing)
            elif now.server.activity_time and before and now.server.activity_time > before:
                self._drop(key, "new activity; settling cancelled, the server stays")
            else:  # e.g. a policy edit exempted it
                self._drop(key, f"no longer due ({now.reason}); settling ends, no stop")

    async def poll(self) -> None:
        """One settle poll over every settling server, concurrently."""
        settlings = [s for s in self.settling.values() if not s.stopping]
        results = await asyncio.gather(*(self._poll_one(s) for s in settlings), return_exceptions=True)
        for settling, result in zip(settlings, results, strict=True):
            if isinstance(result, Exception):  # one server's surprise must not end the others' polls
                server = settling.decision.server
                event(
                    log,
                    logging.ERROR,
                    "settle poll failed",
                    server=server.key,
                    error=f"{type(result).__name__}: {result}",
                )
            elif isinstance(result, BaseException):
                raise result

    async def _poll_one(self, settling: Settling) -> None:
        settle = settling.decision.settle
        assert settle is not None
        names = list(settle.probes)
        observations = await asyncio.gather(*(self._observe(settling, name) for name in names))
        key = settling.decision.server.key
        if self.settling.get(key) is not settling or settling.stopping:
            return  # reconciled away (or admitted anew, or already stopping) while the probes ran
        settling.observations = dict(zip(names, observations, strict=True))
        self._log_errors(settling)
        verdict, settling.reason = judge(settling.observations, settle, settling.waited)
        self._count(settling.observations, settle.window, verdict)
        if verdict is Verdict.WAIT:
            return
        if verdict is Verdict.HOLD:
            if not settling.at_cap:
                settling.at_cap = True
                self._event(logging.WARNING, "settle cap reached; keeping the server", settling)
            return
        if not await self._confirmed(settling):
            return
        settling.stopping = True
        settling.cancel_tasks()
        self._forget(key)
        unverified = verdict is Verdict.STOP_UNVERIFIED
        if unverified:
            self.stopped_unverified += 1
            self._event(logging.WARNING, "settle cap reached; stopping unverified", settling)
        else:
            self._event(logging.INFO, "home settled; stopping", settling)
        try:
            # Kept in ``settling`` until the stop returns, so that a cycle running meanwhile does not
            # find the server due and not busy, and admit it again.
            await self._stop(settling.decision, "unverified" if unverified else "verified")
        finally:
            if self.settling.get(key) is settling:
                del self.settling[key]

    async def _confirmed(self, settling: Settling) -> bool:
        if self._confirm is None:
            return True
        still_due = await self._confirm(settling.decision)
        key = settling.decision.server.key
        if self.settling.get(key) is not settling or settling.stopping:
            return False
        if still_due is False:
            self._drop(key, "new activity or no longer running; settling ends, no stop")
            return False
        if still_due is None:
            settling.reason = f"{settling.reason}; waiting: the hub could not confirm the server is still idle"
            return False
        return True

    async def _observe(self, settling: Settling, name: str) -> Observation:
        """Ask one probe, bounded; an earlier call still running (a slow scan) is not doubled."""
        probe = self.probes.get(name)
        if probe is None:
            return unknown(f"probe {name!r} is not configured", error=True)
        task = settling.tasks.get(name)
        if task is None or task.done():
            if task is not None and not task.cancelled():
                task.exception()  # an answer that came after its timeout: retrieved, not used (stale)
            try:
                task = settling.tasks[name] = asyncio.ensure_future(
                    probe.observe(settling.decision.server, settling.decision.settle.window)
                )
            except Exception as error:  # a probe that fails before it even starts
                return unknown(f"{type(error).__name__}: {str(error)[:200]}", error=True)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.probe_timeout)
        except TimeoutError:
            return unknown(f"no answer within {self.probe_timeout:g}s", error=True)
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if task.cancelled() and (current is None or not current.cancelling()):
                return unknown("settling ended while the probe ran")  # the probe call was cancelled, not us
            raise
        except Exception as error:  # a probe's failure means "cannot tell", never "quiet"
            return unknown(f"{type(error).__name__}: {str(error)[:200]}", error=True)

    def _count(self, observations: Mapping[str, Observation], window: float, verdict: Verdict) -> None:
        for name, observation in observations.items():
            if observation.error:
                self.probe_errors[name] += 1
            if verdict is Verdict.HOLD:
                self.deferrals[("cap", name)] += 1
            elif verdict is Verdict.WAIT and not observation.vouches(window):
                why = "window" if observation.seen is Seen.QUIET else str(observation.seen)  # active, unknown
                self.deferrals[(why, name)] += 1

    def _log_errors(self, settling: Settling) -> None:
        for name, observation in settling.observations.items():
            if observation.error and name not in settling.errors_logged:
                settling.errors_logged.add(name)
                server = settling.decision.server
                event(
                    log,
                    logging.WARNING,
                    "settle probe cannot tell; deferring the stop",
                    user=server.user,
                    server=server.name,
                    probe=name,
                    error=observation.detail,
                )

    def _event(self, level: int, name: str, settling: Settling) -> None:
        server = settling.decision.server
        event(
            log,
            level,
            name,
            user=server.user,
            server=server.name,
            rule=settling.decision.rule_id,
            waited=format_duration(settling.waited),
            state=settling.reason,
        )

    def _drop(self, key: str, why: str) -> None:
        settling = self.settling.pop(key)
        settling.cancel_tasks()
        self._forget(key)
        self._event(logging.INFO, why, settling)

    def _forget(self, key: str) -> None:
        for name, probe in self.probes.items():
            try:
                probe.forget(key)
            except Exception as error:
                event(log, logging.WARNING, "settle probe forget failed", probe=name, server=key, error=repr(error))

    def describe(self) -> list[dict[str, object]]:
        return [self.settling[key].describe() for key in sorted(self.settling)]
