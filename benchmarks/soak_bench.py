"""Soak: thousands of cycles in-process against a fake hub whose users come and go; memory must stay flat.

Every cycle the fake hub changes: users spawn (some with named servers, some in a group whose rule
settles first), are used, stop their own servers, are deleted; named servers appear and vanish. The
service runs as it does in production, minus the scheduler: the cycle, the settle poll (the real tree-scan
probe on small homes), stop warnings to a local webhook, the stop history, metrics with per-server
series, and the activity page's rows, sessions, OAuth states and token cache, all fed with fresh
sessions and tokens. It prints RSS after a warm-up and at the end, and the size of every internal map
next to the number of live servers; it exits 1 if RSS grew by 5 MiB or more, or a map outgrew its bound.

    .venv/bin/python benchmarks/soak_bench.py --cycles 2000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import secrets
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from fakehub import FakeHub

from culler.adapters.hub import HubClient
from culler.adapters.hub_auth import TokenCache
from culler.adapters.probes.treescan import TreeScanProbe
from culler.core.text import utcnow
from culler.engine.cycle import Culler, CycleOptions
from culler.observers.history import StopHistory
from culler.observers.latest import LatestDecisions
from culler.observers.metrics import PREFIX, Metrics
from culler.observers.notices import WarningSender
from culler.policy.model import Policy
from culler.web.page import ActivityWeb, PendingLogin
from culler.web.rows import rows

POLICY = Policy.model_validate(
    {
        "version": 1,
        "defaults": {"idle": "2s"},
        "rules": [
            {"id": "scratch", "match": {"servers": ["scratch-*"]}, "idle": "1s", "remove_named_servers": True},
            {
                "id": "settle",
                "match": {"groups": ["settle"]},
                "settle": {"probes": ["tree-scan"], "window": "1s", "max_deferral": "3s", "at_cap": "stop"},
            },
        ],
    }
)
TARGET_LIVE = 300
MIB = 1024 * 1024


def rss() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class Churn:
    """The fake hub's users coming and going, seeded."""

    def __init__(self, fake: FakeHub, homes: Path, seed: int) -> None:
        self.fake = fake
        self.homes = homes
        self.random = random.Random(seed)
        self.serial = 0

    def live(self) -> int:
        return sum(len(u["servers"]) for u in self.fake.users.values())

    def step(self) -> None:
        now = utcnow()
        for _ in range(max(0, TARGET_LIVE - self.live()) // 20 + 2):
            self.spawn(now)
        for user in list(self.fake.users.values()):
            roll = self.random.random()
            if roll < 0.05:
                for server in user["servers"].values():  # used through the browser
                    server["last_activity"] = now.isoformat()
            elif roll < 0.07 and user["servers"]:
                user["servers"].pop(self.random.choice(list(user["servers"])))  # the user stopped it
            elif roll < 0.08 and not user["servers"]:
                del self.fake.users[user["name"]]  # an admin deleted the account
        self.fake.requests.clear()  # the fake's own request log is not the service's memory
        self.fake.removed.clear()

    def spawn(self, now: Any) -> None:
        self.serial += 1
        name = f"u{self.serial:06d}"
        groups = ["settle"] if self.random.random() < 0.1 else []
        idle = timedelta(seconds=self.random.uniform(0, 3))
        self.fake.add_user(name, groups=groups, last_activity=now - idle)
        self.fake.add_server(name, last_activity=now - idle, started=now - idle)
        if self.random.random() < 0.3:
            self.fake.add_server(name, f"scratch-{self.serial % 7}", last_activity=now - idle, started=now - idle)
        (self.homes / name).mkdir(exist_ok=True)
        (self.homes / name / "notes.txt").write_text("x" * 100)


async def receiver() -> tuple[web.AppRunner, str]:
    async def ok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hook", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hook"


def sizes(
    culler: Culler,
    warnings: WarningSender,
    latest: LatestDecisions,
    history: StopHistory,
    page: ActivityWeb,
    tokens: TokenCache[Any],
    probe: TreeScanProbe,
    metrics: Metrics,
) -> dict[str, int]:
    series = sum(len(m.samples) for m in metrics.until_stop.collect())
    return {
        "culler._reported": len(culler._reported),
        "ledger records": len(culler.ledger),
        "stopper follow-up tasks": len(culler.stopper._follow_ups),
        "settler.settling (view)": len(culler.settler.settling),
        "treescan._scans": len(probe._scans),
        "warnings._warned": len(warnings._warned),
        "warnings._stopped": len(warnings._stopped),
        "warnings._tasks": len(warnings._tasks),
        "latest.decisions": len(latest.decisions),
        "history.entries (cap)": len(history.entries),
        "history._last (history cap)": len(history._last),
        "page.sessions (cap)": len(page.sessions.memory),
        "page.tokens (cap)": len(page.tokens),
        "page.notices (cap)": len(page.notices),
        "page.states (cap)": len(page.states),
        "token cache (cap)": len(tokens._seen),
        "metrics per-server series": series,
    }


CAPPED = {
    "history.entries (cap)": 1000,
    "history._last (history cap)": 1000,
    "page.sessions (cap)": 200,
    "page.tokens (cap)": 200,
    "page.notices (cap)": 200,
    "page.states (cap)": 200,
    "token cache (cap)": 200,
}


async def soak(cycles: int, warmup: int, seed: int, progress: int = 0) -> int:
    fake = FakeHub()
    fake.max_limit = 200
    await fake.start()
    hook_runner, hook = await receiver()
    with tempfile.TemporaryDirectory() as tmp:
        homes = Path(tmp)
        churn = Churn(fake, homes, seed)
        hub = HubClient(fake.url, fake.token, max_rate=0, request_timeout=10, retries=1, backoff=0.01)
        probe = TreeScanProbe(str(homes / "{username}"), budget=0.01)
        options = CycleOptions(max_stop_fraction=1.0, max_stops=1000, follow_up_interval=0.05, interval=5.0)
        culler = Culler(hub, options, probes={"tree-scan": probe})
        latest, history, metrics = LatestDecisions(), StopHistory(None, 1000), Metrics(per_server=True)
        warnings = WarningSender(hook, 1.5, retries=0, timeout=2, publish=culler.events.publish)
        metrics.known_probes(["tree-scan"])
        culler.events.subscribe(latest, history, metrics, warnings)
        page = ActivityWeb("/", lambda user: [], history, _identify, None)
        page.sessions.memory.cap = page.states.cap = page.tokens.cap = page.notices.cap = 200

        async def ask(token: str) -> frozenset[str]:
            return frozenset({"read:servers"})

        tokens: TokenCache[frozenset[str]] = TokenCache(ask, ttl=60, cap=200)
        began = time.monotonic()
        start_rss = 0
        peak_live = 0
        for index in range(cycles):
            if index == warmup:
                gc.collect()
                start_rss = rss()
            if progress and index % progress == 0:
                gc.collect()
                print(f"  cycle {index:5d}: RSS {rss() / MIB:.1f} MiB, live {churn.live()}", flush=True)
            churn.step()
            peak_live = max(peak_live, churn.live())
            report = await culler.run(POLICY)
            if not report.ok:
                print(f"cycle {index} failed: {report.error}", file=sys.stderr)
            await culler.settler.poll()
            rows(latest.decisions, utcnow(), culler.settler.describe_by_key(), history)  # the page, rendered
            sid = secrets.token_urlsafe(16)
            page.sessions.put(sid, {"name": "x", "admin": False, "scopes": frozenset()})
            page.tokens.put(sid, secrets.token_urlsafe(16))
            page.notices.put(sid, (True, "kept"))
            page.states.put(secrets.token_urlsafe(16), PendingLogin())
            await tokens.get(secrets.token_urlsafe(16))
        await culler.follow_ups_done()
        await warnings.drain(5)
        gc.collect()
        end_rss = rss()
        elapsed = time.monotonic() - began
        live = churn.live()
        table = sizes(culler, warnings, latest, history, page, tokens, probe, metrics)
        await warnings.close()
        await hub.close()
    await hook_runner.cleanup()
    await fake.close()
    growth = (end_rss - start_rss) / MIB
    print(f"cycles {cycles} (warm-up {warmup}) in {elapsed:.1f}s, {elapsed / cycles * 1000:.1f} ms a cycle")
    print(f"users spawned {churn.serial}, servers live at the end {live}, peak live {peak_live}")
    sent = {
        kind: int(metrics.registry.get_sample_value(f"{PREFIX}_warnings_total", {"kind": kind, "result": "sent"}) or 0)
        for kind in ("stopped", "warning")
    }
    print(f"warnings sent {sent}, history entries {len(history.entries)}")
    print(f"RSS after warm-up {start_rss / MIB:.1f} MiB, at the end {end_rss / MIB:.1f} MiB, growth {growth:+.2f} MiB")
    print(f"{'map':32} {'size':>6}  bound")
    failed = growth >= 5
    for name, size in table.items():
        bound = CAPPED.get(name, peak_live)
        over = size > bound
        failed |= over
        print(f"{name:32} {size:6d}  {bound}{'  OVER' if over else ''}")
    print("result:", "FAILED" if failed else "ok (growth < 5 MiB, every map within its bound)")
    return 1 if failed else 0


async def _identify(token: str) -> dict[str, Any] | None:
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--seed", type=int, default=9)
    parser.add_argument("--progress", type=int, default=0, help="print RSS every N cycles")
    args = parser.parse_args()
    return asyncio.run(soak(args.cycles, min(args.warmup, args.cycles - 1), args.seed, args.progress))


if __name__ == "__main__":
    sys.exit(main())
