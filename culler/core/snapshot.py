"""What the service knows about one server, parsed from a hub user model (pure, no I/O)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from culler.core.clock import Reading
from culler.core.text import parse_time


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
    display_name: str | None = None  # the name users gave it at spawn, when the hub gives one; for pages only
    activity_error: str | None = None  # the activity source could not say: never stop on a guess
    # Our clock when the source answered with this data: the "now" it is judged at. Its times above are
    # on our clock too (see culler.clock); None when no reading was given (tests, plain data).
    observed_at: datetime | None = None

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
    observed_at: datetime | None = None  # as for servers


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


def _time(value: object, reading: Reading | None) -> datetime | None:
    stamp = parse_time(value)
    return reading.local(stamp) if reading is not None else stamp


def servers_of(model: object, reading: Reading | None = None) -> list[ServerSnapshot]:
    """Every server of one user model, its times put on our clock by ``reading`` (the answer it came in).
    Raises ``SnapshotError`` when the model is not trustworthy."""
    name = _user_name(model)
    assert isinstance(model, dict)
    servers = model.get("servers")
    if not isinstance(servers, dict):
        raise SnapshotError(f"user {name!r} has no 'servers' map: does the token have the read:servers scope?")
    groups = _groups(model)
    admin = bool(model.get("admin"))
    return [_server(name, admin, groups, key, value, reading) for key, value in servers.items()]


def _server(
    user: str, admin: bool, groups: tuple[str, ...] | None, key: str, model: object, reading: Reading | None
) -> ServerSnapshot:
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
            last_activity=_time(model.get("last_activity"), reading),
            started=_time(model.get("started"), reading),
            pending=model.get("pending") or None,
            ready=bool(model.get("ready")),
            user_options=options,
            display_name=_display_name(model.get("display_name")),
            observed_at=reading.sent if reading is not None else None,
        )
    except ValueError as error:
        raise SnapshotError(f"server {user}/{key}: {error}") from error


def _display_name(value: object) -> str | None:
    # Shown, never matched on: a string within the hub's own 255-character column, else nothing.
    return value if isinstance(value, str) and 0 < len(value) <= 255 else None


def user_of(model: object, reading: Reading | None = None) -> UserSnapshot:
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
            last_activity=_time(model.get("last_activity"), reading),
            created=_time(model.get("created"), reading),
            has_servers=bool(model.get("servers")),
            observed_at=reading.sent if reading is not None else None,
        )
    except ValueError as error:
        raise SnapshotError(f"user {name!r}: {error}") from error


@dataclass(frozen=True)
class Routes:
    """The proxy's route activity, on our clock, and our clock when the proxy answered."""

    activity: Mapping[tuple[str, str], datetime]  # (user, server name) -> last browser traffic
    observed_at: datetime | None = None


def with_route_activity(servers: list[ServerSnapshot], routes: Routes) -> list[ServerSnapshot]:
    """Servers with ``last_activity`` taken from the proxy's routes (browser traffic only), judged as of
    the proxy's answer."""
    result = []
    for server in servers:
        stamp = routes.activity.get((server.user, server.name))
        seen = routes.observed_at or server.observed_at
        if stamp is not None:
            result.append(replace(server, last_activity=stamp, observed_at=seen))
        elif server.ready and not server.pending:
            result.append(replace(server, activity_error="the proxy has no route for this server"))
        else:
            result.append(server)
    return result
