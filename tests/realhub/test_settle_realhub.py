"""The settle gate against a real JupyterHub + configurable-http-proxy, with the tree-scan probe.

The service scans the homes the hub's spawner uses (``<hub workdir>/home/{username}``); writers are
real processes appending to files there. One hub for the module; each group of user names has its
own rule. Windows, caps and polls are seconds so the module stays short.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from realhub_support import CullerHub, culler_env, start_culler_hub_with, stop_process, wait_for
from settle_support import Writer, assert_no_restart, exited, seen_at, settling_state, waited

pytestmark = pytest.mark.realhub

IDLE = 4  # the real writer's server: a real server's start (3-5 s) does not count against it
CAP_IDLE = 3
WINDOW = 3
CAP = 8
SETTLE_POLL = 1
CULL_EVERY = 2
# The tree-scan vouches for quiet between the end of one pass and the start of a later equal pass,
# so after the last write the gate lets go within the window plus up to two polls (and a confirming
# re-read; the test sees the log line at its own polling pace).
SETTLED_BOUND = WINDOW + 2 * SETTLE_POLL + 3
# The hub's own stop of a real jupyterhub-singleuser is not ours to time: it only has to come long
# before the 60 s max_deferral, which is what an unverified stop would take.
HUB_STOP_BOUND = 20

POLICY = f"""\
version: 1
defaults:
  idle: 1h
rules:
  - id: writer
    match: {{users: ["real-writer*"]}}
    idle: {IDLE}s
    settle: {{probes: [tree-scan], window: {WINDOW}s, max_deferral: 60s}}
  - id: cap-stop
    match: {{users: ["cap-stop-*"]}}
    idle: {CAP_IDLE}s
    settle: {{probes: [tree-scan], window: {WINDOW}s, max_deferral: {CAP}s, at_cap: stop}}
  - id: cap-skip
    match: {{users: ["cap-skip-*"]}}
    idle: {CAP_IDLE}s
    settle: {{probes: [tree-scan], window: {WINDOW}s, max_deferral: {CAP}s, at_cap: skip}}
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CullerHub]:
    yield from start_culler_hub_with(
        tmp_path_factory.mktemp("settle"),
        POLICY,
        lambda hub: {"CULLER_TREE_SCAN_PATH": hub.home_template, "CULLER_SETTLE_POLL": f"{SETTLE_POLL}"},
        dry_run=False,
        cull_every=CULL_EVERY,
        # The hub records a server's first last_activity (its route's creation) at its next proxy poll;
        # until then the service counts from the server's start. A poll every second gets that done
        # before any server here is due (a later jump would cancel and restart the settling).
        last_activity_interval=1,
    )


@pytest.fixture(autouse=True)
async def policy_in_force(hub: CullerHub) -> None:
    await hub.wait_policy(POLICY)


async def states_sum_to_the_listed_servers(hub: CullerHub) -> None:
    """While a server settles, the per-state gauge counts each listed server once (settling is not due too)."""
    await hub.create_users(["settle-metrics-reader"])
    token = await hub.user_token("settle-metrics-reader", note="metrics")  # the snippet's user role may read them

    async def agree() -> bool:
        status, text = await hub.get(hub.service_url() + "metrics", token=token)
        assert status == 200, text
        states = {
            m[1]: float(m[2]) for m in re.finditer(r'^activity_culler_servers\{state="(\w+)"\} (\S+)$', text, re.M)
        }
        _, listed = await hub.get(hub.service_url() + "api/servers?all=1", token=hub.admin_token)
        return states.get("settling", 0) >= 1 and sum(states.values()) == len(listed["servers"])

    await wait_for(agree, 15, "the per-state server gauge to sum to the servers the last cycle listed")


async def explain(hub: CullerHub, target: str) -> str:
    """``explain TARGET`` against the live hub, as an admin would run it (it reads the service's
    settling servers through the proxy with the admin's token)."""
    env = culler_env(JUPYTERHUB_API_TOKEN=hub.admin_token, CULLER_POLICY=str(hub.policy))
    command = [sys.executable, "-m", "culler", "explain", target, "--url", hub.api_url]
    done = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_writer_defers_the_stop(hub: CullerHub, writer: Writer) -> None:
    """A real server whose home a process keeps writing to is due, but stopped only once the home has
    been quiet for the settle window; the stop is counted verified."""
    user = "real-writer"
    since = hub.log_offset()
    ready = await hub.start_servers((user, "", None))
    home = hub.home(user)
    assert home.is_dir(), "the spawner did not create the user's home where the probe looks"
    data = home / "results" / "output.log"
    write_for = IDLE + WINDOW + 5  # well past the moment the server is due plus a window
    process = writer(data, write_for)

    admitted = await hub.wait_event("settling before stop", timeout=IDLE + 15, since=since, user=user)
    assert process.poll() is None, "the writer ended before the server was due: the test proves nothing"
    assert admitted["rule"] == "writer" and admitted["probes"] == "tree-scan"

    async def probe_sees_writes() -> bool:
        state = await settling_state(hub, user)
        probes = state["probes"] if state else {}
        return str(probes.get("tree-scan", "")).startswith("active")  # type: ignore[union-attr]

    await wait_for(probe_sees_writes, 10, "the tree-scan probe to report the writer (api/settling)")
    assert process.poll() is None, "the writer ended before the probe saw it"
    await states_sum_to_the_listed_servers(hub)
    explained = await explain(hub, user)
    assert "settling since" in explained and "tree-scan: active" in explained, explained

    writer_end = await exited(process, write_for + 10)
    last_write = data.stat().st_mtime
    assert writer_end - ready >= IDLE + WINDOW + 3, "the writer did not run well past idle + window"
    assert await hub.is_running(user), "the server was stopped while its home was being written to"
    assert not hub.events("server stopped", since, user=user)
    assert_no_restart(hub, since, user)

    settled, seen = await seen_at(hub, "home settled; stopping", SETTLED_BOUND + 10, since, user=user)
    after_last_write = seen - last_write
    print(f"\nwriter end -> 'home settled' seen: {after_last_write:.1f}s (bound {SETTLED_BOUND}s)")
    assert settled["rule"] == "writer"
    # seen at most ~0.1 s after it was logged, so letting go earlier than the window would show here
    assert after_last_write >= WINDOW, "stopped before the home was quiet for the window"
    assert after_last_write <= SETTLED_BOUND, f"settled {after_last_write:.1f}s after the last write"
    event, stopped = await seen_at(hub, "server stopped", HUB_STOP_BOUND, since, user=user)
    print(f"'home settled' -> 'server stopped' seen: {stopped - seen:.1f}s (the hub's stop)")
    assert event["settle"] == "verified"
    assert event["rule"] == "writer"
    await hub.wait_server(user, ready=False, timeout=10)


