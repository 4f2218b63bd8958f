"""The settle gate with the ``server`` probe only: no shared mount, the service asks each due server's own
extension (extension/) at its route's target with the probe token. A writer under the home defers the
stop until the home has been quiet for the window; a writer to a directory outside the roots does not."""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from process_support import start_process, stop_process
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
CAP = 8
# The deploy snippet registers the probe's own service, role and custom scope from CULLER_PROBE_TOKEN.
# Users named real-bare-* get a server whose extension is switched off in its user config (a user image
# without the probe).
PROBE_CONFIG = f"""
c.Spawner.args.append("--ActivityCullerProbe.interval={SAMPLE}")
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


PIPE_WRITER = (
    f"{sys.executable} -c 'import sys, time\nwhile True:\n    print(\"x\" * 64, flush=True)\n    time.sleep(0.05)'"
    " | cat > /dev/null"
)


async def test_writers_outside_the_roots_and_to_a_pipe_do_not_defer(
    hub: CullerHub, writer: Writer, tmp_path: Path
) -> None:
    await hub.wait_policy(POLICY)
    user = "real-tmp-writer"
    since = hub.log_offset()
    await hub.start_servers((user, "", None))
    process = writer(hub.workdir / "not-a-home" / "scratch.log", IDLE + WINDOW + 30)
    piping = start_process(["sh", "-c", PIPE_WRITER], tmp_path / "pipe.log")
    try:
        await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
        await seen_at(hub, "home settled; stopping", SETTLED_BOUND + 10, since, user=user)
        assert process.poll() is None and piping.poll() is None, "a writer ended first: the test proves nothing"
    finally:
        stop_process(piping)


BURST_WRITER = """\
import sys, time
path, seconds = sys.argv[1], float(sys.argv[2])
end = time.monotonic() + seconds
while time.monotonic() < end:
    with open(path, "a") as out:  # open, append, close: no file stays open between writes
        out.write("x" * 64 + "\\n")
    time.sleep(2)
"""


async def test_a_burst_writer_every_two_seconds_defers_the_stop(hub: CullerHub, tmp_path: Path) -> None:
    await hub.wait_policy(POLICY)
    user = "real-burst"
    since = hub.log_offset()
    ready = await hub.start_servers((user, "", None))
    data = hub.home(user) / "bursts.log"
    write_for = IDLE + WINDOW + 6
    process = start_process([sys.executable, "-c", BURST_WRITER, str(data), f"{write_for:g}"], tmp_path / "burst.log")
    try:
        await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
        writer_end = await exited(process, write_for + 10)
    finally:
        stop_process(process)
    assert writer_end - ready >= IDLE + WINDOW + 3
    assert await hub.is_running(user), "a write every 2 s, shorter than the window, must keep deferring"
    last_write = data.stat().st_mtime
    _, seen = await seen_at(hub, "home settled; stopping", SETTLED_BOUND + 10, since, user=user)
    assert seen - last_write >= WINDOW


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
