"""Benchmark of the tree-scan settle probe (culler/treescan.py) on a synthetic home tree.

Not part of the test suite. Run from the repository root:

    .venv/bin/python benchmarks/settle_bench.py                    # 200,000 files, as documented
    .venv/bin/python benchmarks/settle_bench.py --files 20000 --passes 5 --trials 1 --write-for 2 --no-write

Measures (warm page cache; this cannot drop caches):
  1. building the tree (files spread over nested directories, ~100 per leaf directory);
  2. one unbudgeted ``TreeWalk`` pass: median time over a few runs, entries/s;
  3. per-poll budget adherence: back-to-back synchronous ``TreeScanProbe.poll`` calls until several passes
     complete; median, p99 and the largest overrun over the budget;
  4. event-loop lag while ``observe`` (``asyncio.to_thread``) scans back to back, against an idle baseline;
  5. time from a writer's last write to a STOP verdict from ``culler.settle.judge``, polling every ``--poll`` s.
The figures are printed as a markdown section and written to ``--results``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from culler.adapters.probes.treescan import CHECK_EVERY, TreeScanProbe, TreeWalk
from culler.adapters.probes.treescan import _ServerScan as ServerScan  # the per-server state, for synchronous polls
from culler.core.settle import Observation, Seen, SettleVerdict, judge
from culler.core.snapshot import ServerSnapshot
from culler.policy.model import Settle

HOT_SIZE = 32  # TreeScanProbe's default
FANOUT = 10  # subdirectories per directory above the leaves
LAG_TICK = 0.001  # the lag sampler sleeps this long per sample
OVERRUN_TARGET_MS = 5.0
LAG_P99_TARGET_MS = 10.0
CPU_NOTE = (
    "Poll thread CPU time excludes time the thread was preempted or waiting for the GIL: wall-clock overrun "
    "beyond the CPU-time overrun comes from the scheduler (other processes on the cores), not from how often "
    "the probe checks its deadline."
)
BOUND_NOTE = (
    "Passes rest for the settle window between them, and quiet is vouched from the end of one pass to the start "
    "of the next equal pass, reported when that pass completes. Expected after the last write: the hot set sees "
    "it at the next poll and restarts the pass (W), a rest of the window, an equal pass (W): window + 2 W + 2 "
    "polls. Worst (the last write to a cold file a running pass already scanned): 3 W + 2 windows + 3 polls. "
    "W is one pass in wall time, (polls per pass - 1) x poll interval: scanning is budgeted per poll."
)
RESULTS = Path(__file__).resolve().parent / "RESULTS-settle.md"

WRITER = """
import os, sys, time
path, interval, duration = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
end = time.monotonic() + duration
last = 0.0
while True:
    with open(path, "a") as f:
        f.write("x" * 16 + "\\n")
    last = time.monotonic()
    if last + interval > end:
        break
    time.sleep(interval)
print(repr(last))
"""


# ---------------------------------------------------------------------------------------------- helpers


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (``pct`` in 0..100)."""
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def secs(seconds: float) -> str:
    return f"{seconds:.2f} s"


def verdict_mark(ok: bool) -> str:
    return "met" if ok else "**MISSED**"


