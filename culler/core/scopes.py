"""Which hub scopes the service needs for its settings and policy, and which its token lacks (pure).

The hub answers ``GET /hub/api/user`` with the token's expanded scopes; a filtered scope
(``read:servers!group=lab``) counts as held, for what it covers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from culler.policy.model import Policy


@dataclass(frozen=True)
class Need:
    scope: str
    why: str
    every_cycle: bool  # missing: not ready, nothing stopped; else only what needs it degrades


def needs(policy: Policy | None, dry_run: bool) -> list[Need]:
    found = [
        Need("list:users", "list users and their servers", True),
        Need("read:servers", "read servers, their activity and user_options", True),
    ]
    if not dry_run:
        found.append(Need("delete:servers", "stop servers", True))
    if policy is not None and any(rule.match and rule.match.groups is not None for rule in policy.rules):
        found.append(Need("read:users:groups", "group rules (servers they could match are kept)", False))
    if policy is not None and policy.users is not None:
        found.append(Need("read:users:activity", "judge users for deletion (none is deleted)", False))
        if not dry_run:
            found.append(Need("admin:users", "delete inactive users (none is deleted)", False))
    return found


def held(scopes: Iterable[str], scope: str) -> bool:
    return any(have == scope or have.startswith(scope + "!") for have in scopes)


def missing(scopes: Iterable[str], wanted: list[Need]) -> list[Need]:
    have = list(scopes)
    return [need for need in wanted if not held(have, need.scope)]


def describe(lacking: list[Need]) -> str:
    return "; ".join(f"{need.scope} (to {need.why})" for need in lacking)
