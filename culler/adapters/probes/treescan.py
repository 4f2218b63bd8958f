"""The tree-scan settle probe: resumable, time-budgeted lstat passes over a user's home.

A pass's fingerprint is (entries, total size, sum and max of ``st_ctime_ns``): ctime moves on every
content or metadata change, even when a writer resets mtime (``cp -p``, ``rsync -t``, ``os.utime``)
or overwrites in place without changing the size. Quiet is vouched only between the *end* of one
pass and the *start* of a later pass with the same fingerprint; fingerprints are compared with each
other, never with the local clock, so clock skew with the file server does not matter. A hot set of
the most recently changed files is re-checked at every poll, so an ongoing writer shows at once.
Passes run in a worker thread, in steps bounded by a time budget checked every few entries; quiet is
reported only by the poll that completes a pass (in between, the probe "cannot tell yet").
"""

from __future__ import annotations

import asyncio
import heapq
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from culler.core.names import Template
from culler.core.settle import Observation, active, quiet, unknown
from culler.core.snapshot import ServerSnapshot
from culler.policy.durations import format_duration

CHECK_EVERY = 32  # entries between deadline checks


@dataclass(frozen=True)
class Fingerprint:
    entries: int
    size: int
    ctime_sum: int
    ctime_max: int


class ScanError(Exception):
    pass


class TreeWalk:
    """One pass over a tree, advanced in budgeted steps. Used by one thread at a time."""

    def __init__(self, root: str, hot_size: int) -> None:
        self.root = root
        self.hot_size = hot_size
        self.entries = self.size = self.ctime_sum = self.ctime_max = 0
        self.changed_during = False  # an entry vanished mid-pass: the tree is not still
        self._hot: list[tuple[int, str, int]] = []  # min-heap of (ctime_ns, path, size)
        self._stack: list[Iterator[os.DirEntry[str]]] = []
        self._started = False

    def step(self, deadline: float) -> bool:
        """Scan until the pass completes (True) or the deadline passes (False)."""
        if not self._started:
            self._started = True
            self._add(self.root, os.lstat(self.root))
            self._push(self.root)
        count = 0
        while self._stack:
            entry = next(self._stack[-1], None)
            if entry is None:
                self._stack.pop().close()  # type: ignore[attr-defined]
                continue
            self._visit(entry)
            count += 1
            if count % CHECK_EVERY == 0 and time.monotonic() >= deadline:
                return False
        return True

    def _visit(self, entry: os.DirEntry[str]) -> None:
        try:
            stat = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            self.changed_during = True
            return
        self._add(entry.path, stat)
        if entry.is_dir(follow_symlinks=False):
            self._push(entry.path)

    def _push(self, path: str) -> None:
        try:
            self._stack.append(os.scandir(path))
        except FileNotFoundError:
            self.changed_during = True
        except OSError as error:
            raise ScanError(f"cannot read {path}: {error.strerror or error}") from error

    def _add(self, path: str, stat: os.stat_result) -> None:
        self.entries += 1
        self.size += stat.st_size
        self.ctime_sum += stat.st_ctime_ns
        self.ctime_max = max(self.ctime_max, stat.st_ctime_ns)
        item = (stat.st_ctime_ns, path, stat.st_size)
        if len(self._hot) < self.hot_size:
            heapq.heappush(self._hot, item)
        elif self.hot_size and item > self._hot[0]:
            heapq.heapreplace(self._hot, item)

    def fingerprint(self) -> Fingerprint | None:
        if self.changed_during:
            return None
        return Fingerprint(self.entries, self.size, self.ctime_sum, self.ctime_max)

    def hot_set(self) -> dict[str, tuple[int, int]]:
        return {path: (ctime, size) for ctime, path, size in self._hot}

    def close(self) -> None:
        for iterator in self._stack:
            iterator.close()  # type: ignore[attr-defined]
        self._stack.clear()


@dataclass
class _ServerScan:
    root: str
    walk: TreeWalk | None = None
    walk_started: float = 0.0
    last: Fingerprint | None = None
    last_end: float = 0.0
    stable_since: float | None = None  # end of the first pass of the current run of equal passes
    quiet_for: float = 0.0
    passes: int = 0
    hot: dict[str, tuple[int, int]] = field(default_factory=dict)
    window: float = 0.0  # the settle window asked for: passes rest this long between them
    rest_until: float = 0.0
    # A poll runs in a worker thread; forget() runs on the event loop. The lock keeps them from
    # closing the walk's directory iterators under a running step (a use-after-free in scandir).
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    forgotten: bool = False

    def unsettle(self) -> None:
        self.stable_since = None
        self.quiet_for = 0.0
        self.rest_until = 0.0  # after a change, the next pass starts at once
        if self.walk is not None:
            self.walk.close()
            self.walk = None


