"""Sending stops: one server's stop request, the follow-up of a hub's 202, and the abort at shutdown.

Each stop moves its record in the ledger (culler.lifecycle): from due (or confirming, after settling or a
re-check) through sending to its end; a 202 moves it to stopping, followed in the background until the
hub says stopped or the follow-up deadline passes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from culler.adapters.errors import HubError, HubInterrupted
from culler.adapters.hub import HubClient, StopOutcome
from culler.core.decide import Decision
from culler.core.lifecycle import Ledger, Phase, Record
from culler.core.snapshot import ServerSnapshot
from culler.logs import event
from culler.policy.durations import format_duration

log = logging.getLogger("culler.cycle")

# Right before a stop: is the server still due by fresh hub data? True yes, False no (new activity, or
# gone), None cannot tell (a hub outage must not let stale decisions through).
ConfirmFn = Callable[[Decision], Awaitable[bool | None]]
Fields = dict[str, str | None]


@dataclass(frozen=True)
class StopOptions:
    dry_run: bool = False
    follow_up_timeout: float = 120.0
    follow_up_interval: float = 2.0


class Stopper:
    def __init__(self, hub: HubClient, ledger: Ledger, options: StopOptions, confirm: ConfirmFn | None = None) -> None:
        self.hub = hub
        self.ledger = ledger
        self.options = options
        self.confirm = confirm
        self.stopping = asyncio.Event()  # set at shutdown: no new stop is sent after it
        self._follow_ups: set[asyncio.Task[tuple[str, Phase]]] = set()

    async def stop(self, record: Record, settle_note: str | None = None, recheck: bool = False) -> Phase:
        """Stop one due (or confirming) server now and return the phase that left it in. ``settle_note``
        says whether a settle step vouched for its home; ``recheck`` re-reads it from the hub first (its
        listing is old) and keeps it unless it is still due."""
        if recheck and not self.stopping.is_set() and self.confirm is not None:
            self.ledger.move(record, Phase.CONFIRMING)
            if await self.confirm(record.decision) is not True:
                server = record.decision.server
                fields = {"user": server.user, "server": server.name, "rule": record.decision.rule_id}
                event(log, logging.INFO, "not stopping: re-read before the stop, it is not (surely) idle", **fields)
                self.ledger.move(record, Phase.RECHECKED)
                return Phase.RECHECKED
        if settle_note is not None:
            record.settle_note = settle_note
        try:
            return await self._send(record)
        finally:
            self.ledger.fail_unfinished(record)

    async def _send(self, record: Record) -> Phase:
        decision = record.decision
        fields = _fields(decision, record.settle_note)
        if self.options.dry_run:
            event(log, logging.INFO, "would stop (dry run)", **fields)
            return self._end(record, Phase.WOULD_STOP)
        if self.stopping.is_set():
            event(log, logging.INFO, "not stopping: shutting down", **fields)
            return self._end(record, Phase.INTERRUPTED)
        self.ledger.move(record, Phase.SENDING)
        server = decision.server
        try:
            outcome = await self.hub.stop_server(server.user, server.name, remove=decision.remove, abort=self.stopping)
        except HubInterrupted:
            # Queued behind the concurrency limit (or waiting to retry) when shutdown began.
            event(log, logging.INFO, "not stopping: shutting down", **fields)
            return self._end(record, Phase.INTERRUPTED)
        except HubError as error:
            event(log, logging.ERROR, "stop failed", error=str(error), **fields)
            return self._end(record, Phase.FAILED)
        except Exception as error:  # one server's surprise must not lose the whole cycle's report
            event(log, logging.ERROR, "stop failed", error=f"{type(error).__name__}: {error}", **fields)
            return self._end(record, Phase.FAILED)
        except asyncio.CancelledError:
            event(log, logging.WARNING, "stop interrupted by shutdown; the hub may still stop it", **fields)
            self._end(record, Phase.INTERRUPTED)
            raise
        if outcome is StopOutcome.STOPPING:
            event(log, logging.INFO, "server stopping (hub answered 202); following up", **fields)
            self.ledger.move(record, Phase.STOPPING)
            task = asyncio.create_task(self._follow_through(record, fields))
            self._follow_ups.add(task)
            task.add_done_callback(self._follow_ups.discard)
            return Phase.STOPPING
        result = Phase.STOPPED if outcome is StopOutcome.STOPPED else Phase.GONE
        event(log, logging.INFO, f"server {result}", **fields)
        return self._end(record, result)

    def _end(self, record: Record, phase: Phase) -> Phase:
        self.ledger.move(record, phase)
        return phase

    async def _follow_through(self, record: Record, fields: Fields) -> tuple[str, Phase]:
        """Report a stop the hub answered 202 to as stopped only once the hub says so."""
        outcome = await self._follow_up(record.decision.server)
        result = Phase.STOPPED if outcome is StopOutcome.STOPPED else Phase.SLOW
        event(log, logging.INFO if result is Phase.STOPPED else logging.WARNING, f"server {result}", **fields)
        return record.key, self._end(record, result)

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

    async def follow_ups_done(self) -> dict[str, Phase]:
        """Wait for the stops still being followed up (``--once``, shutdown and tests)."""
        return dict(await asyncio.gather(*self._follow_ups))


def _fields(decision: Decision, settle: str | None) -> Fields:
    server = decision.server
    return {
        "user": server.user,
        "server": server.name,
        "idle": format_duration(decision.idle_seconds),
        "rule": decision.rule_id,
        "reason": decision.reason,
        "settle": settle,
    }