@dataclass
class Report:
    rows: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        self.rows.append((name, value))
        print(f"  {name}: {value}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)


# ---------------------------------------------------------------------------------------------- tree


def leaf_dir(root: Path, index: int, depth: int) -> Path:
    """Leaf directory ``index`` under ``depth`` levels of FANOUT-wide directories."""
    parts = []
    for _ in range(depth):
        parts.append(f"d{index % FANOUT:02d}")
        index //= FANOUT
    return root.joinpath(f"top{index:03d}", *reversed(parts))


def build_tree(root: Path, files: int, per_dir: int, file_size: int) -> tuple[int, Path]:
    """Create ``files`` small files; return the number of directories made and one file's path."""
    payload = b"x" * file_size
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    leaves = max(1, math.ceil(files / per_dir))
    dirs: set[Path] = set()
    first: Path | None = None
    for leaf in range(leaves):
        directory = leaf_dir(root, leaf, depth=2)
        directory.mkdir(parents=True)
        dirs.update(p for p in directory.parents if root in p.parents)
        dirs.add(directory)
        for index in range(leaf * per_dir, min(files, (leaf + 1) * per_dir)):
            path = os.path.join(directory, f"f{index:07d}.txt")
            fd = os.open(path, flags, 0o644)
            if payload:
                os.write(fd, payload)
            os.close(fd)
            first = first or Path(path)
    assert first is not None
    return len(dirs), first


# ---------------------------------------------------------------------------------------------- 2. full pass


def full_pass(root: Path) -> tuple[float, int]:
    walk = TreeWalk(str(root), HOT_SIZE)
    started = time.perf_counter()
    assert walk.step(math.inf)
    elapsed = time.perf_counter() - started
    walk.close()
    return elapsed, walk.entries


def bench_full_pass(root: Path, repeats: int, report: Report) -> None:
    full_pass(root)  # warm the dentry/inode caches
    runs = [full_pass(root) for _ in range(repeats)]
    times = [elapsed for elapsed, _ in runs]
    median, entries = statistics.median(times), runs[0][1]
    report.add("entries per pass", f"{entries:,}")
    report.add(f"full pass (unbudgeted, warm, median of {repeats})", f"{secs(median)} (min {secs(min(times))})")
    report.add("scan rate", f"{entries / median:,.0f} entries/s")


# ---------------------------------------------------------------------------------------------- 3. budget


class TimedProbe(TreeScanProbe):
    """Records each poll's wall-clock and thread CPU time, measured in the thread that polls."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.passes = 0  # passes completed by the last polled server
        self.pass_spans: list[tuple[float, float]] = []  # per completed pass: (end, first to completing poll)
        self._walk_began = 0.0

    def poll(self, scan: ServerScan) -> Observation:
        started, cpu_started, before = time.perf_counter(), time.thread_time(), scan.passes
        if scan.walk is None:
            self._walk_began = time.monotonic()
        try:
            return super().poll(scan)
        finally:
            self.cpu.append(time.thread_time() - cpu_started)
            self.wall.append(time.perf_counter() - started)
            self.passes = scan.passes
            if scan.passes > before:
                now = time.monotonic()
                self.pass_spans.append((now, now - self._walk_began))


def sync_polls(probe: TimedProbe, root: Path, passes: int) -> list[Observation]:
    """Back-to-back synchronous polls until ``passes`` passes complete."""
    scan = ServerScan(str(root))
    observations: list[Observation] = []
    while scan.passes < passes:
        observations.append(probe.poll(scan))
        if observations[-1].seen is Seen.ACTIVE:
            raise SystemExit(f"the static tree looked active: {observations[-1]}")
    return observations


def report_polls(label: str, probe: TimedProbe, budget: float, report: Report) -> None:
    """Wall-clock poll times against the budget, and the poll thread's CPU time (preemption excluded)."""
    wall, cpu = probe.wall, probe.cpu
    worst = max(wall) - budget
    over = sum(1 for d in wall if d > budget + OVERRUN_TARGET_MS / 1000)
    report.add(f"{label}: polls", f"{len(wall)}")
    report.add(f"{label}: poll time median / p99 / max", " / ".join(ms(v) for v in _spread(wall)))
    report.add(
        f"{label}: max overrun over {ms(budget)} budget (target ≤ {OVERRUN_TARGET_MS:g} ms)",
        f"{ms(max(0.0, worst))} — {verdict_mark(worst * 1000 <= OVERRUN_TARGET_MS)}; {over} polls over target",
    )
    report.add(f"{label}: poll thread CPU time p99 / max", " / ".join(ms(v) for v in _spread(cpu)[1:]))


def _spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), percentile(values, 99), max(values)


def bench_budget(root: Path, budget: float, passes: int, report: Report) -> None:
    probe = TimedProbe(str(root), budget=budget, hot_size=HOT_SIZE)
    observations = sync_polls(probe, root, passes)
    report_polls("sync poll", probe, budget, report)
    report.add("polls per pass at this budget", f"{len(probe.wall) / passes:.1f}")
    if observations[-1].seen is not Seen.QUIET:
        report.note(f"after {passes} passes of a static tree the probe said {observations[-1]}")


# ---------------------------------------------------------------------------------------------- 4. loop lag


def server() -> ServerSnapshot:
    return ServerSnapshot("bench", "", False, (), None, None, None, True)


async def sample_lag(stop: asyncio.Event, lags: list[float]) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        started = loop.time()
        await asyncio.sleep(LAG_TICK)
        lags.append(loop.time() - started - LAG_TICK)


async def scan_while_sampling(probe: TimedProbe | None, passes: int, idle: float) -> list[float]:
    """Lag samples while ``probe`` scans ``passes`` passes back to back (or, without a probe, for ``idle`` s)."""
    stop, lags = asyncio.Event(), []
    sampler = asyncio.create_task(sample_lag(stop, lags))
    if probe is None:
        await asyncio.sleep(idle)
    else:
        snapshot = server()
        while probe.passes < passes:
            await probe.observe(snapshot)
    stop.set()
    await sampler
    return lags


