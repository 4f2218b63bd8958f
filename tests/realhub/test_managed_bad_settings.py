"""A hub-managed service with an invalid setting keeps serving, unready, and the hub stays up.

JupyterHub exits at start when a managed service with a ``url`` does not answer (it counts any 5xx as
down), so an exiting service would take the hub with it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from realhub_support import SERVICE, CullerHub, start_culler_hub, wait_for

pytestmark = pytest.mark.realhub

POLICY = """\
version: 1
defaults:
  idle: 2s
"""


BAD = {
    "numbers": ({"CULLER_CONCURRENCY": "-3", "CULLER_LISTING_DEADLINE": "soon"}, ["--concurrency"]),
    # a placeholder the hub's API cannot fill: named once, never retried at every settle poll
    "placeholder": ({"CULLER_TREE_SCAN_PATH": "/homes/{userid}"}, ["--tree-scan-path", "unknown placeholder {userid}"]),
}


@pytest.fixture(params=sorted(BAD))
def bad(request: pytest.FixtureRequest) -> tuple[dict[str, str], list[str]]:
    return BAD[request.param]


@pytest.fixture
def hub(tmp_path: Path, bad: tuple[dict[str, str], list[str]]) -> Iterator[CullerHub]:
    yield from start_culler_hub(tmp_path, POLICY, dry_run=False, cull_every=1, env=bad[0])


async def test_invalid_settings_keep_the_service_serving_unready(
    hub: CullerHub, bad: tuple[dict[str, str], list[str]]
) -> None:
    # the hub started (its own start-up check of the service's url passed) and stays up
    status, _ = await hub.get(f"{hub.url}/hub/health")
    assert status == 200
    model = await hub.api("GET", f"services/{SERVICE}")
    assert model["pid"], "the service is not running"
    status, body = await hub.wait_service()
    assert status == 503 and body["status"] == "unavailable", body
    assert "invalid settings" in body["reason"], body
    assert all(part in body["reason"] for part in bad[1]), body
    assert (await hub.get(hub.service_url() + "live"))[0] == 200
    assert (await hub.get(hub.service_url()))[0] == 200  # never a 5xx on the prefix root

    # nothing is culled, though the server is idle past the policy's 2 s for a while
    await hub.start_servers(("bad-settings", "", None))
    deadline = time.monotonic() + 6

    async def window_passed() -> bool:
        status, body = await hub.get(hub.service_url() + "health")
        assert status == 503, body
        assert await hub.is_running("bad-settings"), "a server was stopped under invalid settings"
        return time.monotonic() >= deadline

    await wait_for(window_passed, 20, "six seconds of an idle server under invalid settings", interval=0.5)
    assert hub.hub.log_text(0).count("invalid settings; serving health 503") == 1
    assert (await hub.api("GET", f"services/{SERVICE}"))["pid"] == model["pid"], "the service was restarted"