class TreeScanProbe:
    """Settle probe over homes mounted at ``path_template`` (KubeSpawner's names: culler.names)."""

    name = "tree-scan"

    def __init__(self, path_template: Template | str, budget: float = 0.05, hot_size: int = 32) -> None:
        self.path_template = path_template if isinstance(path_template, Template) else Template(path_template)
        self.budget = budget
        self.hot_size = hot_size
        self._scans: dict[str, _ServerScan] = {}

    def root_for(self, server: ServerSnapshot) -> str:
        return self.path_template.render(server.user, server.name)

    async def observe(self, server: ServerSnapshot, window: float = 0.0) -> Observation:
        """``window``: the quiet the caller needs. Passes rest that long between them, so the second
        equal pass vouches for it (sooner, and with less I/O, than back-to-back passes)."""
        root = self.root_for(server)
        scan = self._scans.get(server.key)
        if scan is None or scan.root != root:
            if scan is not None:
                self.forget(server.key)
            scan = self._scans[server.key] = _ServerScan(root)
        scan.window = window
        return await asyncio.to_thread(self.poll, scan)

    def forget(self, key: str) -> None:
        scan = self._scans.pop(key, None)
        if scan is None:
            return
        scan.forgotten = True  # a poll still running closes the walk when it ends
        if scan.lock.acquire(blocking=False):
            try:
                scan.unsettle()
            finally:
                scan.lock.release()

    def poll(self, scan: _ServerScan) -> Observation:
        """One budgeted poll (runs in a worker thread); one poll at a time per home."""
        if not scan.lock.acquire(blocking=False):
            return unknown("an earlier scan of this home is still running")
        try:
            return self._poll(scan)
        finally:
            if scan.forgotten:
                scan.unsettle()
            scan.lock.release()

    def _poll(self, scan: _ServerScan) -> Observation:
        started = time.monotonic()
        try:
            changed = _hot_change(scan.hot)
        except OSError as error:
            scan.unsettle()
            return unknown(f"cannot read {error.filename}: {error.strerror or error}", error=True)
        if changed:
            scan.unsettle()  # the hot set stays (refreshed): an ongoing writer shows at every poll
            return active(f"{changed} changed")
        so_far = f"; quiet for {format_duration(scan.quiet_for)} so far" if scan.stable_since is not None else ""
        if scan.walk is None and started < scan.rest_until:
            return unknown(f"between passes ({scan.passes} done{so_far})")
        if scan.walk is None:
            scan.walk, scan.walk_started = TreeWalk(scan.root, self.hot_size), started
        try:
            complete = scan.walk.step(started + self.budget)
        except (ScanError, OSError) as error:
            scan.unsettle()
            where = scan.root if isinstance(error, ScanError) else error.filename or scan.root
            detail = str(error) if isinstance(error, ScanError) else f"cannot read {where}: {error.strerror or error}"
            return unknown(detail, error=True)
        if not complete:
            return unknown(f"scanning (pass {scan.passes + 1}{so_far})")
        if self._finish_pass(scan):
            return active("the tree changed between passes")
        if scan.stable_since is None:
            return unknown("first pass done")
        # Vouched only at the end of a pass: between polls the tree is not looked at as a whole.
        return quiet(scan.quiet_for, f"{scan.passes} passes of {scan.last.entries if scan.last else 0} entries")

    def _finish_pass(self, scan: _ServerScan) -> bool:
        """Close a completed pass; True when the tree moved since the previous one."""
        walk = scan.walk
        assert walk is not None
        fingerprint, ended = walk.fingerprint(), time.monotonic()
        scan.hot, scan.walk = walk.hot_set(), None
        scan.passes += 1
        same = fingerprint is not None and fingerprint == scan.last
        moved = scan.last is not None and not same
        if same:
            if scan.stable_since is None:
                scan.stable_since = scan.last_end
            scan.quiet_for = scan.walk_started - scan.stable_since
        else:
            scan.stable_since, scan.quiet_for = None, 0.0
        scan.last, scan.last_end = fingerprint, ended
        scan.rest_until = ended + scan.window
        return moved or fingerprint is None


def _hot_change(hot: dict[str, tuple[int, int]]) -> str | None:
    """The first hot file that changed since last seen (None: none did); updates ``hot`` in place."""
    changed: list[str] = []
    for path, (ctime, size) in list(hot.items()):
        try:
            stat = os.lstat(path)
        except FileNotFoundError:
            del hot[path]
            changed.append(path)
            continue
        if stat.st_ctime_ns != ctime or stat.st_size != size:
            hot[path] = (stat.st_ctime_ns, stat.st_size)
            changed.append(path)
    return changed[0] if changed else None
