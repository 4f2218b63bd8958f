"""The service checks its token's scopes with a real hub: a role that lacks a scope is named on health.

The shipped snippet grants the service's role; here the hub's config then removes one scope from it, as a
lab's own roles might. Without ``read:users:groups`` the servers a group rule could match are kept and the
scope is named; without ``delete:servers`` the service is not ready, names it, and stops nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from realhub_support import CullerHub, start_culler_hub, wait_for

pytestmark = pytest.mark.realhub

POLICY = """\
version: 1
defaults:
  idle: 2s
rules:
  - id: vip
    match: {groups: [vip]}
    exempt: true
"""


def without(scope: str) -> str:
    return f"""
for _role in c.JupyterHub.load_roles:
    if _role.get("name") == "activity-culler-service":
        _role["scopes"] = [s for s in _role["scopes"] if s != {scope!r}]
"""


@pytest.fixture
def hub_without(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[CullerHub]:
    yield from start_culler_hub(tmp_path, POLICY, dry_run=False, cull_every=1, extra_config=without(request.param))


@pytest.mark.parametrize("hub_without", ["read:users:groups"], indirect=True)
async def test_without_the_groups_scope_group_rules_keep_their_servers(hub_without: CullerHub) -> None:
    hub = hub_without
    since = hub.log_offset()
    await hub.start_servers(("scope-ann", "", None))

    async def degraded() -> dict[str, object] | None:
        status, body = await hub.health()
        return body if status == 200 and "read:users:groups" in str(body.get("degraded")) else None

    body = await wait_for(degraded, 20, "health to name the missing read:users:groups")
    assert body["status"] == "ok", body
    deadline = time.monotonic() + 5  # well past the 2 s idle limit, a few cycles

    async def kept() -> bool:
        assert await hub.is_running("scope-ann"), "a server a group rule could match was stopped"
        return time.monotonic() >= deadline

    await wait_for(kept, 15, "five seconds of an idle server whose groups the service cannot read", interval=0.5)
    # said once, at start (the check runs before the first cycle)
    assert (
        len(hub.events("the token lacks read:users:groups (to group rules (servers they could match are kept))")) == 1
    )
    assert not hub.events("server stopped", since)


@pytest.mark.parametrize("hub_without", ["delete:servers"], indirect=True)
async def test_without_delete_servers_the_service_is_not_ready_and_stops_nothing(hub_without: CullerHub) -> None:
    hub = hub_without
    await hub.start_servers(("scope-bob", "", None))
    await hub.wait_service()

    async def unready() -> dict[str, object] | None:
        status, body = await hub.health()
        return body if status == 503 and "delete:servers" in str(body.get("reason")) else None

    body = await wait_for(unready, 20, "health 503 naming delete:servers")
    assert body["reason"] == "the token lacks delete:servers (to stop servers)", body
    assert await hub.is_running("scope-bob")
    refused = re.search(r"\b403 (GET|DELETE|POST)\b.*", hub.log_text())
    assert refused is None, f"the service tried what its token may not do: {refused and refused[0]}"
