"""Deleting inactive users (``users:`` in the policy, or ``--cull-users``), after a cycle's stops."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta

from culler.adapters.errors import HubError, HubInterrupted
from culler.adapters.hub import HubClient
from culler.core.decide import UserDecision, evaluate_user
from culler.core.lifecycle import Phase
from culler.core.report import CycleReport
from culler.core.snapshot import UserSnapshot
from culler.engine.look import add_users
from culler.logs import event
from culler.policy.model import Policy

log = logging.getLogger("culler.cycle")
# How far the hub's clock may trail ours when we tell our own stop's touch of last_activity from real use.
CLOCK_SLACK = timedelta(seconds=2)


def users_with_every_server(report: CycleReport, result: Phase) -> set[str]:
    """Users all of whose listed servers came to ``result`` this cycle."""
    outcome: dict[str, bool] = {}
    for decision in report.decisions:
        user = decision.server.user
        outcome[user] = outcome.get(user, True) and report.results.get(decision.server.key) is result
    return {user for user, every in outcome.items() if every}


def judged_before_our_stop(current: UserSnapshot, listed: UserSnapshot, stops_began: datetime) -> UserSnapshot:
    """The hub sets a user's last_activity when a server stops: when that can be our stop, judge the listed one.

    Activity older than our stops is real and kept. A user listed without activity is judged on that (so on
    when the account was created), as before the stop.
    """
    if current.last_activity is None:
        return current
    if current.last_activity < stops_began - CLOCK_SLACK:
        return current
    return replace(current, last_activity=listed.last_activity)


class UserDeleter:
    def __init__(
        self,
        hub: HubClient,
        stopping: asyncio.Event,
        clock: Callable[[], datetime],
        dry_run: bool = False,
        max_deletions: int = 100,
    ) -> None:
        self.hub = hub
        self.stopping = stopping  # shutdown: no new deletion starts
        self.clock = clock
        self.dry_run = dry_run
        self.max_deletions = max_deletions

    async def run(self, policy: Policy, report: CycleReport, listed: dict[str, UserSnapshot], cap: float) -> None:
        """Delete the users the policy says are inactive, as of after this cycle's stops (``listed``: the
        users as the cycle listed them, before any stop; ``cap``: the listing's time bound)."""
        users: dict[str, UserSnapshot] = {}
        try:
            async for page in self.hub.user_pages("inactive", cap):
                for problem in add_users(page.users, page.reading, users):
                    event(log, logging.WARNING, "user skipped", error=problem)
        except HubError as error:
            event(log, logging.ERROR, "listing inactive users failed, no deletions this cycle", error=str(error))
            return
        stopped = users_with_every_server(report, Phase.STOPPED)
        for name, user in users.items():
            if name in stopped and name in listed and report.stops_began is not None:
                users[name] = judged_before_our_stop(user, listed[name], report.stops_began)
        if self.dry_run:  # show the deletions acting would make once these servers are stopped
            for name in users_with_every_server(report, Phase.WOULD_STOP) & listed.keys():
                users.setdefault(name, replace(listed[name], has_servers=False))
        candidates = [evaluate_user(policy, user, user.observed_at or self.clock()) for user in users.values()]
        to_delete = [c for c in candidates if c.delete][: self.max_deletions or None]
        for decision in to_delete:
            if self.stopping.is_set():
                return
            await self._delete(decision, report)

    async def _delete(self, decision: UserDecision, report: CycleReport) -> None:
        name = decision.user.name
        if self.dry_run:
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
