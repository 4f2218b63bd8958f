"""What the service knows about one server, parsed from a hub user model (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from culler.timeutil import parse_time


class SnapshotError(ValueError):
    """A user model from the hub that cannot be trusted enough to act on."""


@dataclass(frozen=True)
class ServerSnapshot:
    user: str
    name: str  # "" is the default server
    admin: bool
    groups: tuple[str, ...] | None  # None: the hub did not say (token lacks read:users:groups)
    last_activity: datetime | None
    started: datetime | None
    pending: str | None
    ready: bool
    user_options: dict[str, Any] = field(default_factory=dict)
    activity_error: str | None = None  # the activity source could not say: never stop on a guess

    @property
    def key(self) -> str:
        return f"{self.user}/{self.name}"

    @property
    def label(self) -> str:
        return self.user if not self.name else f"{self.user}/{self.name}"

    @property
    def activity_time(self) -> datetime | None:
        """The time idleness counts from: server activity, else its start."""
        return self.last_activity or self.started


@dataclass(frozen=True)
class UserSnapshot:
    name: str
    admin: bool
    groups: tuple[str, ...] | None
    last_activity: datetime | None
    created: datetime | None
    has_servers: bool


def _groups(model: dict[str, Any]) -> tuple[str, ...] | None:
    groups = model.get("groups")
    if groups is None:
        return None
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise SnapshotError(f"user {model.get('name')!r}: 'groups' is not a list of names")
    return tuple(groups)


def _user_name(model: object) -> str:
    if not isinstance(model, dict):
        raise SnapshotError(f"user model is not an object: {str(model)[:80]!r}")
    name = model.get("name")
    if not isinstance(name, str) or not name:
        raise SnapshotError("user model without a name")
    return name


def servers_of(model: object) -> list[ServerSnapshot]:
    """Every server of one user model. Raises ``SnapshotError`` when the model is not trustworthy."""
    name = _user_name(model)
    assert isinstance(model, dict)
    servers = model.get("servers")
    if not isinstance(servers, dict):
        raise SnapshotError(f"user {name!r} has no 'servers' map: does the token have the read:servers scope?")
    groups = _groups(model)
    return [_server(name, bool(model.get("admin")), groups, key, value) for key, value in servers.items()]


def _server(user: str, admin: bool, groups: tuple[str, ...] | None, key: str, model: object) -> ServerSnapshot:
    if not isinstance(model, dict):
        raise SnapshotError(f"server {user}/{key}: model is not an object")
    options = model.get("user_options") or {}
    if not isinstance(options, dict):
        raise SnapshotError(f"server {user}/{key}: 'user_options' is not an object")
    try:
        return ServerSnapshot(
            user=user,
            name=str(model.get("name", key)),
            admin=admin,
            groups=groups,
            last_activity=parse_time(model.get("last_activity")),
            started=parse_time(model.get("started")),
            pending=model.get("pending") or None,
            ready=bool(model.get("ready")),
            user_options=options,
        )
    except ValueError as error:
        raise SnapshotError(f"server {user}/{key}: {error}") from error


def user_of(model: object) -> UserSnapshot:
    """A user, for deletion. Raises ``SnapshotError`` when the model cannot say whether servers are running."""
    name = _user_name(model)
    assert isinstance(model, dict)
    if not isinstance(model.get("servers"), dict):
        # without the map, "no servers" and "servers unknown" look alike: never guess towards deletion
        raise SnapshotError(f"user {name!r} has no 'servers' map: does the token have the read:servers scope?")
    try:
        return UserSnapshot(
            name=name,
            admin=bool(model.get("admin")),
            groups=_groups(model),
            last_activity=parse_time(model.get("last_activity")),
            created=parse_time(model.get("created")),
            has_servers=bool(model.get("servers")),
        )
    except ValueError as error:
        raise SnapshotError(f"user {name!r}: {error}") from error


def with_route_activity(
    servers: list[ServerSnapshot], routes: Mapping[tuple[str, str], datetime]
) -> list[ServerSnapshot]:
    """Servers with ``last_activity`` taken from the proxy's routes (browser traffic only)."""
    result = []
    for server in servers:
        stamp = routes.get((server.user, server.name))
        if stamp is not None:
            result.append(replace(server, last_activity=stamp))
        elif server.ready and not server.pending:
            result.append(replace(server, activity_error="the proxy has no route for this server"))
        else:
            result.append(server)
    return result
