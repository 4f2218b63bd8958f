"""The in-server probe's sampler: what a fingerprint of the roots sees, and how quiet is counted."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

pytest.importorskip("activity_culler_probe")  # installed by ./dev from extension/

from activity_culler_probe.sampler import Fingerprint, Sampler, TooBig, fingerprint


def test_a_rewrite_that_puts_the_modification_time_back_is_still_seen(tmp_path: Path) -> None:
    data = tmp_path / "weights.bin"
    data.write_bytes(b"a" * 64)
    before = fingerprint([str(tmp_path)], budget=5)
    stat = data.stat()
    time.sleep(0.01)  # past the file system's timestamp granularity
    data.write_bytes(b"b" * 64)  # same size
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as rsync -t or tar would
    after = fingerprint([str(tmp_path)], budget=5)
    assert (after.size, after.mtime_sum) == (before.size, before.mtime_sum) and after != before


def test_an_append_a_new_file_and_a_removal_change_the_fingerprint(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "work").mkdir(parents=True)
    log = home / "work" / "train.log"
    log.write_text("epoch 1\n")
    before = fingerprint([str(home)], budget=5)
    with log.open("a") as out:
        out.write("epoch 2\n")
    appended = fingerprint([str(home)], budget=5)
    assert appended != before and appended.size == before.size + len("epoch 2\n")
    (home / "new.txt").write_text("x")
    created = fingerprint([str(home)], budget=5)
    assert created.files == appended.files + 1
    (home / "new.txt").unlink()
    assert fingerprint([str(home)], budget=5).files == appended.files


def test_writes_outside_the_roots_and_symlinked_trees_do_not_count(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    elsewhere.mkdir()
    (home / "scratch").symlink_to(elsewhere)  # a link out of the home is not followed
    before = fingerprint([str(home)], budget=5)
    (elsewhere / "big.bin").write_bytes(b"0" * 4096)
    assert fingerprint([str(home)], budget=5) == before
    assert fingerprint([str(tmp_path / "missing")], budget=5) == Fingerprint(0, 0, 0, 0)


def test_a_walk_past_its_budget_cannot_vouch(tmp_path: Path) -> None:
    for index in range(20):
        (tmp_path / f"f{index}").mkdir()
    ticks = iter(range(1000))
    with pytest.raises(TooBig):
        fingerprint([str(tmp_path)], budget=3, clock=lambda: float(next(ticks)))


def test_quiet_is_counted_from_the_last_sample_that_saw_a_change() -> None:
    now = {"t": 100.0}
    sampler = Sampler(["/nowhere"], interval=2, clock=lambda: now["t"])
    a, b = Fingerprint(1, 10, 5, 5), Fingerprint(1, 11, 6, 6)
    assert sampler.state()["state"] == "unknown"  # nothing sampled yet
    sampler.record(a)
    assert sampler.state() == {
        "interval": 2,
        "samples": 1,
        "scope": "roots",
        "state": "unknown",
        "detail": "sampling started",
    }
    now["t"] = 102.0
    sampler.record(b)  # written between the two samples
    assert sampler.state()["state"] == "active"
    now["t"] = 104.0
    sampler.record(b)
    now["t"] = 110.0  # quiet from 102 up to the last sample (104), not up to now: 106-110 is not seen yet
    assert sampler.state() == {"interval": 2, "samples": 3, "scope": "roots", "state": "quiet", "quiet_for": 2.0}
    sampler.record(None, "the roots took more than 1s to scan")
    assert sampler.state()["state"] == "unknown"  # a sample that could not finish vouches for nothing
    sampler.record(b)
    assert sampler.state()["state"] == "quiet"


def test_without_a_change_quiet_counts_from_the_first_sample() -> None:
    now = {"t": 0.0}
    sampler = Sampler(["/nowhere"], clock=lambda: now["t"])
    same = Fingerprint(3, 30, 9, 3)
    sampler.record(same)
    now["t"] = 5.0
    sampler.record(same)
    now["t"] = 7.0
    assert sampler.state()["quiet_for"] == 5.0  # from the first sample to the latest


async def test_sampling_starts_on_the_first_ask_and_stops_when_nobody_asks(tmp_path: Path) -> None:
    sampler = Sampler([str(tmp_path)], interval=0.01, idle_stop=0.2)
    assert sampler.ask()["state"] == "unknown"
    task = sampler._task
    assert task is not None
    await asyncio.wait_for(task, 5)  # stops by itself once idle_stop passed without an ask
    assert sampler.samples >= 2
    assert sampler.ask()["detail"] == "sampling started"  # a new ask starts afresh
    await sampler.stop()


async def test_the_pause_between_samples_grows_with_a_samples_measured_cost(tmp_path: Path) -> None:
    for index in range(300):
        (tmp_path / f"f{index}").write_text("x")
    sampler = Sampler([str(tmp_path)], interval=0.01, idle_stop=60, max_cpu=1e-6)  # any cost is too much
    sampler.ask()
    deadline = asyncio.get_running_loop().time() + 10
    while sampler.samples < 1:
        assert asyncio.get_running_loop().time() < deadline, "no sample within 10 s"
        await asyncio.sleep(0.01)
    # the pause is set in the same step that records the sample (no await between them)
    assert sampler.interval > 1 and sampler.state()["interval"] == sampler.interval
    await sampler.stop()
