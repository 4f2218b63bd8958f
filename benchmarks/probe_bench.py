"""The in-server probe (extension/): CPU per sample with 50 and 500 processes in scope, the server's
event-loop lag while it samples, and, in a real jupyterhub-singleuser, CPU per request and the time from a
writer's last write to the probe saying "quiet for the window".

Not part of the test suite. Run from the repository root with the extension installed (./dev does):

    .venv/bin/python benchmarks/probe_bench.py                  # homes of 10,000 and 200,000 files
    .venv/bin/python benchmarks/probe_bench.py --files 50000 --processes 50 --no-server

Each home is a tree of directories of 100 small files; the processes are idle children of this one (3
open descriptors each), so the scope is this process's tree. A sample walks the home and reads every
process's write counter before and after the walk; when the home changed and no counter moved, the probe
also reads every descriptor of every process (the worst case, shown as "fd scan"). The loop lag is
measured by a task that wants to run every 10 ms while the sampler works in its worker thread, as it does
inside jupyter-server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from activity_culler_probe.processes import Scope
from activity_culler_probe.sampler import Sampler, take

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def make_home(root: Path, files: int) -> None:
    for index in range(files):
        folder = root / f"d{index // 10000}" / f"e{(index // 100) % 100}"
        if index % 100 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index % 100}.txt").write_bytes(b"x" * (index % 512))


@contextmanager
def idle_processes(count: int) -> Iterator[None]:
    started = [subprocess.Popen(["sleep", "600"]) for _ in range(count)]
    try:
        yield
    finally:
        for process in started:
            process.kill()
        for process in started:
            process.wait()


def cpu_of(action: Callable[[], object], repeat: int) -> float:
    """Median CPU seconds of ``action`` in this thread."""
    costs = []
    for _ in range(repeat):
        began = time.thread_time()
        action()
        costs.append(time.thread_time() - began)
    return statistics.median(costs)


async def loop_lag(root: Path, scope: Scope, interval: float, seconds: float) -> list[float]:
    """How late a 10 ms ticker runs while the sampler samples every ``interval`` s."""
    sampler = Sampler([str(root)], interval=interval, idle_stop=seconds + 5, budget=600, scope=scope)
    sampler.ask()
    lags: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        due = time.perf_counter() + 0.01
        await asyncio.sleep(0.01)
        lags.append(max(0.0, time.perf_counter() - due))
    await sampler.stop()
    return lags


def sampling_row(root: Path, count: int, samples: int, lag_seconds: float) -> str:
    roots = [str(root)]
    with idle_processes(count):
        scope = Scope("tree", os.getpid())
        in_scope = sorted(scope.pids())
        sample = cpu_of(lambda: take(roots, 600, scope, None), samples)
        counters = cpu_of(lambda: (scope.counters(), scope.counters()), samples)
        fds = cpu_of(lambda: scope.holds_open_for_writing(roots, in_scope), samples)
        interval = max(2.0, (sample + fds) / 0.01)
        lags = sorted(asyncio.run(loop_lag(root, scope, min(interval, lag_seconds / 3), lag_seconds)))
    p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
    return (
        f"| {len(in_scope)} | {sample * 1000:.0f} ms | {counters * 1000:.1f} ms "
        f"| {fds * 1000:.1f} ms | {interval:.0f} s | {p50 * 1000:.1f} / {p99 * 1000:.1f} ms |"
    )


def sampling_rows(files_list: list[int], processes_list: list[int], samples: int, lag_seconds: float) -> None:
    print(
        "| files | processes | CPU per sample | of which processes | fd scan (worst case) "
        "| pause for < 1 % of a core | loop lag p50 / p99 |"
    )
    print("|---|---|---|---|---|---|---|")
    for files in files_list:
        with tempfile.TemporaryDirectory() as tmp:
            make_home(Path(tmp), files)
            for count in processes_list:
                print(f"| {files:,} " + sampling_row(Path(tmp), count, samples, lag_seconds), flush=True)


def server_pid(home: Path) -> int:
    """The single-user server whose HOME is ``home``."""
    wanted = f"HOME={home}".encode()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            command = (environ.parent / "cmdline").read_bytes()
            if b"jupyterhub-singleuser" in command and wanted in environ.read_bytes().split(b"\0"):
                return int(environ.parent.name)
        except OSError:
            continue
    raise RuntimeError("the single-user server was not found")


def process_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def server_rows(requests: int, window: float) -> None:
    """A real hub and single-user server: the server's CPU per probe request, and last write -> quiet."""
    import secrets

    import aiohttp

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "realhub"))
    from server_shell import ended, server_base, start_writer

    from devtools.devhub import LocalHub

    token = secrets.token_hex(16)
    config = f"""
c.JupyterHub.custom_scopes = {{"custom:activity-culler:probe": {{"description": "ask the probe"}}}}
c.JupyterHub.services.append({{"name": "probe-bench", "api_token": {token!r}}})
c.JupyterHub.load_roles.append({{"name": "probe-bench", "scopes": ["custom:activity-culler:probe"],
                                 "services": ["probe-bench"]}})
c.Spawner.args.extend(["--ActivityCullerProbe.interval=0.5", "--ActivityCullerProbe.processes=tree"])
"""
    user = "real-bench"
    with tempfile.TemporaryDirectory() as tmp:
        async with LocalHub(workdir=Path(tmp), extra_config=config) as hub:
            await hub.create_users([user])
            await hub.start_server(user)
            url = await server_base(hub, user) + "api/activity-culler/probe"
            pid = server_pid(hub.home(user))
            headers = {"Authorization": f"token {token}"}
            async with aiohttp.ClientSession(headers=headers) as session:

                async def ask() -> dict[str, object]:
                    async with session.get(url) as response:
                        return dict(await response.json())

                await ask()  # starts sampling, fills the hub's token cache
                await asyncio.sleep(2)
                began_cpu, began = process_cpu(pid), time.perf_counter()
                for _ in range(requests):
                    await ask()
                spent, wall = process_cpu(pid) - began_cpu, time.perf_counter() - began
                done = await start_writer(hub, user, hub.home(user) / "train.log", 5, scratch=Path(tmp))
                last = await ended(done, 30)
                while True:  # as the service polls (every 0.5 s here)
                    body = await ask()
                    quiet_for = body.get("quiet_for")
                    if body["state"] == "quiet" and isinstance(quiet_for, float) and quiet_for >= window:
                        break
                    await asyncio.sleep(0.5)
                settled = time.time() - last
    print(
        f"\nreal server: {requests} probe requests in {wall:.2f} s, server CPU {spent * 1000 / requests:.2f} ms "
        f"per request (sampling included; clock tick {1000 / os.sysconf('SC_CLK_TCK'):.0f} ms)"
    )
    print(f"last write -> quiet for a {window:g} s window: {settled:.2f} s (sampling every 0.5 s, asked every 0.5 s)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    numbers = lambda s: [int(n) for n in s.split(",")]  # noqa: E731
    parser.add_argument("--files", type=numbers, default=[10000, 200000])
    parser.add_argument("--processes", type=numbers, default=[50, 500])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--window", type=float, default=3.0)
    parser.add_argument("--no-server", action="store_true", help="skip the real-server figures")
    args = parser.parse_args()
    sampling_rows(args.files, [n - 1 for n in args.processes], args.samples, args.lag_seconds)
    if not args.no_server:
        asyncio.run(server_rows(args.requests, args.window))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
