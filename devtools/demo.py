"""A local demo: a real JupyterHub on 127.0.0.1 with a few users, this service registered from the
deploy snippet with a short-timeout policy, and its decisions printed as they happen.

With JUPYTERHUB_API_URL and JUPYTERHUB_API_TOKEN set (a hub is given), runs the service against
that hub in dry-run mode instead: it reports what it would stop and stops nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from devtools.devhub import LocalHub

DEMO_POLICY = """\
# The demo's policy: edit it while the demo runs, the service reloads it within seconds.
version: 1
defaults:
  idle: 60s
  keep: {step: 30s, max: 2m}  # the activity page's Keep button: 30 s more per press, at most 2 minutes
rules:
  - id: vip
    match: {groups: [vip]}
    exempt: true
  - id: gpu
    match: {user_options: {gpu: {any_except: none}}}
    idle: 20s
  - id: scratch
    match: {servers: ["scratch-*"]}
    idle: 40s
    remove_named_servers: true
"""

# user, server name, user_options (as KubeSpawner's profile form stores them)
DEMO_SERVERS = [
    ("alice", "", {"profile": "pytorch-env", "resources": "small", "gpu": "none"}),
    ("bob", "", {"profile": "pytorch-env", "resources": "large", "gpu": "1xa100"}),
    ("carol", "", {"profile": "tf", "resources": "large", "gpu": "none"}),
    ("dave", "scratch-1", {}),
    ("real-erin", "", {}),
]
_INTERESTING = re.compile(r"culler\.(cycle|policy|app):|MASS-STOP")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="./dev demo", description=__doc__)
    parser.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0: until Ctrl-C)")
    parser.add_argument("--workdir", type=Path, help="where the demo hub keeps its files (default: a temp dir)")
    args = parser.parse_args(argv)
    if os.environ.get("JUPYTERHUB_API_URL") and os.environ.get("JUPYTERHUB_API_TOKEN"):
        return _against_given_hub(args.duration)
    return asyncio.run(_local_demo(args.duration, args.workdir))


def _against_given_hub(duration: float) -> int:
    print(f"Hub given ({os.environ['JUPYTERHUB_API_URL']}): running the service in dry-run mode.", flush=True)
    command = [sys.executable, "-m", "culler", "--dry-run", "--cull-every=30"]
    process = subprocess.Popen(command)
    try:
        process.wait(timeout=duration or None)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        process.terminate()
        process.wait(10)
    return 0


async def _local_demo(duration: float, workdir: Path | None) -> int:
    workdir = workdir or Path(tempfile.mkdtemp(prefix="devhub-"))
    workdir.mkdir(parents=True, exist_ok=True)
    policy = workdir / "demo-policy.yaml"
    policy.write_text(DEMO_POLICY)
    # with_culler drops CULLER_* variables of this shell: the demo runs as shown, whatever is set here
    hub = LocalHub.with_culler(
        policy,
        cull_every=5,
        policy_poll=2,
        last_activity_interval=10,
        workdir=workdir,
        extra_config='c.Authenticator.admin_users = {"admin"}\n',  # the page's every-server view
    )
    port = hub.service_port
    assert port is not None
    print("Starting a local JupyterHub with configurable-http-proxy on 127.0.0.1 ...", flush=True)
    try:
        await hub.start()
        await _populate(hub)
        _banner(hub, port, policy)
        await _explain(hub, policy)
        await _follow_log(hub, duration)
    finally:
        print("Stopping the demo hub ...", flush=True)
        await asyncio.to_thread(hub.stop)
    return 0


async def _populate(hub: LocalHub) -> None:
    await hub.create_users(sorted({user for user, _, _ in DEMO_SERVERS}))
    await hub.api("POST", "groups/vip", {"users": ["carol"]}, ok=(201, 409))
    for user, name, options in DEMO_SERVERS:
        await hub.start_server(user, name, options)
        print(f"  started {user + ('/' + name if name else ''):18} user_options={options}", flush=True)


def _banner(hub: LocalHub, port: int, policy: Path) -> None:
    print(
        f"""
Demo hub:     {hub.url}  (log in with any name and password)
Service:      {hub.url}/services/activity-culler/health  (direct: http://127.0.0.1:{port}/services/activity-culler/)
Page:         {hub.url}/services/activity-culler/  (log in as alice: her countdown and Keep;
              as admin: ?view=all lists every server)
Policy file:  {policy}  (edit it: the service reloads it)
Expect:       bob's GPU server stops after ~20 s idle, dave/scratch-1 after ~40 s (and is removed),
              alice and real-erin after ~60 s; carol (group vip) is exempt. Visit {hub.url}/user/alice/
              to keep alice's server alive. Decisions as they happen:
""",
        flush=True,
    )


async def _explain(hub: LocalHub, policy: Path) -> None:
    """What the service will do with each server, from the `explain` subcommand."""
    env = {**os.environ, "JUPYTERHUB_API_TOKEN": hub.admin_token, "CULLER_POLICY": str(policy)}
    command = [sys.executable, "-m", "culler", "explain", "--url", hub.api_url]
    result = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)
    print("  $ jupyterhub-activity-culler explain")
    print("\n".join("  " + line for line in (result.stdout or result.stderr).splitlines()) + "\n", flush=True)


async def _follow_log(hub: LocalHub, duration: float) -> None:
    deadline = time.monotonic() + duration if duration else None
    with hub.log_path.open(errors="replace") as log:
        while deadline is None or time.monotonic() < deadline:
            line = log.readline()
            if not line:
                await asyncio.sleep(0.3)
                continue
            if _INTERESTING.search(line):
                print("  " + line.rstrip(), flush=True)


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        sys.exit(130)
