"""The tree-scan settle probe on real trees (tmp_path): fingerprints, quiet intervals, budgets, hot set, faults."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from culler.adapters.probes import treescan
from culler.adapters.probes.treescan import TreeScanProbe, TreeWalk, _ServerScan
from culler.core.settle import Observation, Seen
from culler.core.snapshot import ServerSnapshot

BIG = 1.0  # a budget no small tree needs: one poll is one pass


def tick() -> None:
    """Let the kernel's (coarse) timestamp clock move on, so the next change gets a new ctime."""
    time.sleep(0.02)


def make_tree(root: Path, dirs: int = 3, files: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for d in range(dirs):
        sub = root / f"dir{d}" / "deeper"
        sub.mkdir(parents=True)
        for f in range(files):
            (root / f"dir{d}" / f"file{f}.txt").write_text(f"content {d} {f}\n")
            (sub / f"nested{f}.bin").write_bytes(bytes(range(f + 1)))
    (root / "top.txt").write_text("hello\n")
    return root


def real_count(root: Path) -> int:
    """Entries below root (root included), symlinks not followed."""
    count = 1
    for _, dirnames, filenames in os.walk(root):
        count += len(dirnames) + len(filenames)
    return count


def full_pass(probe: TreeScanProbe, scan: _ServerScan, max_polls: int = 100_000) -> tuple[Observation, int]:
    """Poll until a pass completes (or something other than "scanning" comes back); (answer, polls)."""
    for polls in range(1, max_polls + 1):
        observation = probe.poll(scan)
        if not observation.detail.startswith("scanning"):
            return observation, polls
    raise AssertionError(f"no pass completed in {max_polls} polls")


def settled_scan(root: Path, hot_size: int = 32) -> tuple[TreeScanProbe, _ServerScan]:
    """A probe and scan that have completed two equal passes (quiet)."""
    probe, scan = TreeScanProbe(str(root), budget=BIG, hot_size=hot_size), _ServerScan(str(root))
    first = probe.poll(scan)
    assert first.seen is Seen.UNKNOWN and first.detail == "first pass done" and not first.error
    second = probe.poll(scan)
    assert second.seen is Seen.QUIET, second
    return probe, scan


# -- quiet and its bounds ------------------------------------------------------------------------


def test_first_pass_cannot_tell_then_equal_passes_vouch_between_them(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home")
    probe, scan = TreeScanProbe(str(root), budget=BIG), _ServerScan(str(root))
    before1 = time.monotonic()
    first = probe.poll(scan)
    after1 = time.monotonic()
    assert first.seen is Seen.UNKNOWN and not first.error
    time.sleep(0.05)  # quiet on purpose: the interval the next pass vouches for
    before2 = time.monotonic()
    second = probe.poll(scan)
    after2 = time.monotonic()
    assert second.seen is Seen.QUIET
    # quiet_for = start of pass 2 - end of pass 1, never "now - end of pass 2" nor up to now
    assert before2 - after1 <= second.quiet_for <= after2 - before1
    assert second.quiet_for >= 0.05
    time.sleep(0.05)
    before3 = time.monotonic()
    third = probe.poll(scan)
    after3 = time.monotonic()
    assert third.seen is Seen.QUIET
    assert before3 - after1 <= third.quiet_for <= after3 - before1  # still from the end of the first equal pass
    assert third.quiet_for > second.quiet_for
    assert f"of {real_count(root)} entries" in third.detail


def test_quiet_never_extends_past_the_start_of_the_last_pass(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home")
    probe, scan = settled_scan(root)
    time.sleep(0.1)
    before = time.monotonic()
    observation = probe.poll(scan)
    assert observation.seen is Seen.QUIET
    end_of_first = scan.stable_since
    assert end_of_first is not None
    assert observation.quiet_for <= time.monotonic() - end_of_first
    assert observation.quiet_for >= before - end_of_first - 0.001


# -- changes are seen ----------------------------------------------------------------------------


def _append(root: Path) -> None:
    with open(root / "dir1" / "file2.txt", "a") as handle:
        handle.write("more\n")


def _same_size_overwrite(root: Path) -> None:
    path = root / "dir1" / "file2.txt"
    old = path.read_bytes()
    path.write_bytes(old.upper() if old.upper() != old else old[::-1])
    assert path.stat().st_size == len(old)


def _write_then_reset_mtime(root: Path) -> None:
    path = root / "dir0" / "deeper" / "nested3.bin"
    before = path.stat()
    with open(path, "r+b") as handle:
        handle.write(b"\xff\xfe\xfd\xfc")  # same size, different bytes
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # as cp -p / rsync -t do
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def _create_file(root: Path) -> None:
    (root / "dir2" / "deeper" / "new.txt").write_text("")


def _delete_file(root: Path) -> None:
    (root / "dir2" / "file0.txt").unlink()


def _rename_file(root: Path) -> None:
    (root / "dir2" / "file0.txt").rename(root / "dir2" / "renamed.txt")


def _move_file_across_dirs(root: Path) -> None:
    (root / "dir2" / "file0.txt").rename(root / "dir0" / "file0.txt.moved")


def _mkdir(root: Path) -> None:
    (root / "dir0" / "deeper" / "newdir").mkdir()


def _rmdir(root: Path) -> None:
    shutil.rmtree(root / "dir1" / "deeper")


def _rename_dir(root: Path) -> None:
    (root / "dir1").rename(root / "dir1-renamed")


def _truncate(root: Path) -> None:
    os.truncate(root / "top.txt", 0)


def _chmod(root: Path) -> None:
    os.chmod(root / "top.txt", 0o600)


def _create_then_delete(root: Path) -> None:
    (root / "dir0" / "tmp").write_text("x")
    (root / "dir0" / "tmp").unlink()


def _symlink(root: Path) -> None:
    (root / "link").symlink_to("top.txt")


CHANGES: dict[str, Callable[[Path], None]] = {
    "append": _append,
    "same-size-overwrite": _same_size_overwrite,
    "write-then-mtime-reset": _write_then_reset_mtime,
    "create-file": _create_file,
    "delete-file": _delete_file,
    "rename-file": _rename_file,
    "move-file": _move_file_across_dirs,
    "mkdir": _mkdir,
    "rmdir": _rmdir,
    "rename-dir": _rename_dir,
    "truncate": _truncate,
    "chmod": _chmod,
    "create-then-delete": _create_then_delete,
    "symlink": _symlink,
}


@pytest.mark.parametrize("hot_size", [0, 32], ids=["passes-only", "with-hot-set"])
@pytest.mark.parametrize("change", list(CHANGES))
def test_every_kind_of_change_ends_quiet(tmp_path: Path, change: str, hot_size: int) -> None:
    root = make_tree(tmp_path / "home")
    probe, scan = settled_scan(root, hot_size=hot_size)
    tick()
    CHANGES[change](root)
    changed_at = time.monotonic()
    observation, _ = full_pass(probe, scan)
    assert observation.seen is Seen.ACTIVE, observation
    assert scan.stable_since is None and scan.quiet_for == 0.0
    # ...and once the writer is gone, quiet comes back, vouched only from after the change
    observation = probe.poll(scan)
    for _ in range(3):
        if observation.seen is Seen.QUIET:
            break
        observation, _ = full_pass(probe, scan)
    assert observation.seen is Seen.QUIET, observation
    assert scan.stable_since is not None and scan.stable_since >= changed_at


def test_an_unchanged_tree_stays_quiet_across_many_passes(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home")
    probe, scan = settled_scan(root)
    for _ in range(20):
        assert probe.poll(scan).seen is Seen.QUIET


def test_reading_the_tree_does_not_count_as_a_change(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home")
    probe, scan = settled_scan(root)
    tick()
    for path in root.rglob("*"):
        if path.is_file():
            path.read_bytes()  # atime may move; ctime does not
    assert probe.poll(scan).seen is Seen.QUIET


# -- the hot set ----------------------------------------------------------------------------------


def test_hot_set_catches_a_write_to_a_recent_file_mid_pass(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home", dirs=30, files=50)
    tick()
    recent = root / "dir7" / "recent.log"
    recent.write_text("line\n")  # the newest ctime in the tree: in the hot set after a pass
    probe, scan = TreeScanProbe(str(root), budget=0.0, hot_size=8), _ServerScan(str(root))
    first, polls = full_pass(probe, scan)
    assert first.detail == "first pass done" and polls > 3
    assert str(recent) in scan.hot
    in_pass = probe.poll(scan)
    assert in_pass.detail.startswith("scanning") and scan.walk is not None  # pass 2 in progress
    tick()
    with open(recent, "a") as handle:
        handle.write("another line\n")
    observation = probe.poll(scan)  # the very next poll, long before pass 2 could complete
    assert observation.seen is Seen.ACTIVE
    assert str(recent) in observation.detail
    assert scan.walk is None  # the pass in progress was abandoned


def test_an_ongoing_writer_shows_at_every_poll(tmp_path: Path) -> None:
    """After an active poll the hot set is refreshed, not dropped: a writer appending to a hot file is
    seen by every poll, not only by the first one of each pass."""
    root = make_tree(tmp_path / "home", dirs=30, files=50)
    tick()
    recent = root / "dir7" / "recent.log"
    recent.write_text("line\n")
    probe, scan = TreeScanProbe(str(root), budget=0.0, hot_size=8), _ServerScan(str(root))
    full_pass(probe, scan)
    for _ in range(5):
        tick()
        with open(recent, "a") as handle:
            handle.write("another line\n")
        observation = probe.poll(scan)
        assert observation.seen is Seen.ACTIVE and str(recent) in observation.detail
    assert probe.poll(scan).seen is not Seen.ACTIVE  # the writer paused: the hot set took its last state


def test_hot_set_holds_the_most_recently_changed_entries(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home", dirs=5, files=20)
    tick()
    newest = []
    for index in range(3):
        path = root / f"newest{index}"
        path.write_text("x")
        newest.append(str(path))
    walk = TreeWalk(str(root), hot_size=4)
    assert walk.step(time.monotonic() + BIG)
    hot = walk.hot_set()
    assert len(hot) == 4
    assert set(newest) <= set(hot)  # the 4th is root itself (its ctime moved with the creations)


def test_hot_set_sees_a_deleted_hot_file(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home")
    probe, scan = settled_scan(root)
    victim = next(iter(scan.hot))
    if victim == str(root):
        victim = next(path for path in scan.hot if path != str(root))
    tick()
    if os.path.isdir(victim):
        shutil.rmtree(victim)
    else:
        os.unlink(victim)
    observation = probe.poll(scan)
    assert observation.seen is Seen.ACTIVE


# -- budgets and resuming -------------------------------------------------------------------------


def test_a_pass_resumes_across_polls_and_counts_every_entry_once(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home", dirs=30, files=50)  # 3,000 files
    expected = real_count(root)
    assert expected == 1 + 30 * 2 + 30 * 50 * 2 + 1
    probe, scan = TreeScanProbe(str(root), budget=0.0, hot_size=32), _ServerScan(str(root))
    first, polls = full_pass(probe, scan)
    assert first.detail == "first pass done"
    assert polls >= expected // (treescan.CHECK_EVERY * 2)  # a zero budget: a few dozen entries per poll
    assert scan.last is not None and scan.last.entries == expected
    assert scan.last.size == sum(os.lstat(p).st_size for p in [root, *root.rglob("*")])
    second, _ = full_pass(probe, scan)
    assert second.seen is Seen.QUIET
    assert f"of {expected} entries" in second.detail


def test_each_poll_returns_near_its_budget(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home", dirs=30, files=50)
    budget = 0.002
    probe, scan = TreeScanProbe(str(root), budget=budget, hot_size=32), _ServerScan(str(root))
    durations = []
    for _ in range(2):  # two passes: the second also re-checks the hot set at every poll
        for _polls in range(10_000):
            started = time.monotonic()
            observation = probe.poll(scan)
            durations.append(time.monotonic() - started)
            if not observation.detail.startswith("scanning"):
                break
    assert observation.seen is Seen.QUIET
    assert len(durations) >= 4  # the budget really split the passes
    assert max(durations) <= budget + 0.02, sorted(durations)[-5:]


def test_an_empty_home_settles(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    _, scan = settled_scan(root)
    assert scan.last is not None and scan.last.entries == 1


# -- faults ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "regular-file"])
def test_a_home_that_cannot_be_read_cannot_tell(tmp_path: Path, kind: str) -> None:
    root = tmp_path / "home"
    if kind == "regular-file":
        root.write_text("not a directory")
    probe, scan = TreeScanProbe(str(root), budget=BIG), _ServerScan(str(root))
    for _ in range(3):
        observation = probe.poll(scan)
        assert observation.seen is Seen.UNKNOWN and observation.error, observation
        assert str(root) in observation.detail


def test_an_unreadable_subdirectory_cannot_tell_and_resets_quiet(tmp_path: Path, monkeypatch) -> None:
    root = make_tree(tmp_path / "home")
    probe, scan = settled_scan(root)
    blocked = str(root / "dir1")
    real_scandir = os.scandir

    def scandir(path: str):
        if os.fspath(path) == blocked:
            raise PermissionError(13, "Permission denied", path)
        return real_scandir(path)

    monkeypatch.setattr(treescan.os, "scandir", scandir)
    observation = probe.poll(scan)
    assert observation.seen is Seen.UNKNOWN and observation.error
    assert blocked in observation.detail and "Permission denied" in observation.detail
    assert scan.stable_since is None and scan.walk is None
    assert probe.poll(scan).error  # and again at the next poll: never quiet on a tree it cannot read


def test_a_stat_failure_other_than_vanishing_cannot_tell(tmp_path: Path, monkeypatch) -> None:
    root = make_tree(tmp_path / "home")
    probe, scan = TreeScanProbe(str(root), budget=BIG), _ServerScan(str(root))
    real = os.DirEntry.stat if hasattr(os.DirEntry, "stat") else None
    assert real is not None

    class Entry:
        def __init__(self, entry: os.DirEntry[str]) -> None:
            self._entry = entry
            self.path = entry.path

        def stat(self, *, follow_symlinks: bool = True) -> os.stat_result:
            if self.path.endswith("file1.txt"):
                raise OSError(5, "Input/output error", self.path)
            return self._entry.stat(follow_symlinks=follow_symlinks)

        def is_dir(self, *, follow_symlinks: bool = True) -> bool:
            return self._entry.is_dir(follow_symlinks=follow_symlinks)

    real_scandir = os.scandir

    class Iterator:
        def __init__(self, path: str) -> None:
            self._inner = real_scandir(path)

        def __next__(self) -> Entry:
            return Entry(next(self._inner))

        def __iter__(self) -> Iterator:
            return self

        def close(self) -> None:
            self._inner.close()

    monkeypatch.setattr(treescan.os, "scandir", Iterator)
    observation = probe.poll(scan)
    assert observation.seen is Seen.UNKNOWN and observation.error
    assert "Input/output error" in observation.detail and "file1.txt" in observation.detail


def test_an_entry_vanishing_mid_pass_is_a_change(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "home", dirs=10, files=50)
    probe, scan = settled_scan(root)
    probe.budget = 0.0
    first = probe.poll(scan)
    assert first.detail.startswith("scanning")
    shutil.rmtree(root / "dir9")  # not reached yet by this pass (scandir order is not sorted: any dir will do)
    shutil.rmtree(root / "dir8")
    observation, _ = full_pass(probe, scan)
    assert observation.seen is Seen.ACTIVE


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = make_tree(tmp_path / "elsewhere", dirs=10, files=50)
    root = make_tree(tmp_path / "home", dirs=1, files=1)
    (root / "big").symlink_to(outside, target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    probe, scan = TreeScanProbe(str(root), budget=BIG), _ServerScan(str(root))
    observation = probe.poll(scan)
    assert observation.detail == "first pass done"
    assert scan.last is not None and scan.last.entries == real_count(root)
    assert scan.last.entries < 20
    tick()
    (outside / "dir0" / "file0.txt").write_text("changed outside the home")  # not this home's business
    assert probe.poll(scan).seen is Seen.QUIET


# -- observe / forget (async, per server) -----------------------------------------------------------


def snapshot(user: str, name: str = "") -> ServerSnapshot:
    return ServerSnapshot(user, name, False, (), None, None, None, True)


async def test_observe_keeps_state_per_server_and_forget_drops_it(tmp_path: Path) -> None:
    make_tree(tmp_path / "alice")
    make_tree(tmp_path / "bob")
    probe = TreeScanProbe(str(tmp_path / "{username}"), budget=BIG)
    assert (await probe.observe(snapshot("alice"))).detail == "first pass done"
    assert (await probe.observe(snapshot("bob"))).detail == "first pass done"
    assert (await probe.observe(snapshot("alice"))).seen is Seen.QUIET
    tick()
    (tmp_path / "bob" / "top.txt").write_text("bob was here")
    assert (await probe.observe(snapshot("alice"))).seen is Seen.QUIET
    assert (await probe.observe(snapshot("bob"))).seen is Seen.ACTIVE
    probe.forget("alice/")
    assert "alice/" not in probe._scans
    assert (await probe.observe(snapshot("alice"))).detail == "first pass done"  # from scratch
    probe.forget("nobody/")  # unknown keys are fine


async def test_observe_uses_the_server_name_in_the_template(tmp_path: Path) -> None:
    make_tree(tmp_path / "alice" / "lab")
    probe = TreeScanProbe(str(tmp_path / "{username}" / "{servername}"), budget=BIG)
    assert probe.root_for(snapshot("alice", "lab")) == str(tmp_path / "alice" / "lab")
    assert (await probe.observe(snapshot("alice", "lab"))).detail == "first pass done"
    missing = await probe.observe(snapshot("alice", "other"))
    assert missing.seen is Seen.UNKNOWN and missing.error


async def test_forget_during_a_running_poll_waits_for_the_step(tmp_path: Path, monkeypatch) -> None:
    """forget() runs on the event loop while a poll's step runs in a worker thread: it must not close
    the walk's directory iterators under the step, and the walk is closed once the step ends."""
    root = make_tree(tmp_path / "alice")
    probe = TreeScanProbe(str(tmp_path / "{username}"), budget=BIG)
    entered, release = threading.Event(), threading.Event()
    real_step = TreeWalk.step

    def slow_step(self: TreeWalk, deadline: float) -> bool:
        entered.set()
        assert release.wait(10)
        return real_step(self, deadline)

    monkeypatch.setattr(TreeWalk, "step", slow_step)
    task = asyncio.ensure_future(probe.observe(snapshot("alice")))
    assert await asyncio.to_thread(entered.wait, 10)
    scan = probe._scans["alice/"]
    walk = scan.walk
    assert walk is not None
    # a second poll of the same home while the first runs does not run a second walk
    assert probe.poll(scan).detail == "an earlier scan of this home is still running"
    probe.forget("alice/")
    assert scan.walk is walk  # not closed under the running step
    release.set()
    observation = await task
    assert observation.seen is Seen.UNKNOWN  # first pass of a forgotten scan: no claim
    assert scan.walk is None
    assert "alice/" not in probe._scans
    assert real_count(root) > 1


async def test_passes_rest_for_the_window_so_the_next_equal_pass_vouches_for_it(tmp_path: Path) -> None:
    root = make_tree(tmp_path / "alice")
    probe = TreeScanProbe(str(tmp_path / "{username}"), budget=1.0)
    first = await probe.observe(snapshot("alice"), window=0.3)
    assert first.detail == "first pass done"
    resting = await probe.observe(snapshot("alice"), window=0.3)
    assert resting.seen is Seen.UNKNOWN and resting.detail.startswith("between passes")  # no I/O meanwhile
    deadline = time.monotonic() + 5
    while (observation := await probe.observe(snapshot("alice"), window=0.3)).seen is not Seen.QUIET:
        assert observation.seen is Seen.UNKNOWN and time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert observation.quiet_for >= 0.3  # the second pass alone vouches for the whole window
    assert real_count(root) == probe._scans["alice/"].last.entries
