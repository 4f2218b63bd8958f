"""Keeping a server: who may (checked with the hub at every keep, never from a session), how far (the
policy, through the pure decision), stored before it counts, audited in the log and the database."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from culler.adapters.database import DatabaseError
from culler.adapters.errors import HubError, SourceError
from culler.adapters.hub import HubClient, scopes_of
from culler.adapters.keep_store import KeepStore
from culler.core.decide import PluginFn, next_keep
from culler.core.events import Event, ServerKept
from culler.core.keeps import KeepRefused, Kept
from culler.core.snapshot import SnapshotError
from culler.core.text import isoformat, utcnow
from culler.engine.look import Look
from culler.logs import event
from culler.policy.model import Policy

log = logging.getLogger("culler.keeps")


@dataclass(frozen=True)
class KeepAnswer:
    status: int  # HTTP: 200 kept, 401/403 who, 404 no such server, 409 the policy refuses, 502/503 faults
    body: dict[str, Any]
    token_refused: bool = False  # the hub does not accept the caller's token (revoked, expired)


def may_keep(owner: Mapping[str, Any], user: str) -> bool:
    """A user keeps their own servers; keeping someone else's needs the hub's admin or admin:servers."""
    if owner.get("kind", "user") == "user" and owner.get("name") == user:
        return True
    scopes = scopes_of(dict(owner))
    return owner.get("admin") is True or bool({"admin:servers", f"admin:servers!user={user}"} & scopes)


class Keeper:
    def __init__(
        self,
        hub: HubClient,
        look: Look,
        keeps: KeepStore,
        policy: Callable[[], Policy | None],
        publish: Callable[[Event], None],
        plugins: Mapping[str, PluginFn] | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.hub = hub
        self.look = look
        self.keeps = keeps
        self.policy = policy
        self.publish = publish
        self.plugins = plugins
        self.clock = clock

    async def keep(self, token: str, user: str, server: str) -> KeepAnswer:
        """One keep, answered for the API and the page alike; a hub that cannot say is a 502, not an error."""
        try:
            return await self._keep(token, user, server)
        except (HubError, SourceError, SnapshotError) as error:
            return KeepAnswer(502, {"error": f"the hub could not say: {error}"})

    async def _keep(self, token: str, user: str, server: str) -> KeepAnswer:
        owner = await self.hub.token_owner(token)  # fresh: rights are checked at every keep
        if owner is None:
            return KeepAnswer(403, {"error": "the hub does not accept this token"}, token_refused=True)
        if not may_keep(owner, user):
            return KeepAnswer(403, {"error": f"only {user} or a hub admin (admin:servers) may keep this server"})
        policy = self.policy()
        if policy is None:
            return KeepAnswer(503, {"error": "no valid policy is in force"})
        found = await self.look.user(user, server)
        if not found:
            return KeepAnswer(404, {"error": f"{user} has no server {server!r} running"})
        now = found[0].observed_at or self.clock()
        try:
            rule, until = next_keep(policy, found[0], now, self.keeps, self.plugins)
        except KeepRefused as refused:
            return KeepAnswer(409, {"error": str(refused)})
        kept = Kept(user, server, until, str(owner.get("name")), now, found[0].started)
        try:
            self.keeps.save(kept)
        except DatabaseError as error:
            event(log, logging.ERROR, "keep not saved", user=user, server=server, error=str(error))
            return KeepAnswer(503, {"error": f"the keep could not be saved: {error}"})
        event(log, logging.INFO, "server kept", user=user, server=server, until=isoformat(until), by=kept.by, rule=rule)
        self.publish(ServerKept(kept, rule))
        return KeepAnswer(200, describe_keep(kept, rule))


def describe_keep(kept: Kept, rule: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user": kept.user,
        "server": kept.server,
        "until": isoformat(kept.until),
        "by": kept.by,
        "at": isoformat(kept.at),
        "started": isoformat(kept.started),  # the server run it belongs to
    }
    return body if rule is None else {**body, "rule": rule}
