"""Stop warnings: a webhook told before a server is stopped (``warning``) and when it was (``stopped``).

``WarningSender`` observes cycles and stops (culler.events). After each successful cycle it POSTs one ``warning`` per
server per idle period for the servers kept now but due within ``warn_before``; an idle period is the
server plus its activity time, so a server that is used again (a new activity time) may be warned again
in its next idle period. When the culler stops a server (``Phase.STOPPED``, including the final stop
after a hub 202), it POSTs one ``stopped`` notice per server per idle period. Sends run in background
tasks: the cycle never waits for the receiver, and a receiver failure never raises into it.

Delivery: ``POST <url>`` with ``Content-Type: application/json`` and the optional secret header.
A 2xx answer is delivered. Connection errors, timeouts, 5xx and 429 are retried with a bounded backoff
(0.5 s, 1 s, 2 s by default); any other answer is a failure, not retried. A warning that failed for a
retryable reason is tried again at the next cycle if the server is still in the window. Each delivery's
outcome is published once (``NoticeSent``, for metrics) and logged once, without the secret header or
the webhook URL's path and query (they may hold a token).

Payload (one JSON object)::

    {
      "event": "warning",                 # or "stopped"
      "user": "alice",
      "server": "",                       # the server's name, "" for the default server
      "server_url_path": "/user/alice/",  # below the hub's base URL; /user/alice/lab/ for a named server
      "rule": "default",                  # the policy rule that decided
      "reason": "idle 6d of 7d (rule default); stops at 2026-11-27T10:00:00Z",
      "idle_seconds": 518400,             # at the cycle's decision (null if unknown)
      "last_activity": "2026-11-20T10:00:00Z",  # what idleness counts from (activity, else start)
      "stop_at": "2026-11-27T10:00:00Z",  # warning: when the server is due; stopped: null
      "stopped_at": null,                 # stopped: when the culler saw it stopped; warning: null
      "activity_page": "https://hub.example.org/services/culler/",  # or null when not configured
      "message": "Your server alice will be stopped on 2026-11-27 10:00 UTC (in 1 day) unless you use it."
    }

Times are ISO 8601 UTC with a ``Z``. A ``stopped`` message reads "Your server alice was stopped on
2026-11-27 10:05 UTC: <reason>."
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import quote

from culler.adapters.webhook import Webhook, WebhookRejected, WebhookRetryable
from culler.core.decide import Action, Decision
from culler.core.events import CycleDecided, Event, NoticeSent, StopEnded
from culler.core.lifecycle import Phase
from culler.core.report import CycleReport
from culler.core.text import in_words, isoformat, utc_minutes, utcnow
from culler.logs import event

log = logging.getLogger("culler.warnings")

WARNING = "warning"
STOPPED = "stopped"


def server_url_path(user: str, server: str) -> str:
    path = f"/user/{quote(user, safe='')}/"
    return path + f"{quote(server, safe='')}/" if server else path


class WarningSender:
    """Webhook notifications before and at a stop (see the module docstring for the payload)."""

    def __init__(
        self,
        url: str,
        warn_before: float,
        secret_header: tuple[str, str] | None = None,
        retries: int = 3,
        timeout: float = 10,
        clock: Callable[[], datetime] = utcnow,
        service_url: str | None = None,
        *,
        backoff: float = 0.5,
        max_backoff: float = 2.0,
        concurrency: int = 10,
        publish: Callable[[Event], None] | None = None,
    ) -> None:
        self.webhook = Webhook(url, secret_header, timeout)
        self.warn_before = warn_before
        self.retries = max(0, retries)
        self.timeout = timeout
        self.clock = clock
        self.service_url = service_url
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._publish = publish or (lambda event: None)  # each delivery's outcome, for metrics
        self._limit = asyncio.Semaphore(max(1, concurrency))
        self._tasks: set[asyncio.Task[None]] = set()
        # server key -> (activity time, kept deadline) of the warned period
        self._warned: dict[str, tuple[datetime | None, datetime | None]] = {}
        self._stopped: dict[str, datetime | None] = {}  # same, for stop notices

    # --- observing the engine -------------------------------------------------------------------------------

    def observe(self, event: Event) -> None:
        match event:
            case CycleDecided(report=report):
                self.cycle_done(report)
            case StopEnded(decision=decision, result=result):
                self.server_stopped(decision, result)

    def cycle_done(self, report: CycleReport) -> None:
        if not report.ok:
            return
        present = {d.server.key for d in report.decisions}
        for memory in (self._warned, self._stopped):
            for key in memory.keys() - present:
                del memory[key]
        now = self.clock()
        for decision in report.decisions:
            if decision.action is not Action.KEEP or decision.stop_at is None:
                continue
            left = (decision.stop_at - now).total_seconds()
            if not 0 < left <= self.warn_before:
                continue
            server = decision.server
            period = server.activity_time
            told = (period, decision.kept_until)  # a keep moves the deadline: tell again before the new one
            if server.key in self._warned and self._warned[server.key] == told:
                continue
            self._warned[server.key] = told
            kept = f"was kept until {utc_minutes(decision.kept_until)} and " if decision.kept_until else ""
            message = (
                f"Your server {server.label} {kept}will be stopped on {utc_minutes(decision.stop_at)} "
                f"(in {in_words(left)}) unless you use it."
            )
            payload = self._payload(WARNING, decision, message, stop_at=decision.stop_at)
            self._spawn(WARNING, server.key, period, payload)

    def server_stopped(self, decision: Decision, result: Phase) -> None:
        if result is not Phase.STOPPED:
            return
        server = decision.server
        period = server.activity_time
        if server.key in self._stopped and self._stopped[server.key] == period:
            return
        self._stopped[server.key] = period
        now = self.clock()
        message = f"Your server {server.label} was stopped on {utc_minutes(now)}: {decision.reason}."
        self._spawn(STOPPED, server.key, period, self._payload(STOPPED, decision, message, stopped_at=now))

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout: float | None = None) -> bool:
        """Wait for the sends in flight; after ``timeout`` cancel the rest (counted failed). True: all done."""
        tasks = set(self._tasks)
        if not tasks:
            return True
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        if late:
            event(log, logging.WARNING, "webhook sends abandoned", count=len(late), target=self.webhook.target)
        return not late

    async def close(self) -> None:
        await self.webhook.close()

    # --- sending --------------------------------------------------------------------------------

    def _payload(
        self,
        kind: str,
        decision: Decision,
        message: str,
        *,
        stop_at: datetime | None = None,
        stopped_at: datetime | None = None,
    ) -> dict[str, Any]:
        server = decision.server
        idle = decision.idle_seconds
        return {
            "event": kind,
            "user": server.user,
            "server": server.name,
            "server_url_path": server_url_path(server.user, server.name),
            "rule": decision.rule_id,
            "reason": decision.reason,
            "idle_seconds": None if idle is None else round(idle),
            "last_activity": isoformat(server.activity_time),
            "stop_at": isoformat(stop_at),
            "stopped_at": isoformat(stopped_at),
            "kept_until": isoformat(decision.kept_until),
            "activity_page": self.service_url,
            "message": message,
        }

    def _spawn(self, kind: str, key: str, period: datetime | None, payload: dict[str, Any]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._deliver(kind, key, period, payload))
        except RuntimeError:  # no event loop: nothing can be sent (never the case inside a cycle)
            self._publish(NoticeSent(kind, ok=False))
            event(log, logging.WARNING, "webhook not sent: no event loop", kind=kind, server=key)
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, kind: str, key: str, period: datetime | None, payload: dict[str, Any]) -> None:
        """One delivery with its retries; logs once, counts once, never raises (but for cancellation)."""
        attempts = 0
        error = ""
        retryable = False
        try:
            async with self._limit:
                for attempt in range(self.retries + 1):
                    if attempt:
                        await asyncio.sleep(min(self.backoff * 2 ** (attempt - 1), self.max_backoff))
                    attempts = attempt + 1
                    try:
                        await self.webhook.post(payload)
                    except WebhookRetryable as failure:
                        error, retryable = str(failure), True
                        continue
                    except WebhookRejected as failure:
                        error, retryable = str(failure), False
                        break
                    self._publish(NoticeSent(kind, ok=True))
                    event(log, logging.INFO, "webhook sent", kind=kind, server=key, attempts=attempts)
                    return
        except asyncio.CancelledError:
            self._publish(NoticeSent(kind, ok=False))
            event(log, logging.WARNING, "webhook send cancelled", kind=kind, server=key, attempts=attempts)
            raise
        except Exception as surprise:  # a bug here must not surface as an unretrieved task exception
            error, retryable = f"{type(surprise).__name__}: {self.webhook.scrub(str(surprise))}", False
        self._publish(NoticeSent(kind, ok=False))
        if kind == WARNING and retryable and key in self._warned and self._warned[key][0] == period:
            del self._warned[key]  # the receiver was down: try again next cycle if still in the window
        event(
            log,
            logging.WARNING,
            "webhook failed",
            kind=kind,
            server=key,
            target=self.webhook.target,
            attempts=attempts,
            error=error,
            retry_next_cycle=(kind == WARNING and retryable) or None,
        )
