"""The in-server probe (extension/): CPU per sample, and the server's event-loop lag while it samples.

Not part of the test suite. Run from the repository root with the extension installed (./dev does):

    .venv/bin/python benchmarks/probe_bench.py                     # homes of 10,000 and 200,000 files
    .venv/bin/python benchmarks/probe_bench.py --files 50000 --samples 10

Each home is a tree of directories of 100 small files. A sample walks it all (the extension's
fingerprint). The loop lag is measured by a task that wants to run every 10 ms while the sampler works in
its worker thread, as it does inside jupyter-server.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

from activity_culler_probe.sampler import Sampler, fingerprint


def make_home(root: Path, files: int) -> None:
    for index in range(files):
        folder = root / f"d{index // 10000}" / f"e{(index // 100) % 100}"
        if index % 100 == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"f{index % 100}.txt").write_bytes(b"x" * (index % 512))


def cost(root: Path, samples: int) -> tuple[float, float]:
    """Median CPU and wall seconds of one sample (the walk's thread, measured in-line)."""
    cpu, wall = [], []
    for _ in range(samples):
        began, began_cpu = time.perf_counter(), time.thread_time()
        fingerprint([str(root)], budget=600)
        wall.append(time.perf_counter() - began)
        cpu.append(time.thread_time() - began_cpu)
    return statistics.median(cpu), statistics.median(wall)


async def loop_lag(root: Path, interval: float, seconds: float) -> list[float]:
    """How late a 10 ms ticker runs while the sampler samples every ``interval`` s."""
    sampler = Sampler([str(root)], interval=interval, idle_stop=seconds + 5, budget=600)
    sampler.ask()
    lags: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        due = time.perf_counter() + 0.01
        await asyncio.sleep(0.01)
        lags.append(max(0.0, time.perf_counter() - due))
    await sampler.stop()
    return lags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=lambda s: [int(n) for n in s.split(",")], default=[10000, 200000])
    parser.add_argument("--samples", type=int, default=5)
    parser.add_argument("--lag-seconds", type=float, default=10.0)
    args = parser.parse_args()
    print("| files | CPU per sample | wall per sample | interval for < 1 % of a core | loop lag p50 / p99 |")
    print("|---|---|---|---|---|")
    for files in args.files:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            make_home(root, files)
            cpu, wall = cost(root, args.samples)
            interval = max(2.0, cpu / 0.01)  # sampling at this interval costs at most 1 % of one core
            lags = sorted(asyncio.run(loop_lag(root, min(interval, args.lag_seconds / 3), args.lag_seconds)))
            p50, p99 = lags[len(lags) // 2], lags[int(len(lags) * 0.99)]
            print(
                f"| {files:,} | {cpu * 1000:.0f} ms | {wall * 1000:.0f} ms | {interval:.0f} s "
                f"| {p50 * 1000:.1f} / {p99 * 1000:.1f} ms |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
