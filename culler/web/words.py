"""A policy rule in the words a user reads on the activity page (pure): "Servers with the gpu profile stop
after 1 day without a visit." An admin's ``description`` on the rule is used as it is written."""

from __future__ import annotations

import math

from culler.core.text import humanize
from culler.policy.model import Match, Policy, Rule

MAX_NAMES = 3  # a long list of globs reads worse than "and 5 more"


def rule_words(policy: Policy | None, rule_id: str) -> str:
    if policy is None:
        return "No valid policy is in force: nothing is stopped until the admins fix it."
    rule = next((r for r in policy.rules if r.id == rule_id), None)
    if rule is not None and rule.description:
        return rule.description
    return f"{_subject(rule)} {_predicate(policy, rule)}."


def keep_words(policy: Policy | None, rule_id: str) -> str | None:
    """How far keeping goes under this rule; None where it cannot be kept."""
    if policy is None:
        return None
    keep = policy.keep_for(next((r for r in policy.rules if r.id == rule_id), None))
    if keep is None:
        return None
    return f"Each keep adds {humanize(keep.step)}, up to {humanize(keep.max)} past the usual stop."


def _names(values: list[str]) -> str:
    shown = [f"“{v}”" if v else "the default server" for v in values[:MAX_NAMES]]
    more = len(values) - len(shown)
    return " or ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def _subject(rule: Rule | None) -> str:
    match: Match | None = rule.match if rule is not None else None
    if rule is None or match is None:
        return "Servers" if rule is None else f"Servers under rule “{rule.id}”"
    if match.profile:
        return f"Servers with the {_names(list(match.profile))} profile"
    if match.groups:
        return f"Servers of the group {_names(list(match.groups))}"
    if match.users:
        return f"Servers of {_names(list(match.users))}"
    if match.servers:
        return f"Servers named {_names(list(match.servers))}"
    if match.admin is not None:
        return "Admins' servers" if match.admin else "Servers of users who are not admins"
    return f"Servers under rule “{rule.id}”"


def _predicate(policy: Policy, rule: Rule | None) -> str:
    if rule is not None and rule.exempt:
        return "are never stopped"
    if rule is not None and rule.plugin:
        return f"are judged by the admins' plugin “{rule.plugin}”"
    idle = rule.idle if rule is not None and rule.idle is not None else policy.defaults.idle
    age = rule.max_age if rule is not None and rule.max_age is not None else policy.defaults.max_age
    parts = []
    if not math.isinf(idle):
        parts.append(f"stop after {humanize(idle)} without a visit")
    if not math.isinf(age):
        parts.append(f"stop {humanize(age)} after they start, visited or not")
    return " and ".join(parts) if parts else "are not stopped for idleness"
