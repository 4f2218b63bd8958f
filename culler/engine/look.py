"""The one path from the hub to decisions: list (all servers, or one user's), take the proxy's activity
when that is the source, and judge each server as of the answer its data came in.

Used by the cycle, the re-check right before a stop, and ``explain``, so that the three can never judge
a server differently.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from culler.adapters.hub import HubClient
from culler.adapters.proxy import ProxyActivity
from culler.core.clock import Reading
from culler.core.decide import Decision, PluginFn, evaluate
from culler.core.keeps import NO_KEEPS, KeepView
from culler.core.snapshot import ServerSnapshot, SnapshotError, UserSnapshot, servers_of, user_of, with_route_activity
from culler.core.text import utcnow
from culler.policy.model import Policy

_EPOCH = datetime.min.replace(tzinfo=UTC)  # "no activity known": older than any


def _keeps_more(new: ServerSnapshot, old: ServerSnapshot) -> bool:
    """Of two listings of one server, the one that argues for keeping it: not ready, else newer activity."""

    def weight(s: ServerSnapshot) -> tuple[bool, datetime]:
        return (bool(s.pending) or not s.ready, s.activity_time or _EPOCH)

    return weight(new) > weight(old)


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


def add_users(models: list[object], reading: Reading | None, into: dict[str, UserSnapshot]) -> list[str]:
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


@dataclass
class Listing:
    """What the hub listed: servers by key (a server listed twice counts once, on the copy that argues
    for keeping it), the users as listed, and one line per model that could not be trusted."""

    servers: dict[str, ServerSnapshot] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    users: dict[str, UserSnapshot] = field(default_factory=dict)
    duplicates: int = 0
    seconds: float = 0.0  # first request to last answer

    def add(self, servers: list[ServerSnapshot]) -> None:
        for server in servers:
            old = self.servers.get(server.key)
            if old is not None:
                self.duplicates += 1
                if not _keeps_more(server, old):
                    continue
            self.servers[server.key] = server

    def decide(
        self,
        policy: Policy,
        plugins: Mapping[str, PluginFn] | None = None,
        clock: Callable[[], datetime] = utcnow,
        keeps: KeepView = NO_KEEPS,
    ) -> list[Decision]:
        return decisions_for(list(self.servers.values()), policy, plugins, clock, keeps)


def decisions_for(
    servers: list[ServerSnapshot],
    policy: Policy,
    plugins: Mapping[str, PluginFn] | None = None,
    clock: Callable[[], datetime] = utcnow,
    keeps: KeepView = NO_KEEPS,
) -> list[Decision]:
    """Each server's decision as of when the source answered with its data (see culler.clock)."""
    return [evaluate(policy, server, server.observed_at or clock(), plugins, keeps) for server in servers]


class Look:
    """Reads the hub (and the proxy, when it is the activity source) into servers ready to judge."""

    def __init__(self, hub: HubClient, activity: ProxyActivity | None = None) -> None:
        self.hub = hub
        self.activity = activity  # None: the hub's last_activity; else the proxy's route activity

    async def everything(self, max_seconds: float, with_users: bool = False) -> Listing:
        """Every ready server, page by page, keeping only snapshots (a user model is several times bigger).
        Raises ``HubError`` (the proxy's failure included) when the listing cannot be trusted whole."""
        listing = Listing()
        began = time.monotonic()
        async for page in self.hub.user_pages("ready", max_seconds):
            servers, problems = snapshots(page.users, page.reading)
            listing.add(servers)
            listing.problems.extend(problems)
            if with_users:
                add_users(page.users, page.reading, listing.users)
        listing.seconds = time.monotonic() - began
        await self._with_routes(listing)
        return listing

    async def user(self, name: str, server: str | None = None) -> list[ServerSnapshot] | None:
        """One user's servers (only ``server`` when given) as the hub says now; None: no such user.
        Raises ``HubError`` or ``SnapshotError``."""
        model, reading = await self.hub.read_user(name)
        if model is None:
            return None
        found = [s for s in servers_of(model, reading) if server is None or s.name == server]
        if self.activity is not None and found:
            found = with_route_activity(found, await self.activity.routes())
        return found

    async def _with_routes(self, listing: Listing) -> None:
        if self.activity is None:
            return
        routes = await self.activity.routes()
        servers = with_route_activity(list(listing.servers.values()), routes)
        listing.servers = {server.key: server for server in servers}
