"""``explain [USER[/SERVER]]``: the decisions for the live hub's servers, read as the service reads them."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp

from culler.adapters.errors import SourceError
from culler.adapters.hub import DEFAULT_LISTING_CAP
from culler.adapters.plugins import installed_plugins
from culler.cli.flags import PROG, UsageError, add_service_flags, flags_policy, settings_from
from culler.core.decide import Decision
from culler.core.explain import changes, changes_table, describe, explain_table
from culler.core.keeps import Kept
from culler.core.snapshot import ServerSnapshot, SnapshotError
from culler.core.text import parse_time, utcnow
from culler.engine.look import Look, decisions_for
from culler.policy.model import load_policy
from culler.settings import Settings
from culler.wiring import make_activity, make_hub


def explain_command(argv: Sequence[str]) -> int:
    try:
        return _explain(argv)
    except (SourceError, SnapshotError) as error:  # the hub could not be read: said in one line
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 1


def _explain(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} explain",
        argument_default=argparse.SUPPRESS,
        description="Explain decisions for the servers on the live hub; stops nothing. With --policy FILE, "
        "show which decisions FILE would change versus the policy in force (--in-force, $CULLER_POLICY, "
        "or the flags).",
    )
    parser.add_argument("target", nargs="?", help="USER or USER/SERVER (default: every ready server)")
    parser.add_argument("--in-force", type=Path, help="the policy in force (default $CULLER_POLICY)")
    parser.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    parser.add_argument(
        "--service-url",
        help="the running service, for its settling servers (default: <hub>/services/<--service-name>/; "
        "needs a token with read:servers)",
    )
    add_service_flags(parser)
    values = vars(parser.parse_args(argv))
    target = values.pop("target", None)
    as_json = values.pop("json", False)
    service_url = values.pop("service_url", None)
    in_force_path = values.pop("in_force", None) or os.environ.get("CULLER_POLICY")
    candidate_path = values.pop("policy", None)
    settings = settings_from(values)
    plugins = installed_plugins()
    in_force = load_policy(Path(in_force_path), sorted(plugins)) if in_force_path else flags_policy(settings)
    candidate = load_policy(Path(candidate_path), sorted(plugins)) if candidate_path else None
    servers = asyncio.run(_fetch(settings, target))
    now = utcnow()
    where = service_url or _default_service_url(settings.url, settings.service_name)
    keeps = asyncio.run(_fetch_keeps(where, settings))  # users' keeps move deadlines: read them as the service does
    current = decisions_for(servers, in_force, plugins, keeps=keeps)
    if keeps.problem and any(d.error and "keeps cannot be read" in d.error for d in current):
        print(f"(keeps unknown: {keeps.problem})", file=sys.stderr)
    if candidate is None or (in_force_path and Path(in_force_path) == Path(candidate_path or "")):
        settling = asyncio.run(_fetch_settling(where, settings))
        _print_decisions(current, now, as_json, settling)
        return 0
    proposed = decisions_for(servers, candidate, plugins, keeps=keeps)
    rows = changes(current, proposed, now)
    print("\n".join(json.dumps(r) for r in rows) if as_json else changes_table(rows, len(servers)))
    return 0


def _print_decisions(decisions: list[Decision], now: Any, as_json: bool, settling: dict[str, Any] | str) -> None:
    known = settling if isinstance(settling, dict) else None
    if as_json:
        for decision in sorted(decisions, key=lambda d: d.server.key):
            print(json.dumps(describe(decision, now, known)))
        return
    print(explain_table(decisions, now, known))
    if isinstance(settling, str) and any(d.settle is not None for d in decisions):
        print(f"(settling state unknown: {settling})")


def _default_service_url(api_url: str, service_name: str) -> str:
    return api_url.rstrip("/").removesuffix("/hub/api") + f"/services/{service_name}/"


async def _service_api(service_url: str, path: str, settings: Settings) -> dict[str, Any] | str:
    """The running service's ``api/<path>`` answer, read with the service's token, or why it could not be."""
    token = settings.api_token.get_secret_value() if settings.api_token else ""
    url = service_url.rstrip("/") + f"/api/{path}"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url, headers={"Authorization": f"token {token}"}) as response,
        ):
            if response.status != 200:
                return f"{url} answered {response.status}"
            body = await response.json()
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        return f"cannot read {url}: {type(error).__name__}"
    return body if isinstance(body, dict) else f"{url} answered no JSON object"


async def _fetch_settling(service_url: str, settings: Settings) -> dict[str, Any] | str:
    """The running service's settling servers by label, or why they could not be read."""
    body = await _service_api(service_url, "settling", settings)
    if isinstance(body, str):
        return body
    return {str(item["server"]): item for item in body.get("settling", []) if isinstance(item, dict)}


class ServiceKeeps:
    """The running service's keeps (``api/keeps``), or why they could not be read."""

    def __init__(self, keeps: list[Kept], problem: str | None) -> None:
        self._keeps = {kept.key: kept for kept in keeps}
        self.problem = problem

    def kept(self, user: str, server: str) -> Kept | None:
        return self._keeps.get(f"{user}/{server}")


async def _fetch_keeps(service_url: str, settings: Settings) -> ServiceKeeps:
    body = await _service_api(service_url, "keeps", settings)
    if isinstance(body, str):
        return ServiceKeeps([], body)
    try:
        keeps = [_kept(item) for item in body.get("keeps", [])]
    except (ValueError, KeyError, TypeError) as error:
        return ServiceKeeps([], f"the service's keeps are unreadable: {type(error).__name__}")
    return ServiceKeeps(keeps, body.get("problem"))


def _kept(item: dict[str, Any]) -> Kept:
    until, at = parse_time(item["until"]), parse_time(item["at"])
    if until is None or at is None:
        raise ValueError("a keep without times")
    return Kept(str(item["user"]), str(item["server"]), until, str(item["by"]), at, parse_time(item.get("started")))


async def _fetch(settings: Settings, target: str | None) -> list[ServerSnapshot]:
    """The servers to explain, read as the service reads them (culler.look)."""
    async with AsyncExitStack() as sessions:
        hub = make_hub(settings)
        sessions.push_async_callback(hub.close)
        activity = make_activity(settings)
        if activity is not None:
            sessions.push_async_callback(activity.close)
        return await _fetch_servers(Look(hub, activity), target)


async def _fetch_servers(look: Look, target: str | None) -> list[ServerSnapshot]:
    if target is None:
        listing = await look.everything(DEFAULT_LISTING_CAP)
        for problem in listing.problems:  # as the service does: skip that user, keep going
            print(f"skipped: {problem}", file=sys.stderr)
        return list(listing.servers.values())
    user, _, server = target.partition("/")
    found = await look.user(user, server if "/" in target else None)
    if found is None:
        raise UsageError(f"no user {user!r} on the hub")
    return found
