"""The settle gate with the ``server`` probe only: no shared mount, the service asks each due server's own
extension (extension/) at its route's target with the probe token. A writer under the home defers the
stop until the home has been quiet for the window; a writer to a directory outside the roots does not."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from realhub_support import CullerHub, start_culler_hub_with
from settle_support import Writer, exited, seen_at

pytest.importorskip("activity_culler_probe")  # installed into the test environment by ./dev from extension/
pytestmark = pytest.mark.realhub

IDLE = 4
WINDOW = 3
SETTLE_POLL = 1
SAMPLE = 0.5  # the extension's sampling interval here
# After the last write: the extension sees the change at its next sample, then quiet must last a window;
# the service sees that at a settle poll, then re-reads the server once before the stop.
SETTLED_BOUND = WINDOW + SAMPLE + 2 * SETTLE_POLL + 3
PROBE_TOKEN = secrets.token_hex(16)
# The deploy snippet registers the probe's own service, role and custom scope from CULLER_PROBE_TOKEN.
PROBE_CONFIG = f"""
c.Spawner.args.append("--ActivityCullerProbe.interval={SAMPLE}")
"""
POLICY = f"""\
version: 1
defaults:
  idle: 1h
rules:
  - id: in-server
    match: {{users: ["real-*"]}}
    idle: {IDLE}s
    settle: {{probes: [server], window: {WINDOW}s, max_deferral: 60s}}
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    yield from start_culler_hub_with(
        tmp_path_factory.mktemp("server-probe"),
        POLICY,
        lambda hub: {
            "CULLER_PROBE_TOKEN": PROBE_TOKEN,
            "CULLER_PROXY_API_URL": hub.proxy_api_url,
            "CULLER_PROXY_API_TOKEN": hub.proxy_token,
            "CULLER_SETTLE_POLL": f"{SETTLE_POLL}",
        },
        dry_run=False,
        cull_every=2,
        last_activity_interval=1,
        extra_config=PROBE_CONFIG,
    )


async def test_a_writer_under_the_home_defers_the_stop_until_quiet(hub: CullerHub, writer: Writer) -> None:
    await hub.wait_policy(POLICY)
    user = "real-trainer"
    since = hub.log_offset()
    ready = await hub.start_servers((user, "", None))
    data = hub.home(user) / "results" / "train.log"
    write_for = IDLE + WINDOW + 5
    process = writer(data, write_for)

    admitted = await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
    assert admitted["probes"] == "server" and process.poll() is None
    writer_end = await exited(process, write_for + 10)
    assert writer_end - ready >= IDLE + WINDOW + 3, "the writer did not run well past idle + window"
    assert await hub.is_running(user), "stopped while the home was being written to"
    last_write = data.stat().st_mtime

    settled, seen = await seen_at(hub, "home settled; stopping", SETTLED_BOUND + 10, since, user=user)
    after_last_write = seen - last_write
    print(f"\nlast write -> 'home settled' seen: {after_last_write:.1f}s (bound {SETTLED_BOUND:g}s)")
    assert settled["rule"] == "in-server"
    assert after_last_write >= WINDOW, "let go before the home was quiet for the window"
    assert after_last_write <= SETTLED_BOUND
    stopped = await hub.wait_event("server stopped", timeout=20, since=since, user=user)
    assert stopped["settle"] == "verified"
    lines = data.read_text().splitlines()
    assert lines and all(line == "x" * 64 for line in lines), "a line was cut short"


async def test_a_writer_outside_the_roots_does_not_defer(hub: CullerHub, writer: Writer) -> None:
    await hub.wait_policy(POLICY)
    user = "real-tmp-writer"
    since = hub.log_offset()
    await hub.start_servers((user, "", None))
    process = writer(hub.workdir / "not-a-home" / "scratch.log", IDLE + WINDOW + 30)
    await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
    await seen_at(hub, "home settled; stopping", SETTLED_BOUND + 10, since, user=user)
    assert process.poll() is None, "the writer ended first: the test proves nothing"