def bench_lag(root: Path, budget: float, passes: int, report: Report) -> None:
    baseline = asyncio.run(scan_while_sampling(None, 0, idle=2.0))
    probe = TimedProbe(str(root), budget=budget, hot_size=HOT_SIZE)
    lags = asyncio.run(scan_while_sampling(probe, passes, idle=0.0))
    report.add("loop lag, idle baseline p50 / p99 / max", " / ".join(ms(v) for v in _spread(baseline)))
    p50, p99, worst = _spread(lags)
    report.add(
        f"loop lag while scanning p50 / p99 / max (target p99 < {LAG_P99_TARGET_MS:g} ms)",
        f"{ms(p50)} / {ms(p99)} / {ms(worst)} — {verdict_mark(p99 * 1000 < LAG_P99_TARGET_MS)} ({len(lags)} samples)",
    )
    report_polls("observe (to_thread, loop busy)", probe, budget, report)


# ---------------------------------------------------------------------------------------------- 5. settle


@dataclass
class SettleTrial:
    last_write: float
    settled: float | None
    early: bool  # a STOP verdict came before the writer's last write
    pass_wall: float  # the longest pass ending after the last write, first poll to completing poll


def start_writer(path: Path, duration: float) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", WRITER, str(path), "0.1", str(duration)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, text=True)


async def settle_trial(root: Path, target: Path, args: argparse.Namespace) -> SettleTrial:
    probe = TimedProbe(str(root), budget=args.budget, hot_size=HOT_SIZE)
    settle = Settle(probes=["tree-scan"], window=args.window, max_deferral=3600)
    snapshot, began = server(), time.monotonic()
    writer = start_writer(target, args.write_for)
    stop_at, early, polls = None, False, 0
    while time.monotonic() - began < args.write_for + args.timeout:
        observation = await probe.observe(snapshot, args.window)
        now, polls = time.monotonic(), polls + 1
        verdict, _ = judge({probe.name: observation}, settle, waited=now - began)
        if verdict is SettleVerdict.STOP:
            if writer.poll() is None:
                early = True
            else:
                stop_at = now
                break
        await asyncio.sleep(max(0.0, began + polls * args.poll - time.monotonic()))
    out, _ = writer.communicate()
    last_write = float(out.strip())
    early = early or (stop_at is not None and stop_at < last_write)
    settled = None if stop_at is None else stop_at - last_write
    pass_wall = max((span for end, span in probe.pass_spans if end > last_write), default=0.0)
    return SettleTrial(last_write, settled, early, pass_wall)


def settle_bound(args: argparse.Namespace, pass_wall: float) -> tuple[float, float, float]:
    """(naive window + 2 polls + W, expected, worst case) for the probe's design.

    Passes rest for the window between them; quiet counts from the end of one pass to the start of the next
    equal one and is reported when that pass completes. Expected: the hot set sees the last write at the next
    poll and restarts the pass (poll), that pass ends (W), a rest of the window (+ up to a poll), the next pass
    ends equal (W): window + 2 W + 2 polls. Worst: the last write goes to a cold file a pass already scanned:
    that pass ends (W), rest, a pass that differs (W), rest, an equal pass (W): 3 W + 2 windows + 3 polls.
    """
    poll, window = args.poll, args.window
    naive = window + 2 * poll + pass_wall
    expected = window + 2 * pass_wall + 2 * poll
    worst = 3 * pass_wall + 2 * window + 3 * poll
    return naive, expected, worst


def bench_settle(root: Path, target: Path, args: argparse.Namespace, report: Report) -> None:
    trials = [asyncio.run(settle_trial(root, target, args)) for _ in range(args.trials)]
    pass_wall = max(t.pass_wall for t in trials)
    naive, expected, worst = settle_bound(args, pass_wall)
    times = [t.settled for t in trials if t.settled is not None]
    label = f"last write → settled (window {args.window:g} s, poll {args.poll:g} s, {len(trials)} trials)"
    median = f"; median {secs(statistics.median(times))}" if times else ""
    report.add(label, ", ".join(secs(t) for t in times) + median)
    report.add("pass wall time W (longest pass after a last write, first to last poll)", secs(pass_wall))
    report.add("naive expectation: window + 2 polls + W", secs(naive))
    report.add("expected with this design: window + 2 W + 2 polls", secs(expected))
    report.add("worst case of this design: 3 W + 2 windows + 3 polls", secs(worst))
    if len(times) < len(trials):
        report.note(f"{len(trials) - len(times)} trial(s) never settled within {args.timeout:g} s of the writer's end")
    if any(t.early for t in trials):
        report.note("a STOP verdict came while the writer was still writing: the probe missed writes")
    if times and max(times) > worst:
        report.note(f"settling took longer than the derived worst case ({secs(max(times))} > {secs(worst)})")


# ---------------------------------------------------------------------------------------------- output


