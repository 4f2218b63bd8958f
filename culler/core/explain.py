"""Human-readable explanations of decisions, and what a candidate policy would change (pure)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime

from culler.core.decide import Action, Decision
from culler.core.text import isoformat
from culler.core.views import state_of
from culler.policy.durations import format_duration


def verdict(decision: Decision, now: datetime) -> str:
    if decision.action is Action.STOP:
        return "stop now" if decision.settle is None else f"stop once quiet ({', '.join(decision.settle.probes)})"
    if decision.action is Action.SKIP:
        return "skip-pending"
    if decision.action is Action.EXEMPT:
        return "exempt"
    if decision.stop_at is None:
        return "keep"
    left = (decision.stop_at - now).total_seconds()
    return f"keep, stop at {isoformat(decision.stop_at)} (in {format_duration(left)})"


SettlingInfo = Mapping[str, Mapping[str, object]]  # server label -> what the running service reports (api/settling)


def describe(decision: Decision, now: datetime, settling: SettlingInfo | None = None) -> dict[str, str]:
    server = decision.server
    row = {
        "server": server.label,
        "activity": isoformat(server.activity_time) or "-",
        "source": "last_activity" if server.last_activity else "started",
        "idle": format_duration(decision.idle_seconds) if decision.idle_seconds is not None else "-",
        "rule": decision.rule_id,
        "decision": verdict(decision, now),
        "reason": decision.reason,
    }
    if decision.kept_until is not None:
        row["kept_until"] = isoformat(decision.kept_until) or "-"
    info = (settling or {}).get(server.label)
    row["state"] = str(state_of(decision, info is not None))
    if info is not None:
        row["decision"] = f"settling since {info.get('since')} (cap in {info.get('cap_in')}, then {info.get('at_cap')})"
        row["reason"] = str(info.get("state"))
    return row


def render(rows: Sequence[dict[str, str]], columns: Sequence[str]) -> str:
    if not rows:
        return "(no servers)"
    widths = {c: max(len(c), *(len(row[c]) for row in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(row[c].ljust(widths[c]) for c in columns) for row in rows]
    return "\n".join(line.rstrip() for line in lines)


def explain_table(decisions: Sequence[Decision], now: datetime, settling: SettlingInfo | None = None) -> str:
    rows = [describe(d, now, settling) for d in sorted(decisions, key=lambda d: d.server.key)]
    return render(rows, ["server", "activity", "idle", "rule", "decision", "reason"])


def changes(current: Sequence[Decision], candidate: Sequence[Decision], now: datetime) -> list[dict[str, str]]:
    """Servers whose decision differs between the policy in force and a candidate."""
    before = {d.server.key: d for d in current}
    rows = []
    for after in sorted(candidate, key=lambda d: d.server.key):
        old = before.get(after.server.key)
        if old is None:
            continue
        was, becomes = verdict(old, now), verdict(after, now)
        if _outcome(old) != _outcome(after):
            rows.append(
                {
                    "server": after.server.label,
                    "now": f"{was} [{old.rule_id}]",
                    "candidate": f"{becomes} [{after.rule_id}]",
                }
            )
    return rows


def _outcome(decision: Decision) -> tuple[object, ...]:
    """What a change is judged on: when a due server became due does not matter, it stops either way."""
    stop_at = None if decision.action is Action.STOP else decision.stop_at
    return (decision.action, decision.rule_id, stop_at)


def changes_table(rows: Sequence[dict[str, str]], total: int) -> str:
    if not rows:
        return f"no decision changes for {total} server(s)"
    return render(rows, ["server", "now", "candidate"]) + f"\n{len(rows)} of {total} server(s) would change"
