"""Policy evaluation: one server snapshot + policy + now -> a decision with its reason (pure, no I/O)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from culler.core.keeps import NO_KEEPS, KeepRefused, KeepView, kept_deadline, next_until
from culler.core.snapshot import ServerSnapshot, UserSnapshot
from culler.core.text import isoformat
from culler.policy.durations import format_duration
from culler.policy.model import DEFAULT_RULE_ID, Match, Policy, Rule, Settle
from culler.policy.options import any_glob


class Action(StrEnum):
    KEEP = "keep"
    STOP = "stop"
    EXEMPT = "exempt"
    SKIP = "skip"  # pending or not ready: not ours to judge this cycle


@dataclass(frozen=True)
class Verdict:
    """What a policy plugin returns when it has an opinion (``None`` means no opinion)."""

    action: Action | str
    reason: str


PluginFn = Callable[[ServerSnapshot, Mapping[str, Any], datetime], "Verdict | None"]


@dataclass(frozen=True)
class Decision:
    server: ServerSnapshot
    action: Action
    rule_id: str
    reason: str
    idle_seconds: float | None = None
    stop_at: datetime | None = None  # when the server is (or was) due; None: never
    remove: bool = False
    error: str | None = None  # set when the decision is "keep" because something failed
    settle: Settle | None = None  # for stops: wait for a quiet home first
    kept_until: datetime | None = None  # a user's keep moved the idle deadline to this

    @property
    def sort_key(self) -> float:
        """Longest idle first when the mass-stop guard must choose."""
        return -(self.idle_seconds or 0.0)


def evaluate(
    policy: Policy,
    server: ServerSnapshot,
    now: datetime,
    plugins: Mapping[str, PluginFn] | None = None,
    keeps: KeepView = NO_KEEPS,
) -> Decision:
    if server.pending or not server.ready:
        state = f"pending {server.pending}" if server.pending else "not ready"
        return Decision(server, Action.SKIP, "-", f"server is {state}")
    if server.activity_error:
        return _unsure(server, "-", server.activity_error)
    for rule in policy.rules:
        matched = match(rule.match, server)
        if matched is None:
            return _unsure(server, rule.id, "group membership unknown: the token lacks read:users:groups")
        if not matched:
            continue
        if rule.plugin is None:
            return _apply_limits(policy, rule, server, now, keeps)
        decision = _ask_plugin(policy, rule, server, now, plugins or {})
        if decision is not None:
            return decision
    return _apply_limits(policy, None, server, now, keeps)


def match(criteria: Match | None, server: ServerSnapshot) -> bool | None:
    """True/False; None when the answer depends on facts the hub did not give (groups)."""
    if criteria is None:
        return True
    if criteria.users is not None and not any_glob(criteria.users, [server.user]):
        return False
    if criteria.admin is not None and criteria.admin != server.admin:
        return False
    if criteria.servers is not None and not any_glob(criteria.servers, [server.name]):
        return False
    if not all(criterion.matches(server.user_options, key) for key, criterion in criteria.options().items()):
        return False
    if criteria.groups is not None:
        if server.groups is None:
            return None
        return any_glob(criteria.groups, server.groups)
    return True


def _unsure(server: ServerSnapshot, rule_id: str, why: str) -> Decision:
    return Decision(server, Action.KEEP, rule_id, f"kept: {why}", error=why)


def _ask_plugin(
    policy: Policy, rule: Rule, server: ServerSnapshot, now: datetime, plugins: Mapping[str, PluginFn]
) -> Decision | None:
    plugin = plugins.get(rule.plugin or "")
    if plugin is None:
        return _unsure(server, rule.id, f"plugin {rule.plugin!r} is not installed")
    try:
        verdict = plugin(server, rule.args, now)
        if verdict is None:
            return None
        action = Action(verdict.action)
        reason = str(verdict.reason)
    except Exception as error:  # a plugin is third-party code: any failure means "keep"
        return _unsure(server, rule.id, f"plugin {rule.plugin!r} failed: {type(error).__name__}: {error}")
    idle = _idle_seconds(server, now)
    if action is Action.STOP:
        return Decision(
            server, action, rule.id, reason, idle, now, _remove(policy, rule, server), settle=_settle(policy, rule)
        )
    return Decision(server, action, rule.id, reason, idle)


def _idle_seconds(server: ServerSnapshot, now: datetime) -> float | None:
    since = server.activity_time
    if since is None:
        return None
    return max(0.0, (now - since).total_seconds())  # a future time (clock skew) means active now


def _remove(policy: Policy, rule: Rule | None, server: ServerSnapshot) -> bool:
    flag = rule.remove_named_servers if rule and rule.remove_named_servers is not None else None
    return bool(server.name) and (policy.defaults.remove_named_servers if flag is None else flag)


def _settle(policy: Policy, rule: Rule | None) -> Settle | None:
    settle = policy.settle_for(rule)
    return settle if settle.probes else None


def _apply_limits(
    policy: Policy, rule: Rule | None, server: ServerSnapshot, now: datetime, keeps: KeepView
) -> Decision:
    rule_id = rule.id if rule else DEFAULT_RULE_ID
    if rule is not None and rule.exempt:
        return Decision(server, Action.EXEMPT, rule_id, f"exempt by rule {rule_id!r}", _idle_seconds(server, now))
    keep = policy.keep_for(rule)
    if keep is not None and keeps.problem is not None:  # a keep we cannot read may be holding this server
        return _unsure(server, rule_id, f"keeps cannot be read: {keeps.problem}")
    idle_limit = rule.idle if rule and rule.idle is not None else policy.defaults.idle
    max_age = rule.max_age if rule and rule.max_age is not None else policy.defaults.max_age
    idle = _idle_seconds(server, now)
    if idle is None:
        return _unsure(server, rule_id, "the hub reports neither last activity nor start time")
    idle_due = _after(now - timedelta(seconds=idle), idle_limit)
    kept_until = None
    if keep is not None and idle_due is not None:
        kept_until = kept_deadline(keep, idle_due, keeps.kept(server.user, server.name), server)
        idle_due = kept_until or idle_due
    age_due = _after(server.started, max_age) if server.started else None
    remove = _remove(policy, rule, server)
    kept = f"; kept until {isoformat(kept_until)}" if kept_until else ""
    if idle_due is not None and now >= idle_due:
        reason = f"no activity for {format_duration(idle)} (limit {format_duration(idle_limit)}, rule {rule_id}){kept}"
        settle = _settle(policy, rule)
        return Decision(
            server, Action.STOP, rule_id, reason, idle, idle_due, remove, settle=settle, kept_until=kept_until
        )
    if age_due is not None and server.started is not None and now >= age_due:
        age = (now - server.started).total_seconds()
        reason = f"running for {format_duration(age)} (max age {format_duration(max_age)}, rule {rule_id})"
        return Decision(server, Action.STOP, rule_id, reason, idle, age_due, remove, settle=_settle(policy, rule))
    stop_at = min((t for t in (idle_due, age_due) if t is not None), default=None)
    limit = format_duration(idle_limit)
    when = f"stops at {isoformat(stop_at)}" if stop_at else "never stopped"
    reason = f"idle {format_duration(idle)} of {limit} (rule {rule_id}){kept}; {when}"
    return Decision(server, Action.KEEP, rule_id, reason, idle, stop_at, remove, kept_until=kept_until)


def next_keep(
    policy: Policy,
    server: ServerSnapshot,
    now: datetime,
    keeps: KeepView = NO_KEEPS,
    plugins: Mapping[str, PluginFn] | None = None,
) -> tuple[str, datetime]:
    """The deciding rule's id and the new kept deadline for one more keep of ``server``; ``KeepRefused``
    (saying why, with the limit) where the policy does not allow it."""
    decision = evaluate(policy, server, now, plugins)
    if decision.action is Action.SKIP:
        raise KeepRefused(f"the server is not running ({decision.reason})")
    if decision.action is Action.EXEMPT:
        raise KeepRefused(f"nothing to keep: the server is {decision.reason}")
    if decision.error:
        raise KeepRefused(f"cannot judge this server now: {decision.error}")
    rule = next((r for r in policy.rules if r.id == decision.rule_id), None)
    if rule is not None and rule.plugin is not None:
        raise KeepRefused(f"rule {rule.id} is decided by the plugin {rule.plugin!r}: keeping does not apply")
    keep = policy.keep_for(rule)
    idle_limit = rule.idle if rule and rule.idle is not None else policy.defaults.idle
    max_age = rule.max_age if rule and rule.max_age is not None else policy.defaults.max_age
    since = server.activity_time
    idle_due = _after(since, idle_limit) if since else None
    age_due = _after(server.started, max_age) if server.started else None
    current = None
    if keep is not None and idle_due is not None:
        current = kept_deadline(keep, idle_due, keeps.kept(server.user, server.name), server)
    return decision.rule_id, next_until(keep, idle_due, age_due, current, now)


def _after(start: datetime, seconds: float) -> datetime | None:
    if math.isinf(seconds):
        return None
    try:
        return start + timedelta(seconds=seconds)
    except OverflowError:  # a limit beyond the year 9999 (e.g. 10000000d) is never
        return None


@dataclass(frozen=True)
class UserDecision:
    user: UserSnapshot
    delete: bool
    reason: str


def evaluate_user(policy: Policy, user: UserSnapshot, now: datetime) -> UserDecision:
    """Whether to delete a user with no running server, under the policy's ``users`` section."""
    section = policy.users
    if section is None:
        return UserDecision(user, False, "user deletion is off")
    if user.has_servers:
        return UserDecision(user, False, "has servers")
    if user.admin and not section.include_admins:
        return UserDecision(user, False, "admin users are not deleted")
    probe = ServerSnapshot(user.name, "", user.admin, user.groups, None, None, None, True)
    shield = _exempting_rule(policy, probe)
    if shield:
        return UserDecision(user, False, f"exempt by rule {shield!r}")
    since = user.last_activity or user.created
    if since is None:
        return UserDecision(user, False, "no activity or creation time")
    inactive = max(0.0, (now - since).total_seconds())
    limit = section.delete_inactive_after
    if inactive >= limit:
        reason = f"inactive for {format_duration(inactive)} (limit {format_duration(limit)})"
        return UserDecision(user, True, reason)
    return UserDecision(user, False, f"inactive for {format_duration(inactive)}")


def _exempting_rule(policy: Policy, probe: ServerSnapshot) -> str | None:
    """The id of an exempt (or plugin) rule that covers this user, or of any rule we cannot evaluate.

    A rule covers a user when its match depends only on who the user is (users, groups, admin): a rule
    about some servers (``servers``, ``profile``, ``user_options``), such as the one ``--cull-default-servers=false``
    makes, protects those servers, not the account.
    """
    for rule in policy.rules:
        criteria = rule.match
        if criteria is not None and (criteria.servers is not None or criteria.options()):
            continue
        matched = match(criteria, probe)
        if matched is None or (matched and (rule.exempt or rule.plugin)):
            return rule.id
    return None
