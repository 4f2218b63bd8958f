"""The tree-scan probe reads the home KubeSpawner names, under both slug schemes, on a real hub.

Homes here are directories named the way KubeSpawner names a Zero to JupyterHub lab's ``subPath:
"{username}"`` (``kubespawner.slugs``, the reference, not our code), for users whose hub names are not
valid Kubernetes names. A writer appends to such a home: the stop waits while it runs and comes soon after
it ends, verified. Had the probe read the raw name's directory (missing), the stop would wait for the cap
and go through unverified.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from realhub_support import CullerHub, start_culler_hub_with, wait_for
from settle_support import Writer, exited, seen_at, settling_state

pytestmark = pytest.mark.realhub
slugs = pytest.importorskip("kubespawner.slugs")

IDLE, WINDOW, CAP, SETTLE_POLL, CULL_EVERY = 3, 3, 60, 1, 2
SETTLED_BOUND = WINDOW + 2 * SETTLE_POLL + 3  # as in test_settle_realhub: window, two polls, slack
USERS = {"safe": "J.Smith_lab", "escape": "jane.doe-lab"}
POLICY = f"""\
version: 1
defaults:
  idle: 1h
rules:
  - id: named-homes
    match: {{users: ["{USERS["safe"]}", "{USERS["escape"]}"]}}
    idle: {IDLE}s
    settle: {{probes: [tree-scan], window: {WINDOW}s, max_deferral: {CAP}s}}
"""


def kubespawner_home(scheme: str, user: str) -> str:
    return slugs.safe_slug(user, max_length=48) if scheme == "safe" else slugs.escape_slug(user)


@pytest.fixture(scope="module", params=["safe", "escape"])
def scheme(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def hub(scheme: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    workdir = tmp_path_factory.mktemp(f"names-{scheme}")

    def env(hub: object) -> dict[str, str | None]:
        return {
            "CULLER_TREE_SCAN_PATH": str(workdir / "homes" / "{username}"),
            "CULLER_SLUG_SCHEME": scheme,
            "CULLER_SETTLE_POLL": str(SETTLE_POLL),
        }

    yield from start_culler_hub_with(workdir, POLICY, env, dry_run=False, cull_every=CULL_EVERY)


async def test_a_kubespawner_named_home_defers_the_stop_until_quiet(
    hub: CullerHub, scheme: str, writer: Writer
) -> None:
    user = USERS[scheme]
    home = hub.workdir.parent / "homes" / kubespawner_home(scheme, user)
    assert home.name != user, "the name must differ from the raw one, or the test proves nothing"
    since = hub.log_offset()
    process = writer(home / "train.log", IDLE + WINDOW + 6)
    await hub.start_servers((user, "", None))
    admitted = await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
    assert admitted["rule"] == "named-homes"

    async def probe_sees_writes() -> bool:
        state = await settling_state(hub, user)
        return str((state or {}).get("probes", {}).get("tree-scan", "")).startswith("active")  # type: ignore[union-attr]

    await wait_for(probe_sees_writes, 10, f"the tree-scan probe to see the writer in {home.name}")
    assert process.poll() is None, "the writer ended before the probe saw it"
    await exited(process, IDLE + WINDOW + 20)
    last_write = (home / "train.log").stat().st_mtime
    assert await hub.is_running(user), "stopped while its home was being written to"
    settled, seen = await seen_at(hub, "home settled; stopping", SETTLED_BOUND + 10, since, user=user)
    print(f"\n[{scheme}] {user} -> {home.name}: settled {seen - last_write:.1f}s after the last write")
    assert WINDOW <= seen - last_write <= SETTLED_BOUND
    assert settled["rule"] == "named-homes"
    stopped, _ = await seen_at(hub, "server stopped", 20, since, user=user)
    assert stopped["settle"] == "verified", stopped
    assert time.time() - last_write < CAP, "the stop came at the cap, not when the home settled"
