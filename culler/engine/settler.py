"""Settling, the moving part: due servers wait here while probes watch their homes.

Once admitted, a server's decision stays fixed: probe traffic cannot cancel it; only new activity
from the activity source (seen by a later cycle, ``reconcile``) or the server going away ends it.
A settle poll, on its own interval, asks every probe of every settling server and stops those whose
homes are quiet (or whose deferral hit the cap, as the policy says). A settling server's record lives in
the ledger (culler.lifecycle: settling -> confirming -> sending ...), this module's memory of it (what the
probes said, their calls in flight) rides on that record. Nothing here outlives the
process: after a restart, settling starts again from scratch, which can delay a stop, never hasten it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from culler.adapters.probes.base import Probe
from culler.core.decide import Action, Decision
from culler.core.events import Event, SettleObserved
from culler.core.lifecycle import Ledger, Phase, Record
from culler.core.settle import Observation, SettleVerdict, judge, unknown
from culler.core.text import isoformat
from culler.engine.stopper import ConfirmFn
from culler.logs import event
from culler.policy.durations import format_duration

log = logging.getLogger("culler.settle")

StopFn = Callable[[Record, str], Awaitable[object]]  # the record (confirming), settle note ("verified"/"unverified")


@dataclass
class Settling:
    """The settler's memory of one settling server, attached to its ledger record."""

    record: Record
    observations: dict[str, Observation] = field(default_factory=dict)
    reason: str = "no observation yet"
    at_cap: bool = False
    errors_logged: set[str] = field(default_factory=set)
    tasks: dict[str, asyncio.Task[Observation]] = field(default_factory=dict)

    @property
    def decision(self) -> Decision:
        return self.record.decision

    @property
    def waited(self) -> float:
        return self.record.waited

    def cancel_tasks(self) -> None:
        """Probe calls still running when settling ends must not write stale per-server state back."""
        for task in self.tasks.values():
            task.cancel()
        self.tasks.clear()

    def describe(self) -> dict[str, object]:
        settle = self.decision.settle
        assert settle is not None
        cap = settle.max_deferral - self.waited
        return {
            "server": self.decision.server.label,
            "rule": self.decision.rule_id,
            "since": isoformat(self.record.since),
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
        ledger: Ledger | None = None,
        publish: Callable[[Event], None] | None = None,
    ) -> None:
        self.probes = dict(probes)
        self._stop = stop
        self._confirm = confirm
        self.probe_timeout = probe_timeout
        self.ledger = ledger if ledger is not None else Ledger(publish)
        self._publish = publish or (lambda event: None)

    @property
    def settling(self) -> dict[str, Settling]:
        """The servers settling (or sending the stop settling allowed), by key: a view of the ledger."""
        return {r.key: r.progress for r in self.ledger.settling() if isinstance(r.progress, Settling)}

    def admit(self, decision: Decision) -> Record:
        settle = decision.settle
        assert settle is not None
        server = decision.server
        record = self.ledger.admit(decision)
        record.progress = Settling(record)
        self.ledger.move(record, Phase.SETTLING)
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
        return record

    def reconcile(self, decisions: list[Decision]) -> None:
        """After a cycle: end settling for servers no longer due (new activity, a policy edit) or running."""
        current = {decision.server.key: decision for decision in decisions}
        for record in self.ledger.in_phase(Phase.SETTLING, Phase.CONFIRMING):
            if not isinstance(record.progress, Settling):
                continue  # a direct stop being re-checked: its result is the stop's business
            now = current.get(record.key)
            before = record.decision.server.activity_time
            if now is None or now.action is Action.SKIP:
                self._release(record, "server no longer running; settling ends")
            elif now.action is Action.STOP:
                continue  # still due (activity that does not undo that, e.g. under max age, changes nothing)
            elif now.server.activity_time and before and now.server.activity_time > before:
                self._release(record, "new activity; settling cancelled, the server stays")
            else:  # e.g. a policy edit exempted it
                self._release(record, f"no longer due ({now.reason}); settling ends, no stop")

    async def poll(self) -> None:
        """One settle poll over every settling server, concurrently."""
        settlings = [r.progress for r in self.ledger.in_phase(Phase.SETTLING) if isinstance(r.progress, Settling)]
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

    def _current(self, settling: Settling, phase: Phase) -> bool:
        """Still this record's settling, in ``phase`` (not reconciled away or admitted anew meanwhile)."""
        return self.ledger.holds(settling.record) and settling.record.phase is phase

    async def _poll_one(self, settling: Settling) -> None:
        settle = settling.decision.settle
        assert settle is not None
        names = list(settle.probes)
        observations = await asyncio.gather(*(self._observe(settling, name) for name in names))
        if not self._current(settling, Phase.SETTLING):
            return  # reconciled away (or admitted anew) while the probes ran
        settling.observations = dict(zip(names, observations, strict=True))
        self._log_errors(settling)
        verdict, settling.reason = judge(settling.observations, settle, settling.waited)
        self._publish(SettleObserved(settling.decision, dict(settling.observations), verdict))
        if verdict is SettleVerdict.WAIT:
            return
        if verdict is SettleVerdict.HOLD:
            if not settling.at_cap:
                settling.at_cap = True
                self._event(logging.WARNING, "settle cap reached; keeping the server", settling)
            return
        if not await self._confirmed(settling):
            return
        settling.cancel_tasks()
        self._forget(settling.record.key)
        unverified = verdict is SettleVerdict.STOP_UNVERIFIED
        if unverified:
            self._event(logging.WARNING, "settle cap reached; stopping unverified", settling)
        else:
            self._event(logging.INFO, "home settled; stopping", settling)
        # The record stays in the ledger until the stop ends, so that a cycle running meanwhile finds
        # the server busy and does not admit it again.
        try:
            await self._stop(settling.record, "unverified" if unverified else "verified")
        finally:
            self.ledger.fail_unfinished(settling.record)

    async def _confirmed(self, settling: Settling) -> bool:
        record = settling.record
        self.ledger.move(record, Phase.CONFIRMING)
        if self._confirm is None:
            return True
        still_due = await self._confirm(settling.decision)
        if not self._current(settling, Phase.CONFIRMING):
            return False
        if still_due is False:
            self._release(record, "new activity or no longer running; settling ends, no stop")
            return False
        if still_due is None:
            self.ledger.move(record, Phase.SETTLING)
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
                window = settling.decision.settle.window if settling.decision.settle is not None else 0.0
                task = settling.tasks[name] = asyncio.ensure_future(probe.observe(settling.decision.server, window))
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

    def _release(self, record: Record, why: str) -> None:
        settling = record.progress
        self.ledger.move(record, Phase.RELEASED)
        if isinstance(settling, Settling):
            settling.cancel_tasks()
            self._event(logging.INFO, why, settling)
        self._forget(record.key)

    def _forget(self, key: str) -> None:
        for name, probe in self.probes.items():
            try:
                probe.forget(key)
            except Exception as error:
                event(log, logging.WARNING, "settle probe forget failed", probe=name, server=key, error=repr(error))

    def describe(self) -> list[dict[str, object]]:
        return [description for _, description in sorted(self.describe_by_key().items())]

    def describe_by_key(self) -> dict[str, dict[str, object]]:
        return {key: settling.describe() for key, settling in self.settling.items()}
