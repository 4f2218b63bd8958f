"""What users (and admins) see about their servers: rows built from the latest decisions, the settling
servers and the stop history (pure, no I/O); the decisions come from culler.observers.latest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

from culler.core.decide import Decision
from culler.core.text import humanize, isoformat, utcnow
from culler.core.views import ServerState, state_of
from culler.policy.durations import format_duration


class History(Protocol):
    """What the page reads from the stop history (culler.observers.history.StopHistory)."""

    def last_stop(self, user: str, server: str) -> dict[str, str | None] | None: ...

    def for_user(self, name: str) -> list[dict[str, str | None]]: ...

    def all(self) -> list[dict[str, str | None]]: ...


def server_name(name: str) -> str:
    return name or "default"


def row(
    decision: Decision,
    now: datetime,
    settling: Mapping[str, Mapping[str, Any]] | None = None,
    history: History | None = None,
) -> dict[str, Any]:
    server = decision.server
    idle = (now - server.activity_time).total_seconds() if server.activity_time else None
    settle = (settling or {}).get(server.key)
    until: float | None = None
    stop_at = decision.stop_at
    which = f"Your server {server_name(server.name)}"
    state = state_of(decision, settle is not None)
    if state is ServerState.PENDING:
        message, stop_at = f"{which} is starting or stopping: not judged now.", None
    elif state is ServerState.EXEMPT:
        message, stop_at = "exempt: never stopped", None
    elif state is ServerState.SETTLING:
        until, message = 0.0, f"{which} is due to stop: waiting for your home directory to be quiet"
    elif state is ServerState.DUE:
        until, message = 0.0, f"{which} is due to be stopped now."
    elif stop_at is None:
        message = f"{which} will not be stopped."
    else:
        until = max(0.0, (stop_at - now).total_seconds())
        if until > 0:
            message = f"{which} will be stopped in {humanize(until)} unless you use it."
        else:
            message = f"{which} is due to be stopped at the next check unless you use it."
    return {
        "server": server.name,
        "user": server.user,
        "last_activity": isoformat(server.activity_time),
        "idle": format_duration(idle) if idle is not None else None,
        "rule": decision.rule_id,
        "decision": str(state),
        "stop_at": isoformat(stop_at),
        "seconds_until_stop": None if until is None else round(until),
        "message": message,
        "settle": dict(settle) if settle is not None else None,
        "last_stop": history.last_stop(server.user, server.name) if history is not None else None,
    }


def rows(
    decisions: Sequence[Decision],
    now: datetime | None = None,
    settling: Mapping[str, Mapping[str, Any]] | None = None,
    history: History | None = None,
) -> list[dict[str, Any]]:
    """Every server, sorted by user then server; ``settling``: the settler's descriptions by server key."""
    now = now or utcnow()
    ordered = sorted(decisions, key=lambda d: (d.server.user, d.server.name))
    return [row(d, now, settling, history) for d in ordered]


def for_user(all_rows: Sequence[Mapping[str, Any]], name: str) -> list[dict[str, Any]]:
    return [dict(r) for r in all_rows if r["user"] == name]


def admin_view(all_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every server, soonest stop first; servers that will not stop last."""

    def key(r: Mapping[str, Any]) -> tuple[int, float, str, str]:
        until = r.get("seconds_until_stop")
        return (until is None, until or 0.0, r["user"], r["server"])

    return sorted((dict(r) for r in all_rows), key=key)
