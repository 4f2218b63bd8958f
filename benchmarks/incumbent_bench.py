"""This service against jupyterhub-idle-culler 2.0 on the same hub, in the same state, with the same flags.

Not part of the test suite. Run from the repository root (defaults take a few minutes on 2 cores):

    .venv/bin/python benchmarks/incumbent_bench.py                 # all four cases, 3 runs each
    .venv/bin/python benchmarks/incumbent_bench.py --cases 2 --runs 5 --due 100 --stop-time 1

Cases (sizes are flags):
  1. a real hub with ``--ready`` ready servers, ``--due`` of them idle for two days; stops are instant;
  2. the same state, every stop takes ``--stop-time`` seconds (the spawner sleeps);
  3. ``--users`` users of whom ``--ready-many`` have a ready server, nothing due: cycle time against a bare
     paginated listing of the same hub by a minimal client (the physical limit);
  4. a fake hub (aiohttp, pages serialised once) with ``--fake-sizes`` users, all with a ready server, nothing
     due: cycle time and peak memory as the hub grows.

Real-hub cases use one JupyterHub (cheap test spawner, loopback, ``last_activity_interval`` 600 s so nothing
refreshes activity during a run). The state is built once through the hub API, backdated in the hub's
database while the hub is down, and that database is copied back before every run, so each run starts from
the same state. Both services get ``--url=… --timeout=3600 --cull-every=600 --concurrency=10``.

Recorded per run: time from process start until every due server is stopped (the hub's
``jupyterhub_running_servers`` gauge, polled every 50 ms), the service's own first-cycle time and CPU (ours
from its ``cycle done`` log line, the incumbent's from ``incumbent_timed.py`` wrapping ``cull_idle``; both
exclude import time), the process's total CPU seconds and peak RSS (``/proc``), and the hub API requests
(the hub's ``jupyterhub_request_duration_seconds_count`` for API handlers, before and after).
Medians over ``--runs`` runs are printed as a markdown table and written to ``--results``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp

from devtools.devhub import LocalHub, free_port

ROOT = Path(__file__).resolve().parent.parent
PAGINATION = "application/jupyterhub-pagination+json"
TICKS = os.sysconf("SC_CLK_TCK")
OURS_CYCLE = re.compile(r"cycle done.*?seconds=([\d.]+) cpu=([\d.]+)")
INCUMBENT_CYCLE = re.compile(r"BENCH-CYCLE seconds=([\d.]+) cpu=([\d.]+)")
CHEAP_PORT = free_port()  # every cheap server's URL, answered by this process, so it outlives hub restarts
HUB_EXTRA = f"""
_cheap["url"] = "http://127.0.0.1:{CHEAP_PORT}"
c.JupyterHub.cleanup_servers = False
c.JupyterHub.authenticate_prometheus = False
c.JupyterHub.log_level = "WARN"
"""


@dataclass
class Service:
    name: str
    argv: Callable[[list[str]], list[str]]
    cycle: re.Pattern[str]


SERVICES = [
    Service("ours", lambda flags: [sys.executable, "-m", "culler", *flags], OURS_CYCLE),
    Service(
        "incumbent",
        lambda flags: [sys.executable, str(ROOT / "benchmarks" / "incumbent_timed.py"), *flags],
        INCUMBENT_CYCLE,
    ),
]


@dataclass
class Run:
    until_stopped: float | None = None  # seconds from process start until every due server was stopped
    cycle: float | None = None  # the first cycle's wall time, as the service reports it
    cycle_cpu: float | None = None
    cpu: float = 0.0  # the process's CPU seconds in total (import included)
    rss_mb: float = 0.0  # peak resident set
    requests: int | None = None  # hub API requests
    hub_cpu: float | None = None  # the hub process's CPU seconds from the service's start to its first cycle's end
    extra: dict[str, float] = field(default_factory=dict)


# -- /proc --------------------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def proc_peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


# -- polling ------------------------------------------------------------------------------------------


async def poll(check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(interval)
    raise TimeoutError(f"{what}: not within {timeout:.0f}s")


class ServiceProcess:
    """A culling service as a child process, its stderr+stdout in a file we scan for the cycle line."""

    def __init__(self, service: Service, flags: list[str], token: str, workdir: Path) -> None:
        self.service = service
        self.log = workdir / f"{service.name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CULLER_", "JUPYTERHUB_"))}
        env |= {"JUPYTERHUB_API_TOKEN": token, "CULLER_BIND_URL": f"http://127.0.0.1:{free_port()}"}
        self._out = self.log.open("wb")
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            service.argv(flags),
            env=env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            start_new_session=True,
        )

    def cycles(self) -> list[tuple[float, float]]:
        text = self.log.read_text(errors="replace")
        return [(float(s), float(c)) for s, c in self.service.cycle.findall(text)]

    async def first_cycle(self, timeout: float) -> tuple[float, float]:
        async def done() -> tuple[float, float] | None:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.service.name} exited {self.process.returncode}; see {self.log}")
            found = self.cycles()
            return found[0] if found else None

        return await poll(done, timeout, f"{self.service.name}'s first cycle", interval=0.1)

    def stats(self) -> tuple[float, float]:
        return proc_cpu(self.process.pid), proc_peak_rss_mb(self.process.pid)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)
        self._out.close()


# -- the real hub -------------------------------------------------------------------------------------


class HubMetrics:
    def __init__(self, hub: LocalHub, session: aiohttp.ClientSession) -> None:
        self.url, self.session = f"{hub.url}/hub/metrics", session

    async def read(self) -> str:
        async with self.session.get(self.url) as response:
            return await response.text()

    async def stops(self) -> int:
        """Server stops the hub has finished (its stop-duration histogram's count)."""
        pattern = r"^jupyterhub_server_stop_seconds_count\{[^}]*\} ([\d.e+]+)$"
        return int(sum(float(v) for v in re.findall(pattern, await self.read(), re.M)))

    async def api_requests(self) -> int:
        pattern = r"^jupyterhub_request_duration_seconds_count\{([^}]*)\} ([\d.e+]+)$"
        total = 0.0
        for labels, value in re.findall(pattern, await self.read(), re.M):
            if 'handler="jupyterhub.apihandlers' in labels:
                total += float(value)
        return int(total)


@dataclass
class HubState:
    """A hub database with ``users`` users, the first ``ready`` with a server, the first ``due`` backdated."""

    users: int
    ready: int
    due: int
    golden: Path | None = None

    def names(self) -> list[str]:
        return [f"user{i:05d}" for i in range(self.users)]

    async def build(self, workdir: Path) -> None:
        build = workdir / f"build-{self.users}-{self.ready}-{self.due}"
        hub = LocalHub(extra_config=HUB_EXTRA, last_activity_interval=600, workdir=build)
        began = time.monotonic()
        await hub.start(timeout=120)
        try:
            names = self.names()
            for i in range(0, len(names), 1000):
                await hub.api("POST", "users", {"usernames": names[i : i + 1000]}, ok=(201,))
            limit = asyncio.Semaphore(20)

            async def spawn(name: str) -> None:
                async with limit:
                    await hub.api("POST", f"users/{name}/server", {}, ok=(201, 202))

            await asyncio.gather(*(spawn(n) for n in names[: self.ready]))
            async with aiohttp.ClientSession() as session:
                count = lambda: ready_count(session, hub)  # noqa: E731
                await poll(lambda: _equals(count(), self.ready), 600, "servers ready", interval=0.5)
        finally:
            hub.stop(timeout=120)
        self.golden = workdir / f"golden-{self.users}-{self.ready}-{self.due}.sqlite"
        shutil.copy(hub.workdir / "jupyterhub.sqlite", self.golden)
        self._backdate(self.golden)
        print(f"  built {self.users} users / {self.ready} ready / {self.due} due in {time.monotonic() - began:.0f}s")

    def _backdate(self, db: Path) -> None:
        now = datetime.now(UTC).replace(tzinfo=None)
        long_ago, recent = now - timedelta(days=2), now
        due = self.names()[: self.due]
        with sqlite3.connect(db) as conn:
            conn.execute("UPDATE spawners SET last_activity = ?", (recent.isoformat(sep=" "),))
            conn.execute("UPDATE users SET last_activity = ?", (recent.isoformat(sep=" "),))
            marks = ",".join("?" * len(due))
            ids = f"SELECT id FROM users WHERE name IN ({marks})"
            conn.execute(f"UPDATE spawners SET last_activity = ? WHERE user_id IN ({ids})", (str(long_ago), *due))
            conn.execute(f"UPDATE users SET last_activity = ? WHERE name IN ({marks})", (str(long_ago), *due))

    def hub(self, workdir: Path, stop_time: float) -> LocalHub:
        assert self.golden is not None
        workdir.mkdir(parents=True)
        shutil.copy(self.golden, workdir / "jupyterhub.sqlite")
        return LocalHub(extra_config=HUB_EXTRA, last_activity_interval=600, stop_delay=stop_time, workdir=workdir)


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


async def ready_count(session: aiohttp.ClientSession, hub: LocalHub) -> int:
    return len(await ready_names(session, hub.api_url, hub.admin_token))


async def ready_names(session: aiohttp.ClientSession, api_url: str, token: str, limit: int = 0) -> list[str]:
    """A bare paginated listing of ``state=ready`` users: what any culler must at least do.

    ``limit`` 0 takes the hub's default page (50); ours asks for 500, which the hub caps at 200.
    """
    names: list[str] = []
    url: str | None = f"{api_url}/users?state=ready" + (f"&limit={limit}" if limit else "")
    headers = {"Authorization": f"token {token}", "Accept": PAGINATION}
    while url:
        async with session.get(url, headers=headers) as response:
            page = await response.json()
        names.extend(user["name"] for user in page["items"])
        nxt = page["_pagination"]["next"]
        url = nxt["url"] if nxt else None
        if url and url.startswith("/"):
            url = api_url.rsplit("/hub/api", 1)[0] + url
    return names


async def real_hub_run(state: HubState, service: Service, flags: list[str], workdir: Path, stop_time: float) -> Run:
    hub = state.hub(workdir, stop_time)
    await hub.start(timeout=300)
    try:
        async with aiohttp.ClientSession() as session:
            metrics = HubMetrics(hub, session)
            # the hub checks its servers in the background after 10 s of start: wait for all of them
            await poll(lambda: _equals(ready_count(session, hub), state.ready), 600, "servers ready", interval=0.5)
            ready = await ready_names(session, hub.api_url, hub.admin_token)
            before = await metrics.api_requests()
            hub_cpu = proc_cpu(hub.process.pid)
            proc = ServiceProcess(service, [f"--url={hub.api_url}", *flags], hub.admin_token, workdir)
            try:
                run = Run()
                if state.due:
                    stops = await metrics.stops()
                    await poll(lambda: _equals(metrics.stops(), stops + state.due), 900, "due servers stopped")
                    run.until_stopped = time.monotonic() - proc.started
                run.cycle, run.cycle_cpu = await proc.first_cycle(900)
                run.hub_cpu = proc_cpu(hub.process.pid) - hub_cpu
                run.cpu, run.rss_mb = proc.stats()
            finally:
                proc.stop()
            run.requests = await metrics.api_requests() - before
            left = await ready_names(session, hub.api_url, hub.admin_token)
            stopped = set(ready) - set(left)
            if stopped != set(state.names()[: state.due]):
                raise RuntimeError(f"{service.name} stopped {len(stopped)} servers, not exactly the {state.due} due")
            return run
    finally:
        hub.stop(timeout=120)


async def bare_listing(state: HubState, workdir: Path, repeats: int) -> dict[int, float]:
    """Median seconds of a bare listing, by page limit asked: the hub's default (0) and ours (500)."""
    hub = state.hub(workdir, 0.0)
    await hub.start(timeout=300)
    try:
        times: dict[int, list[float]] = {0: [], 500: []}
        async with aiohttp.ClientSession() as session:
            await poll(lambda: _equals(ready_count(session, hub), state.ready), 600, "servers ready", interval=0.5)
            for _ in range(repeats):
                for limit, seen in times.items():
                    began = time.monotonic()
                    await ready_names(session, hub.api_url, hub.admin_token, limit)
                    seen.append(time.monotonic() - began)
        return {limit: statistics.median(seen) for limit, seen in times.items()}
    finally:
        hub.stop(timeout=120)


def listing_note(listing: dict[int, float]) -> str:
    return (
        f"bare listing: {listing[500]:.2f} s in pages of 200 (what this service asks for), "
        f"{listing[0]:.2f} s in the hub's default pages of 50 (what the incumbent gets)"
    )


# -- the fake hub (case 4) ----------------------------------------------------------------------------


def serve_fake_hub(users: int, port: int) -> None:
    """A hub API with ``users`` users, each with one ready server active just now; pages made once."""
    from aiohttp import web

    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    base, limit = f"http://127.0.0.1:{port}/hub/api", 200
    pages: dict[int, bytes] = {}
    for offset in range(0, users, limit):
        items = [_fake_user(f"user{i:06d}", now) for i in range(offset, min(offset + limit, users))]
        nxt = offset + limit
        following = {"offset": nxt, "limit": limit, "url": f"{base}/users?state=ready&offset={nxt}&limit={limit}"}
        body = {"items": items, "_pagination": {"offset": offset, "limit": limit, "total": users}}
        body["_pagination"]["next"] = following if nxt < users else None
        pages[offset] = json.dumps(body).encode()

    async def root(request: web.Request) -> web.Response:
        return web.json_response({"version": "5.2.1"})

    async def list_users(request: web.Request) -> web.Response:
        if request.query.get("state") == "inactive":
            return web.json_response(
                {"items": [], "_pagination": {"offset": 0, "limit": limit, "total": 0, "next": None}}
            )
        offset = int(request.query.get("offset", 0))
        return web.Response(body=pages.get(offset, pages[0]), content_type="application/json")

    app = web.Application()
    app.router.add_get("/hub/api/", root)
    app.router.add_get("/hub/api/users", list_users)
    print("ready", flush=True)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _fake_user(name: str, now: str) -> dict[str, Any]:
    server = {
        "name": "",
        "ready": True,
        "pending": None,
        "stopped": False,
        "url": f"/user/{name}/",
        "last_activity": now,
        "started": now,
        "user_options": {},
        "progress_url": "",
        "state": None,
    }
    return {
        "kind": "user",
        "name": name,
        "admin": False,
        "groups": [],
        "roles": ["user"],
        "server": f"/user/{name}/",
        "pending": None,
        "created": now,
        "last_activity": now,
        "servers": {"": server},
    }


async def fake_hub_run(users: int, service: Service, flags: list[str], workdir: Path) -> Run:
    workdir.mkdir(parents=True)
    port = free_port()
    hub = subprocess.Popen([sys.executable, __file__, "--serve-fake", str(users), str(port)], stdout=subprocess.PIPE)
    try:
        assert hub.stdout is not None
        await asyncio.wait_for(asyncio.to_thread(hub.stdout.readline), 300)
        url = f"http://127.0.0.1:{port}/hub/api"
        async with aiohttp.ClientSession() as session:
            await poll(lambda: _reachable(session, url), 30, "fake hub")
        proc = ServiceProcess(service, [f"--url={url}", *flags], "bench-token", workdir)
        try:
            run = Run()
            run.cycle, run.cycle_cpu = await proc.first_cycle(900)
            run.cpu, run.rss_mb = proc.stats()
            return run
        finally:
            proc.stop()
    finally:
        hub.kill()
        hub.wait(10)


async def _reachable(session: aiohttp.ClientSession, url: str) -> bool:
    try:
        async with session.get(f"{url}/") as response:
            return response.status == 200
    except aiohttp.ClientError:
        return False


# -- reporting ----------------------------------------------------------------------------------------


def med(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def ratio(a: float | None, b: float | None) -> str:
    return "-" if a is None or not b else f"{a / b:.2f}x"


def table(title: str, runs: dict[str, list[Run]], limit: float | None = None, note: str = "") -> str:
    rows = [f"### {title}", "", "| | ours | incumbent | ours / incumbent |" + (" ours / limit |" if limit else "")]
    rows.append("|---|---|---|---|" + ("---|" if limit else ""))
    metrics: list[tuple[str, Callable[[Run], float | None], int]] = [
        ("start → every due server stopped (s)", lambda r: r.until_stopped, 2),
        ("first cycle (s)", lambda r: r.cycle, 3),
        ("CPU per cycle (s)", lambda r: r.cycle_cpu, 3),
        ("process CPU, import included (s)", lambda r: r.cpu, 2),
        ("peak RSS (MiB)", lambda r: r.rss_mb, 1),
        ("hub API requests", lambda r: r.requests, 0),
        ("hub CPU, service start → first cycle done (s)", lambda r: r.hub_cpu, 2),
    ]
    for label, get, digits in metrics:
        ours, theirs = med([get(r) for r in runs["ours"]]), med([get(r) for r in runs["incumbent"]])
        if ours is None and theirs is None:
            continue
        line = f"| {label} | {fmt(ours, digits)} | {fmt(theirs, digits)} | {ratio(ours, theirs)} |"
        if limit:
            is_time = label.startswith(("start", "first"))
            line += f" {ratio(ours, limit) if is_time else ''} |"
        rows.append(line)
    if limit:
        rows.append(f"\n{note} = {limit:.2f} s")
    return "\n".join(rows)


# -- the cases ----------------------------------------------------------------------------------------


async def runs_of(run: Callable[[Service, Path], Awaitable[Run]], workdir: Path, runs: int) -> dict[str, list[Run]]:
    """Alternates the services, so drift in the machine's load hits both alike."""
    results: dict[str, list[Run]] = {s.name: [] for s in SERVICES}
    for i in range(runs):
        for service in SERVICES:
            result = await run(service, workdir / f"{service.name}-{i}")
            print(f"  {service.name} run {i + 1}: {result}", flush=True)
            results[service.name].append(result)
    return results


async def serve_cheap_servers() -> asyncio.Server:
    """The stand-in single-user server behind every cheap spawner: the hub checks it is up at start."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(answer, "127.0.0.1", CHEAP_PORT)


async def main(args: argparse.Namespace) -> str:
    cheap = await serve_cheap_servers()
    workdir = Path(tempfile.mkdtemp(prefix="incumbent-bench-", dir=args.workdir))

    def save(lines: list[str]) -> None:  # after every case, so a late failure keeps the earlier tables
        args.results.write_text("\n".join(lines) + "\n")

    flags = ["--timeout=3600", "--cull-every=600", f"--concurrency={args.concurrency}"]
    out = [
        f"## This service against jupyterhub-idle-culler {_incumbent_version()}",
        "",
        f"`{shlex.join(['benchmarks/incumbent_bench.py', *sys.argv[1:]])}` on {platform.node()} "
        f"({os.cpu_count()} cores, Python {platform.python_version()}), {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; "
        f"medians of {args.runs} runs; flags `{' '.join(flags)}`.",
        "",
    ]
    try:
        if {1, 2} & set(args.cases):
            state = HubState(args.ready, args.ready, args.due)
            await state.build(workdir)
            for case, stop_time in ((1, 0.0), (2, args.stop_time)):
                if case not in args.cases:
                    continue
                print(f"case {case}", flush=True)
                results = await runs_of(
                    lambda s, w, t=stop_time: real_hub_run(state, s, flags, w, t), workdir / f"case{case}", args.runs
                )
                title = f"Case {case}: {args.ready} ready servers, {args.due} due, stop takes {stop_time:g} s"
                if case == 1:
                    out += [table(title, results), ""]
                    save(out)
                    continue
                listing = await bare_listing(state, workdir / f"case{case}-listing", 5)
                limit = math.ceil(args.due / args.concurrency) * stop_time + listing[500]
                note = f"limit: ceil({args.due}/{args.concurrency}) * {stop_time:g} s + {listing_note(listing)}"
                out += [table(title, results, limit, note), ""]
                save(out)
        if 3 in args.cases:
            print("case 3", flush=True)
            state = HubState(args.users, args.ready_many, 0)
            await state.build(workdir)
            results = await runs_of(lambda s, w: real_hub_run(state, s, flags, w, 0.0), workdir / "case3", args.runs)
            listing = await bare_listing(state, workdir / "case3-listing", 5)
            title = f"Case 3: {args.users} users, {args.ready_many} ready, nothing due"
            out += [table(title, results, listing[500], f"limit: {listing_note(listing)}"), ""]
            save(out)
        if 4 in args.cases:
            for size in args.fake_sizes:
                print(f"case 4, {size} users", flush=True)
                one = lambda s, w, n=size: fake_hub_run(n, s, flags, w)  # noqa: E731
                results = await runs_of(one, workdir / f"case4-{size}", args.runs)
                out += [table(f"Case 4: fake hub, {size} users, all ready, nothing due", results), ""]
                save(out)
    finally:
        cheap.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return "\n".join(out)


def _incumbent_version() -> str:
    from importlib.metadata import version

    return version("jupyterhub-idle-culler")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=lambda s: [int(c) for c in s.split(",")], default=[1, 2, 3, 4])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ready", type=int, default=500, help="cases 1-2: ready servers")
    parser.add_argument("--due", type=int, default=100, help="cases 1-2: due servers")
    parser.add_argument("--stop-time", type=float, default=1.0, help="case 2: seconds a stop takes")
    parser.add_argument("--users", type=int, default=10000, help="case 3: users")
    parser.add_argument("--ready-many", type=int, default=2000, help="case 3: ready servers")
    parser.add_argument("--fake-sizes", type=lambda s: [int(n) for n in s.split(",")], default=[10000, 50000, 100000])
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs, databases)")
    parser.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS-incumbent.md")
    return parser.parse_args()


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--serve-fake":
        serve_fake_hub(int(sys.argv[2]), int(sys.argv[3]))
    else:
        args = parse_args()
        print(asyncio.run(main(args)))
