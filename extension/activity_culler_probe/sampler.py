"""Whether anything writes under the roots, sampled only while someone asks (no jupyter-server imports here).

A sample is a fingerprint of every file under the roots: how many, their total size, and the sums and the
latest of their modification and change times (a change time moves on every write and cannot be set
back, so a writer that restores the modification time is still seen). An append, a rewrite, a new or a
removed file changes it; a write outside the roots (``/tmp``, a pipe, a socket) cannot. Two samples that
differ mean "written between them"; quiet is counted from the last sample that saw a change (or from the
first sample) up to the latest sample, so it never claims more quiet than was seen.

With a process scope (processes.py), a change counts only if what a stop would kill may have made it: a
process in scope wrote (its write counter moved) across the two walks, or holds a file under the roots open
for writing. A change no such process can have made (another pod writing to a shared volume) is foreign.
"""

from __future__ import annotations

import asyncio
import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from activity_culler_probe.processes import Counters, Scope, moved


@dataclass(frozen=True)
class Fingerprint:
    files: int
    size: int
    mtime_sum: int
    mtime_max: int
    ctime_sum: int = 0
    ctime_max: int = 0


class TooBig(Exception):
    """The walk ran past its time budget: this sample cannot vouch for anything."""


def fingerprint(roots: Sequence[str], budget: float, clock: Callable[[], float] = time.monotonic) -> Fingerprint:
    """Walk every root (symbolic links are not followed); ``TooBig`` past ``budget`` seconds."""
    deadline = clock() + budget
    files = size = mtime_sum = mtime_max = ctime_sum = ctime_max = 0
    stack = [root for root in roots if os.path.isdir(root)]
    while stack:
        if clock() > deadline:
            raise TooBig(f"the roots took more than {budget:g}s to scan")
        try:
            entries = list(os.scandir(stack.pop()))
        except OSError:
            continue  # vanished or unreadable: the parent's fingerprint already changed, or never will
        for entry in entries:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(info.st_mode):
                stack.append(entry.path)
            elif stat.S_ISREG(info.st_mode):
                files += 1
                size += info.st_size
                mtime_sum += info.st_mtime_ns
                mtime_max = max(mtime_max, info.st_mtime_ns)
                ctime_sum += info.st_ctime_ns
                ctime_max = max(ctime_max, info.st_ctime_ns)
    return Fingerprint(files, size, mtime_sum, mtime_max, ctime_sum, ctime_max)


@dataclass(frozen=True)
class Look:
    files: Fingerprint
    before: Counters | None = None  # the scope's write counters just before the walk, and just after
    after: Counters | None = None


def foreign(previous: Look, now: Look, scope: Scope | None, roots: Sequence[str]) -> bool:
    """Whether a change between two looks cannot have been made by a process in scope. The counters span
    from before the previous walk to after this one, so a write either walk saw is inside them."""
    if scope is None or previous.before is None or now.after is None or now.files == previous.files:
        return False
    return not moved(previous.before, now.after) and not scope.holds_open_for_writing(roots, list(now.after))


def take(roots: Sequence[str], budget: float, scope: Scope | None, previous: Look | None) -> tuple[Look, bool, float]:
    """One look (in a worker thread), whether its change is foreign, and the CPU seconds it took."""
    began = time.thread_time()
    before = scope.counters() if scope else None
    files = fingerprint(roots, budget)
    now = Look(files, before, scope.counters() if scope else None)
    outside = previous is not None and foreign(previous, now, scope, roots)
    return now, outside, time.thread_time() - began


class Sampler:
    """Samples while asked, stops ``idle_stop`` seconds after the last ask. The pause between samples is
    ``interval``, or longer where a sample's CPU cost would otherwise exceed ``max_cpu`` of one core."""

    def __init__(
        self,
        roots: Sequence[str],
        interval: float = 2.0,
        idle_stop: float = 300.0,
        budget: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        max_cpu: float = 0.01,
        scope: Scope | None = None,
    ) -> None:
        self.roots = list(roots)
        self.scope = scope
        self.min_interval = interval
        self.interval = interval  # the pause in force: derived from the last sample's measured cost
        self.max_cpu = max_cpu
        self.idle_stop = idle_stop
        self.budget = budget
        self.clock = clock
        self._task: asyncio.Task[None] | None = None
        self._asked = 0.0
        self._reset()

    def _reset(self) -> None:
        self.samples = 0
        self.last: Fingerprint | None = None
        self.look: Look | None = None
        self.first_at: float | None = None
        self.sampled_at: float | None = None
        self.changed_at: float | None = None
        self.changed_last = False
        self.problem: str | None = None

    def ask(self) -> dict[str, object]:
        """What the samples say now, starting the sampling on the first ask (no paths, no file names)."""
        self._asked = self.clock()
        if self._task is None or self._task.done():
            self._reset()
            self._task = asyncio.get_running_loop().create_task(self._run())
        return self.state()

    def state(self) -> dict[str, object]:
        scope = self.scope.mode if self.scope else "roots"
        base: dict[str, object] = {"interval": self.interval, "samples": self.samples, "scope": scope}
        if self.problem is not None:
            return {**base, "state": "unknown", "detail": self.problem}
        if self.samples < 2 or self.first_at is None:
            return {**base, "state": "unknown", "detail": "sampling started"}
        if self.changed_last:
            return {**base, "state": "active", "detail": "files under the roots changed"}
        quiet_since = self.changed_at if self.changed_at is not None else self.first_at
        seen_until = self.sampled_at if self.sampled_at is not None else quiet_since
        # quiet up to the last sample, not up to now: a write since then is not seen yet
        return {**base, "state": "quiet", "quiet_for": round(seen_until - quiet_since, 3)}

    def record(self, sample: Fingerprint | None, problem: str | None = None, outside: bool = False) -> None:
        """Note a sample; ``outside``: its change was foreign (made by nothing a stop would kill)."""
        now = self.clock()
        self.problem = problem
        if sample is None:
            return
        changed = self.last is not None and sample != self.last and not outside
        if self.last is None:
            self.first_at = now
        elif changed:
            self.changed_at = now
        self.changed_last = changed
        self.last = sample
        self.sampled_at = now
        self.samples += 1

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while self.clock() - self._asked < self.idle_stop:
            try:
                look, outside, cpu = await loop.run_in_executor(
                    None, take, self.roots, self.budget, self.scope, self.look
                )
            except TooBig as error:
                self.look = None  # the next look starts a new comparison
                self.record(None, str(error))
            else:
                self.look = look
                self.record(look.files, outside=outside)
                self.interval = max(self.min_interval, cpu / self.max_cpu)
            await asyncio.sleep(self.interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