def machine_facts(root: Path) -> list[tuple[str, str]]:
    return [
        ("CPUs", f"{os.cpu_count()} ({_cpu_model()})"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("OS", platform.platform()),
        ("tree file system", _fs_type(root)),
        ("load average at start (1/5/15 min)", " / ".join(f"{v:.2f}" for v in os.getloadavg())),
    ]


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "unknown model"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown model")


def _fs_type(path: Path) -> str:
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return "unknown"
    best = max((m for m in mounts if str(path).startswith(m[1])), key=lambda m: len(m[1]), default=None)
    return f"{best[2]} ({best[1]})" if best else "unknown"


def command_line() -> str:
    def short(path: str) -> str:
        relative = os.path.relpath(path)
        return path if relative.startswith("..") else relative

    return shlex.join([short(sys.executable), short(sys.argv[0]), *sys.argv[1:]])


def markdown(report: Report, facts: list[tuple[str, str]], command: str) -> str:
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"### Tree-scan settle probe benchmark ({stamp})", "", "```", command, "```", ""]
    lines += ["| figure | value |", "|---|---|"]
    lines += [f"| {name} | {value} |" for name, value in facts + report.rows]
    lines += ["", *(f"- {note}" for note in [*report.notes, CPU_NOTE, BOUND_NOTE]), ""]
    return "\n".join(lines)


def write_results(path: Path, section: str, append: bool) -> None:
    header = (
        "# Tree-scan settle probe: benchmark results\n\n"
        "Produced by `benchmarks/settle_bench.py` (not part of the test suite). Warm page cache, local disk; "
        "every figure is wall-clock time on the machine named in its table.\n\n"
    )
    if append and path.exists():
        path.write_text(path.read_text().rstrip("\n") + "\n\n" + section)
    else:
        path.write_text(header + section)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add = parser.add_argument
    add("--files", type=int, default=200_000, help="files in the tree (default 200000)")
    add("--per-dir", type=int, default=100, help="files per leaf directory (default 100)")
    add("--file-size", type=int, default=64, help="bytes per file (default 64)")
    add("--dir", default=None, help="parent of the temporary tree (default: the system temp dir)")
    add("--keep", action="store_true", help="keep the tree afterwards (its path is printed)")
    add("--repeats", type=int, default=5, help="unbudgeted full passes to take the median of (default 5)")
    add("--budget", type=float, default=0.05, help="probe budget per poll, seconds (default 0.05)")
    add("--passes", type=int, default=20, help="passes for the budget and loop-lag sections (default 20)")
    add("--poll", type=float, default=0.5, help="settle section: seconds between polls (default 0.5)")
    add("--window", type=float, default=3.0, help="settle section: settle window, seconds (default 3)")
    add("--write-for", type=float, default=5.0, help="settle section: the writer appends every 0.1 s this long")
    add("--trials", type=int, default=3, help="settle section: writer-then-settle trials (default 3)")
    add("--timeout", type=float, default=120.0, help="settle section: give up this long after the writer stops")
    add("--results", type=Path, default=RESULTS, help=f"markdown file to write (default {RESULTS.name})")
    add("--append", action="store_true", help="append a section to --results instead of replacing the file")
    add("--no-write", action="store_true", help="print only; do not write --results")
    return parser.parse_args(argv)


def section(title: str) -> None:
    print(f"\n== {title}", flush=True)


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def run(root: Path, args: argparse.Namespace, report: Report) -> None:
    section(f"building {args.files:,} files under {root}")
    started = time.perf_counter()
    dirs, target = build_tree(root, args.files, args.per_dir, args.file_size)
    built = time.perf_counter() - started
    synced = timed(os.sync)
    report.add("tree", f"{args.files:,} files of {args.file_size} B in {dirs:,} directories")
    report.add("build time", f"{secs(built)} (+ {secs(synced)} sync)")
    section("full pass")
    bench_full_pass(root, args.repeats, report)
    section(f"per-poll budget adherence (budget {ms(args.budget)}, deadline checked every {CHECK_EVERY} entries)")
    bench_budget(root, args.budget, args.passes, report)
    section("event-loop lag while scanning")
    bench_lag(root, args.budget, args.passes, report)
    section("writer's last write → settled")
    bench_settle(root, target, args, report)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="settle-bench-", dir=args.dir))
    facts, report = machine_facts(root), Report()
    try:
        run(root, args, report)
    finally:
        if args.keep:
            print(f"\nkept the tree at {root}")
        else:
            print(f"\nremoving the tree ({secs(timed(lambda: shutil.rmtree(root)))})")
    facts.append(("load average at end (1/5/15 min)", " / ".join(f"{v:.2f}" for v in os.getloadavg())))
    text = markdown(report, facts, command_line())
    print("\n" + text)
    if not args.no_write:
        write_results(args.results, text, args.append)
        print(f"written to {args.results}")


if __name__ == "__main__":
    main()
