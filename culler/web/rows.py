"""What users (and admins) see about their servers: rows built from the latest decisions, the settling
servers and the stop history (pure, no I/O); the decisions come from culler.observers.latest."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from culler.core.decide import Action, Decision, PluginFn, evaluate, next_keep
from culler.core.keeps import NO_KEEPS, KeepRefused, KeepView
from culler.core.text import humanize, isoformat, utcnow
from culler.core.views import ServerState, state_of
from culler.policy.durations import format_duration
from culler.policy.model import Policy
from culler.web.words import keep_words, rule_words


class History(Protocol):
    """What the page reads from the stop history (culler.observers.history.StopHistory)."""

    def last_stop(self, user: str, server: str) -> dict[str, str | None] | None: ...

    def for_user(self, name: str) -> list[dict[str, str | None]]: ...

    def all(self) -> list[dict[str, str | None]]: ...


def server_name(name: str) -> str:
    return name or "default"


def server_label(name: str, display_name: str | None = None) -> str:
    """The name users know a server by: the one they gave it at spawn, else its name."""
    return display_name or name or "default server"


def _your(name: str, display_name: str | None) -> str:
    return "Your default server" if not (display_name or name) else f"Your server “{server_label(name, display_name)}”"


@dataclass(frozen=True)
class PolicyFacts:
    """What the page says from the policy in force: the rule in words, and whether one more keep may go."""

    policy: Policy | None = None
    keeps: KeepView = NO_KEEPS
    plugins: Mapping[str, PluginFn] | None = None

    def with_keeps(self, decision: Decision, now: datetime) -> Decision:
        """The cycle's decision, judged again on the same data where a keep was made since: the page shows
        a keep at once, not at the next cycle."""
        kept = self.keeps.kept(decision.server.user, decision.server.name)
        if self.policy is None or kept is None or decision.action is not Action.KEEP:
            return decision
        if decision.kept_until is not None and kept.until <= decision.kept_until:
            return decision
        at = decision.server.observed_at or now
        return evaluate(self.policy, decision.server, at, self.plugins, self.keeps)

    def keep_offer(self, decision: Decision, now: datetime) -> dict[str, str | None] | None:
        """None where the rule allows no keeps; else ``until`` (one more keep) or why not (``refused``)."""
        if self.policy is None or keep_words(self.policy, decision.rule_id) is None:
            return None
        try:
            _, until = next_keep(self.policy, decision.server, now, self.keeps, self.plugins)
        except KeepRefused as refused:
            return {"until": None, "refused": str(refused)}
        return {"until": isoformat(until), "refused": None}


def row(
    decision: Decision,
    now: datetime,
    settling: Mapping[str, Mapping[str, Any]] | None = None,
    history: History | None = None,
    facts: PolicyFacts | None = None,
) -> dict[str, Any]:
    server = decision.server
    idle = (now - server.activity_time).total_seconds() if server.activity_time else None
    settle = (settling or {}).get(server.key)
    until: float | None = None
    stop_at = decision.stop_at
    which = _your(server.name, server.display_name)
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
        kept = " was kept: it" if decision.kept_until is not None else ""
        if until > 0:
            message = f"{which}{kept} will be stopped in {humanize(until)} unless you use it."
        else:
            message = f"{which} is due to be stopped at the next check unless you use it."
    return {
        "server": server.name,
        "user": server.user,
        "label": server_label(server.name, server.display_name),
        "last_activity": isoformat(server.activity_time),
        "idle": format_duration(idle) if idle is not None else None,
        "rule": decision.rule_id,
        "decision": str(state),
        "stop_at": isoformat(stop_at),
        "seconds_until_stop": None if until is None else round(until),
        "message": message,
        "settle": dict(settle) if settle is not None else None,
        "last_stop": history.last_stop(server.user, server.name) if history is not None else None,
        "kept_until": isoformat(decision.kept_until),
        **_policy_fields(decision, state, now, facts),
    }


def _policy_fields(decision: Decision, state: ServerState, now: datetime, facts: PolicyFacts | None) -> dict[str, Any]:
    if facts is None:
        return {}
    judged = state not in (ServerState.PENDING, ServerState.EXEMPT)
    return {
        "rule_text": rule_words(facts.policy, decision.rule_id),
        "keep_text": keep_words(facts.policy, decision.rule_id) if judged else None,
        "keep": facts.keep_offer(decision, now) if judged else None,
    }


def rows(
    decisions: Sequence[Decision],
    now: datetime | None = None,
    settling: Mapping[str, Mapping[str, Any]] | None = None,
    history: History | None = None,
    facts: PolicyFacts | None = None,
) -> list[dict[str, Any]]:
    """Every server, sorted by user then server; ``settling``: the settler's descriptions by server key."""
    now = now or utcnow()
    ordered = sorted(decisions, key=lambda d: (d.server.user, d.server.name))
    if facts is not None:
        ordered = [facts.with_keeps(d, now) for d in ordered]
    return [row(d, now, settling, history, facts) for d in ordered]


def for_user(all_rows: Sequence[Mapping[str, Any]], name: str) -> list[dict[str, Any]]:
    return [dict(r) for r in all_rows if r["user"] == name]


def admin_view(all_rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every server, soonest stop first; servers that will not stop last."""

    def key(r: Mapping[str, Any]) -> tuple[int, float, str, str]:
        until = r.get("seconds_until_stop")
        return (until is None, until or 0.0, r["user"], r["server"])

    return sorted((dict(r) for r in all_rows), key=key)
