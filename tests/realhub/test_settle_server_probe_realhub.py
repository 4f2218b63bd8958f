"""The settle gate with the ``server`` probe only: no shared mount, the service asks each due server's own
extension (extension/) at its route's target with the probe token. The writers run inside the server (in
one of its terminals), as a user's job does: one under the home defers the stop until the home has been
quiet for the window; one outside the roots, or streaming to a pipe, does not; nor does a writer under
the home that a stop would not kill (outside the server's process tree)."""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from realhub_support import CullerHub, start_culler_hub_with
from server_shell import ended, run_in_terminal, server_base, start_writer
from settle_support import Writer, seen_at

pytest.importorskip("activity_culler_probe")  # installed into the test environment by ./dev from extension/
pytestmark = pytest.mark.realhub

IDLE = 4
WINDOW = 3
SETTLE_POLL = 1
SAMPLE = 0.5  # the extension's sampling interval here
# After the last write: the extension sees the change at its next sample, then quiet must last a window up
# to a later sample (quiet is claimed only up to the latest sample); the service sees that at a settle
# poll, re-reads the server once and sends the DELETE. The slack covers the re-read, the hub's answer and
# this test's look at the hub's log (every 0.2 s) on a busy machine.
SLACK = 3
SETTLED_BOUND = WINDOW + 2 * SAMPLE + 2 * SETTLE_POLL + SLACK
PROBE_TOKEN = secrets.token_hex(16)
CAP = 8
# The deploy snippet registers the probe's own service, role and custom scope from CULLER_PROBE_TOKEN.
# Users named real-bare-* get a server whose extension is switched off in its user config (a user image
# without the probe).
PROBE_CONFIG = f"""
# processes=tree: this hub runs local servers (in a container, where auto would take every process)
# max_cpu=0.5: keep the pause at SAMPLE (reading every process of this busy test machine costs more than
# 1 % of a core at 0.5 s, which would lengthen the pause in proportion)
c.Spawner.args.extend([
    "--ActivityCullerProbe.interval={SAMPLE}",
    "--ActivityCullerProbe.max_cpu=0.5",
    "--ActivityCullerProbe.processes=tree",
])
import json as _json, os as _os
def _bare(spawner):
    if spawner.user.name.startswith("real-bare"):
        config_dir = _os.path.join(spawner.notebook_dir or "/tmp", ".jupyter-bare-" + spawner.user.name)
        _os.makedirs(config_dir, exist_ok=True)
        with open(_os.path.join(config_dir, "jupyter_server_config.json"), "w") as out:
            _json.dump({{"ServerApp": {{"jpserver_extensions": {{"activity_culler_probe": False}}}}}}, out)
        spawner.environment = {{**spawner.environment, "JUPYTER_CONFIG_DIR": config_dir}}
c.Spawner.pre_spawn_hook = _bare
"""
POLICY = f"""\
version: 1
defaults:
  idle: 1h
rules:
  - id: bare
    match: {{users: ["real-bare-*"]}}
    idle: {IDLE}s
    settle: {{probes: [server], window: {WINDOW}s, max_deferral: {CAP}s, at_cap: stop}}
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


async def delete_seen(hub: CullerHub, user: str, since: int, timeout: float) -> float:
    """The wall-clock time the hub's log first showed the stop request for ``user``'s server."""
    await hub.wait_log(rf"DELETE /hub/api/users/{user}/server\b", timeout=timeout, since=since)
    return time.time()


async def test_a_writer_inside_the_server_defers_the_stop_until_quiet(hub: CullerHub, tmp_path: Path) -> None:
    await hub.wait_policy(POLICY)
    user = "real-trainer"
    since, hub_since = hub.log_offset(), hub.hub.log_offset()
    ready = await hub.start_servers((user, "", None))
    data = hub.home(user) / "results" / "train.log"
    write_for = IDLE + WINDOW + 5
    done = await start_writer(hub, user, data, write_for, scratch=tmp_path)

    admitted = await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
    assert admitted["probes"] == "server" and not done.exists()
    last_write = await ended(done, write_for + 15)
    assert time.monotonic() - ready >= IDLE + WINDOW + 3, "the writer did not run well past idle + window"
    assert await hub.is_running(user), "stopped while the home was being written to"

    deleted = await delete_seen(hub, user, hub_since, SETTLED_BOUND + 10)
    after_last_write = deleted - last_write
    print(f"\nlast write -> DELETE seen: {after_last_write:.1f}s (bound {SETTLED_BOUND:g}s)")
    settled = hub.events("home settled; stopping", since, user=user)
    assert settled and settled[0]["rule"] == "in-server"
    assert after_last_write >= WINDOW, "let go before the home was quiet for the window"
    assert after_last_write <= SETTLED_BOUND
    stopped = await hub.wait_event("server stopped", timeout=20, since=since, user=user)
    assert stopped["settle"] == "verified"
    lines = data.read_text().splitlines()
    assert lines and all(line == "x" * 64 for line in lines), "a line was cut short"


# 60 s of lines into a pipe (bounded, so nothing outlives the test even if the stop did not end it)
PIPE_WRITER = (
    f"{sys.executable} -c 'import time; [print(64 * \"x\", flush=True) or time.sleep(0.05) for _ in range(1200)]'"
    " | cat > /dev/null &"
)


async def test_writers_outside_the_roots_and_to_a_pipe_do_not_defer(hub: CullerHub, tmp_path: Path) -> None:
    await hub.wait_policy(POLICY)
    user = "real-tmp-writer"
    since = hub.log_offset()
    await hub.start_servers((user, "", None))
    scratch = hub.workdir / "not-a-home" / "scratch.log"  # outside every root of the server
    done = await start_writer(hub, user, scratch, IDLE + WINDOW + 30, scratch=tmp_path)
    await run_in_terminal(hub, user, PIPE_WRITER)
    await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
    await seen_at(hub, "home settled; stopping", SETTLED_BOUND + 10, since, user=user)
    assert not done.exists() and scratch.stat().st_size > 0, "the writer ended first, or never wrote"


async def test_a_writer_the_stop_would_not_kill_does_not_defer(hub: CullerHub, writer: Writer) -> None:
    """A process outside the server's tree (another pod on a shared volume, a backup job) appends to the
    home: a stop cannot cut its writes short, so they do not hold the server."""
    await hub.wait_policy(POLICY)
    user = "real-shared-home"
    since = hub.log_offset()
    await hub.start_servers((user, "", None))
    process = writer(hub.home(user) / "from-elsewhere.log", IDLE + WINDOW + 30)
    await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
    await seen_at(hub, "home settled; stopping", SETTLED_BOUND + 10, since, user=user)
    assert process.poll() is None, "the writer ended first: the test proves nothing"


async def test_a_burst_writer_every_two_seconds_defers_the_stop(hub: CullerHub, tmp_path: Path) -> None:
    await hub.wait_policy(POLICY)
    user = "real-burst"
    since = hub.log_offset()
    ready = await hub.start_servers((user, "", None))
    data = hub.home(user) / "bursts.log"
    write_for = IDLE + WINDOW + 6
    done = await start_writer(hub, user, data, write_for, pause=2, scratch=tmp_path)
    await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
    last_write = await ended(done, write_for + 15)
    assert time.monotonic() - ready >= IDLE + WINDOW + 3
    assert await hub.is_running(user), "a write every 2 s, shorter than the window, must keep deferring"
    _, seen = await seen_at(hub, "home settled; stopping", SETTLED_BOUND + 10, since, user=user)
    assert seen - last_write >= WINDOW


async def test_only_the_probe_token_is_answered_not_the_main_token(hub: CullerHub) -> None:
    """The service's main token (it can stop servers) holds no probe scope: the extension refuses it."""
    user = "real-token-check"
    await hub.start_servers((user, "", None))
    url = await server_base(hub, user) + "api/activity-culler/probe"
    async with aiohttp.ClientSession() as session:
        for token, expected in ((hub.service_token(), 403), (PROBE_TOKEN, 200)):
            async with session.get(url, headers={"Authorization": f"token {token}"}) as response:
                assert response.status == expected, await response.text()


async def test_a_server_without_the_extension_cannot_tell_until_the_cap(hub: CullerHub) -> None:
    await hub.wait_policy(POLICY)
    user = "real-bare-server"
    since = hub.log_offset()
    await hub.start_servers((user, "", None))
    capped = await hub.wait_event(
        "settle cap reached; stopping unverified", timeout=IDLE + CAP + 20, since=since, user=user
    )
    assert capped["rule"] == "bare"
    said = hub.events("settle probe cannot tell; deferring the stop", since, user=user)
    assert len(said) == 1 and "no probe extension" in str(said[0].get("error")), said  # said once, not every poll
    stopped = await hub.wait_event("server stopped", timeout=20, since=since, user=user)
    assert stopped["settle"] == "unverified"