async def test_never_ending_writer_meets_the_cap(hub: CullerHub, writer: Writer) -> None:
    """A home that never settles: at max_deferral, at_cap: stop stops it unverified; at_cap: skip keeps
    the server (reported once) and still stops it, verified, once the writer ends."""
    stop_user, skip_user = "cap-stop-writer", "cap-skip-writer"
    since = hub.log_offset()
    stop_writer = writer(hub.home(stop_user) / "out.log", CAP + 40)
    skip_writer = writer(hub.home(skip_user) / "out.log", CAP + 40)
    await hub.start_servers((stop_user, "", None), (skip_user, "", None))

    capped = await hub.wait_event(
        "settle cap reached; stopping unverified", timeout=CAP_IDLE + CAP + 15, since=since, user=stop_user
    )
    assert waited(capped) >= CAP
    stopped = await hub.wait_event("server stopped", timeout=10, since=since, user=stop_user)
    assert stopped["settle"] == "unverified" and stopped["rule"] == "cap-stop"
    assert stop_writer.poll() is None, "the writer ended: the cap was not what stopped the server"
    await hub.wait_server(stop_user, ready=False, timeout=10)

    kept = await hub.wait_event("settle cap reached; keeping the server", timeout=15, since=since, user=skip_user)
    assert waited(kept) >= CAP
    await hub.wait_cycles(2, since=hub.log_offset())  # a few more settle polls past the cap
    assert skip_writer.poll() is None, "the writer ended: the test proves nothing"
    assert await hub.is_running(skip_user), "at_cap: skip stopped the server"
    assert not hub.events("server stopped", since, user=skip_user)
    assert len(hub.events("settle cap reached; keeping the server", since, user=skip_user)) == 1
    state = await settling_state(hub, skip_user)
    assert state is not None and state["cap_in"] == "reached" and state["at_cap"] == "skip"

    # at_cap: skip keeps deferring: once the home is quiet for the window the server is stopped, verified
    stop_process(skip_writer)
    quiet_from = time.monotonic()
    event = await hub.wait_event("server stopped", timeout=SETTLED_BOUND + HUB_STOP_BOUND, since=since, user=skip_user)
    print(f"\nheld server: writer end -> 'server stopped' seen: {time.monotonic() - quiet_from:.1f}s")
    assert event["settle"] == "verified"
    assert_no_restart(hub, since, stop_user, skip_user)


async def test_unreadable_home_defers_until_the_cap(hub: CullerHub) -> None:
    """The probe cannot read the home (missing; a file, not a directory): the stop is deferred, the
    failure logged once per server, and the cap decides."""
    missing, not_dir = "cap-stop-missing", "cap-skip-notdir"
    assert not hub.home(missing).exists()
    hub.home(not_dir).write_text("not a directory\n")
    since = hub.log_offset()
    await hub.start_servers((missing, "", None), (not_dir, "", None))

    for user, home in ((missing, hub.home(missing)), (not_dir, hub.home(not_dir))):
        failed = await hub.wait_event(
            "settle probe cannot tell; deferring the stop", timeout=CAP_IDLE + 15, since=since, user=user
        )
        assert failed["probe"] == "tree-scan" and str(home) in failed["error"], failed

    capped = await hub.wait_event(
        "settle cap reached; stopping unverified", timeout=CAP + 15, since=since, user=missing
    )
    assert waited(capped) >= CAP
    stopped = await hub.wait_event("server stopped", timeout=10, since=since, user=missing)
    assert stopped["settle"] == "unverified"
    await hub.wait_server(missing, ready=False, timeout=10)

    await hub.wait_event("settle cap reached; keeping the server", timeout=15, since=since, user=not_dir)
    await hub.wait_cycles(2, since=hub.log_offset())
    assert await hub.is_running(not_dir), "at_cap: skip stopped a server whose home could not be read"
    assert not hub.events("server stopped", since, user=not_dir)

    # the one who stays is stopped by hand; the service lets it go
    await hub.api("DELETE", f"users/{not_dir}/server")
    await hub.wait_event("server no longer running; settling ends", timeout=15, since=since, user=not_dir)
    assert_no_restart(hub, since, missing, not_dir)
    for user in (missing, not_dir):
        failures = hub.events("settle probe cannot tell; deferring the stop", since, user=user)
        assert len(failures) == 1, f"{user}: the probe failure was logged {len(failures)} times"
