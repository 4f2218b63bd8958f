"""Which processes a stop would kill, and whether they wrote since the last look (Linux ``/proc``).

Scope ``namespace`` is every process this server can see: in a KubeSpawner pod (or any container) that is
the container's PID namespace, so reparented ``nohup``/``setsid`` jobs are in it. Scope ``tree`` is the
server's own process tree (kernels, terminals and what they start), for servers running on a shared host,
where a job that escaped the tree outlives the stop anyway.

Attribution is conservative: a process whose counters cannot be read, one that appeared and one that
vanished between two looks all count as "may have written".
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

Counters = Mapping[int, int | None]  # pid -> bytes passed to write() so far (None: unreadable)

_ACCESS_MODE = 0o3  # O_ACCMODE
_READ_ONLY = 0


def container_like(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this server runs in its own container (a pod, Docker, Podman)."""
    return "KUBERNETES_SERVICE_HOST" in environ or any(
        os.path.exists(marker) for marker in ("/.dockerenv", "/run/.containerenv")
    )


def choose_mode(mode: str, environ: Mapping[str, str] = os.environ) -> str:
    if mode != "auto":
        return mode
    return "namespace" if container_like(environ) else "tree"


def _pids(proc: str) -> list[int]:
    try:
        return [int(name) for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        return []


def _parent(proc: str, pid: int) -> int | None:
    try:
        with open(f"{proc}/{pid}/stat", "rb") as stat:
            fields = stat.read().rpartition(b")")[2].split()
    except OSError:
        return None
    return int(fields[1]) if len(fields) > 1 else None


def descendants(root: int, parents: Mapping[int, int | None]) -> set[int]:
    """``root`` and every process below it, given each process's parent."""
    children: dict[int, list[int]] = {}
    for pid, parent in parents.items():
        if parent is not None:
            children.setdefault(parent, []).append(pid)
    found, stack = {root}, [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            if child not in found:
                found.add(child)
                stack.append(child)
    return found


def _wchar(proc: str, pid: int) -> int | None:
    try:
        with open(f"{proc}/{pid}/io", "rb") as io:
            for line in io:
                if line.startswith(b"wchar:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def moved(before: Counters, after: Counters) -> bool:
    """Whether any process in scope may have written between the two looks."""
    if before.keys() != after.keys():
        return True  # a process started or ended: it may have written and gone (its parent may not reap yet)
    return any(count is None or before[pid] != count for pid, count in after.items())


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _writable(proc: str, pid: int, fd: str) -> bool:
    try:
        with open(f"{proc}/{pid}/fdinfo/{fd}", "rb") as info:
            for line in info:
                if line.startswith(b"flags:"):
                    return int(line.split()[1], 8) & _ACCESS_MODE != _READ_ONLY
    except (OSError, ValueError):
        return True  # cannot rule it out
    return True


class Scope:
    """The processes a stop would kill, read from ``proc`` (``/proc`` outside tests)."""

    def __init__(self, mode: str, root: int, proc: str = "/proc") -> None:
        if mode not in ("namespace", "tree"):
            raise ValueError(f"scope must be namespace or tree, not {mode!r}")
        self.mode = mode
        self.root = root
        self.proc = proc

    def available(self) -> bool:
        return os.path.isdir(f"{self.proc}/{self.root}")

    def pids(self) -> set[int]:
        listed = _pids(self.proc)
        if self.mode == "namespace":
            return set(listed)
        return descendants(self.root, {pid: _parent(self.proc, pid) for pid in listed})

    def counters(self) -> dict[int, int | None]:
        return {pid: _wchar(self.proc, pid) for pid in self.pids()}

    def holds_open_for_writing(self, roots: Sequence[str], pids: Sequence[int]) -> bool:
        """Whether a process in scope has a file under the roots open for writing, or mapped shared and
        writable (stores to a map move no write counter). A process whose descriptors cannot be read counts
        as holding one."""
        real_roots = [os.path.realpath(root) for root in roots]
        return any(self._maps_writable(pid, real_roots) for pid in pids) or self._fds_writable(real_roots, pids)

    def _maps_writable(self, pid: int, roots: Sequence[str]) -> bool:
        try:
            with open(f"{self.proc}/{pid}/maps", "rb") as maps:
                for line in maps:
                    fields = line.split(maxsplit=5)  # address perms offset dev inode path
                    shared_writable = len(fields) == 6 and fields[1][1:2] == b"w" and fields[1][3:4] == b"s"
                    if shared_writable and _under(fields[5].rstrip(b"\n").decode(errors="replace"), roots):
                        return True
        except FileNotFoundError:
            return False  # it ended
        except OSError:
            return True
        return False

    def _fds_writable(self, real_roots: Sequence[str], pids: Sequence[int]) -> bool:
        for pid in pids:
            try:
                fds = os.listdir(f"{self.proc}/{pid}/fd")
            except FileNotFoundError:
                continue  # it ended
            except OSError:
                return True
            for fd in fds:
                try:
                    target = os.readlink(f"{self.proc}/{pid}/fd/{fd}")
                except OSError:
                    continue
                if _under(target, real_roots) and _writable(self.proc, pid, fd):
                    return True
        return False
