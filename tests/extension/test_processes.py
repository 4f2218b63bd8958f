"""Which processes a stop would kill, and whether a change under the roots is theirs (real /proc)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest.importorskip("activity_culler_probe")  # installed by ./dev from extension/
if not os.path.isdir("/proc/self/fd"):
    pytest.skip("needs Linux /proc", allow_module_level=True)

from activity_culler_probe.processes import Scope, choose_mode, descendants, moved
from activity_culler_probe.sampler import Fingerprint, Sampler, take

# A stand-in for a server: it appends "x" to each path it reads on stdin, and may start children.
SERVER = """\
import sys
for line in sys.stdin:
    with open(line.strip(), "a") as out:
        out.write("x")
    print("done", flush=True)
"""


@pytest.fixture
def server() -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen([sys.executable, "-c", SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    yield process
    process.kill()
    process.wait(timeout=10)


def write_from(server: subprocess.Popen[str], path: Path) -> None:
    assert server.stdin is not None and server.stdout is not None
    server.stdin.write(f"{path}\n")
    server.stdin.flush()
    assert server.stdout.readline().strip() == "done"


def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def pid_of(*argv: str) -> int | None:
    """The process whose command line is exactly ``argv``."""
    wanted = "".join(arg + "\0" for arg in argv).encode()
    for entry in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if entry.read_bytes() == wanted:
                return int(entry.parent.name)
        except OSError:
            continue
    return None


def test_descendants_follow_parents_from_the_root_only() -> None:
    parents = {1: 0, 10: 1, 11: 10, 12: 11, 20: 1, 21: 20}
    assert descendants(10, parents) == {10, 11, 12}
    assert descendants(12, parents) == {12}
    assert descendants(1, parents) == {1, 10, 11, 12, 20, 21}


def test_a_write_a_started_or_ended_process_and_an_unreadable_counter_count_as_moved() -> None:
    assert not moved({1: 5, 2: 7}, {1: 5, 2: 7})
    assert moved({1: 5, 2: 7}, {1: 6, 2: 7})  # wrote
    assert moved({1: 5}, {1: 5, 2: 0})  # started between the looks
    assert moved({1: 5, 2: 7}, {1: 5})  # ended: it may have written on its way out
    assert moved({1: 5}, {1: None})  # cannot read it: cannot rule it out


def test_auto_takes_the_namespace_in_a_pod_and_an_explicit_mode_as_it_is() -> None:
    assert choose_mode("auto", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "namespace"
    assert choose_mode("tree", {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}) == "tree"
    assert choose_mode("namespace", {}) == "namespace"
    with pytest.raises(ValueError):
        Scope("everything", os.getpid())


def test_the_tree_holds_children_and_grandchildren_but_not_an_escaped_job(tmp_path: Path) -> None:
    marker = f"{time.monotonic_ns() % 10_000_000 / 1000:.3f}"  # a unique sleep length to find the job by
    tree = subprocess.Popen(
        ["sh", "-c", f"sh -c 'sleep 30' & (setsid sleep 3{marker} &) ; sleep 30"], start_new_session=True
    )
    escaped = None
    try:
        until(lambda: pid_of("sleep", f"3{marker}") is not None, "the escaped job started")
        escaped = pid_of("sleep", f"3{marker}")
        assert escaped is not None
        until(lambda: len(Scope("tree", tree.pid).pids()) >= 3, "the tree's children started")
        in_tree = Scope("tree", tree.pid).pids()
        assert tree.pid in in_tree and escaped not in in_tree
        assert len(in_tree) >= 3  # the shell, its sleep, the inner shell (and its sleep)
        everything = Scope("namespace", tree.pid).pids()  # in a pod: every process the container runs
        assert escaped in everything and in_tree <= everything
    finally:
        os.killpg(tree.pid, signal.SIGKILL)  # the shell and its children share its process group
        tree.wait(timeout=10)
        if escaped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(escaped, signal.SIGKILL)  # the escaped job has a session of its own


def test_counters_move_when_a_process_in_scope_writes(server: subprocess.Popen[str], tmp_path: Path) -> None:
    scope = Scope("tree", server.pid)
    before = scope.counters()
    assert set(before) == {server.pid} and before[server.pid] is not None
    write_from(server, tmp_path / "a.txt")
    assert moved(before, scope.counters())


def test_a_file_held_open_for_writing_under_the_roots_is_seen(tmp_path: Path) -> None:
    home, elsewhere = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    elsewhere.mkdir()
    (home / "read.txt").write_text("r")
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; files = [open(p, m) for p, m in zip(sys.argv[1::2], sys.argv[2::2])]; time.sleep(30)",
            str(home / "read.txt"),
            "r",
            str(elsewhere / "w.txt"),
            "a",
        ]
    )
    writer = None
    try:
        scope = Scope("tree", holder.pid)
        until(lambda: len(os.listdir(f"/proc/{holder.pid}/fd")) >= 5, "the holder opened its files")
        assert not scope.holds_open_for_writing([str(home)], [holder.pid])  # read-only, or outside the roots
        writer = subprocess.Popen(
            [sys.executable, "-c", "import sys, time; f = open(sys.argv[1], 'a'); time.sleep(30)", str(home / "w")]
        )
        until(lambda: (home / "w").exists(), "the writer opened its file")
        assert Scope("tree", writer.pid).holds_open_for_writing([str(home)], [writer.pid])
    finally:
        for process in (holder, writer):
            if process is not None:
                process.kill()
                process.wait(timeout=10)


def test_a_change_no_process_in_scope_made_is_foreign(server: subprocess.Popen[str], tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    scope, roots = Scope("tree", server.pid), [str(home)]
    first, outside, _ = take(roots, 5, scope, None)
    assert not outside
    (home / "from-another-pod.log").write_text("not the server's")  # this test is outside the server's tree
    second, outside, _ = take(roots, 5, scope, first)
    assert second.files != first.files and outside
    write_from(server, home / "own.log")  # the server itself
    third, outside, _ = take(roots, 5, scope, second)
    assert third.files != second.files and not outside
    fourth, outside, _ = take(roots, 5, scope, third)
    assert fourth.files == third.files and not outside  # no change is never foreign


def test_a_change_while_the_server_writes_elsewhere_counts(server: subprocess.Popen[str], tmp_path: Path) -> None:
    home, scratch = tmp_path / "home", tmp_path / "scratch"
    home.mkdir()
    scratch.mkdir()
    scope, roots = Scope("tree", server.pid), [str(home)]
    first, _, _ = take(roots, 5, scope, None)
    write_from(server, scratch / "tmp.log")  # the server writes, but outside the roots
    (home / "from-another-pod.log").write_text("x")  # while something else changes the home
    second, outside, _ = take(roots, 5, scope, first)
    assert second.files != first.files and not outside  # cannot tell the two apart: counted


def test_without_a_scope_every_change_counts(tmp_path: Path) -> None:
    first, _, _ = take([str(tmp_path)], 5, None, None)
    (tmp_path / "x").write_text("x")
    second, outside, _ = take([str(tmp_path)], 5, None, first)
    assert second.files != first.files and not outside


def test_a_foreign_change_leaves_the_sampler_quiet() -> None:
    now = {"t": 0.0}
    sampler = Sampler(["/nowhere"], clock=lambda: now["t"])
    a, b, c = Fingerprint(1, 1, 1, 1), Fingerprint(1, 2, 2, 2), Fingerprint(1, 3, 3, 3)
    sampler.record(a)
    now["t"] = 2.0
    sampler.record(b, outside=True)
    assert sampler.state()["state"] == "quiet" and sampler.state()["quiet_for"] == 2.0
    now["t"] = 4.0
    sampler.record(c)  # the server's own write
    assert sampler.state()["state"] == "active"


MAPPER = """\
import ctypes, mmap, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
address = libc.mmap(None, 4096, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
assert address not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
os.close(fd)  # no descriptor left: only the map says this process can write the file
print("mapped", flush=True)
time.sleep(30)
"""


def test_a_file_mapped_shared_and_writable_without_a_descriptor_is_seen(tmp_path: Path) -> None:
    data = tmp_path / "home" / "array.bin"
    data.parent.mkdir()
    data.write_bytes(b"\0" * 4096)
    mapper = subprocess.Popen([sys.executable, "-c", MAPPER, str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert mapper.stdout is not None and mapper.stdout.readline().strip() == "mapped"
        scope = Scope("tree", mapper.pid)
        assert not any(
            os.readlink(f"/proc/{mapper.pid}/fd/{fd}") == str(data) for fd in os.listdir(f"/proc/{mapper.pid}/fd")
        )
        assert scope.holds_open_for_writing([str(data.parent)], [mapper.pid])
        assert not scope.holds_open_for_writing([str(tmp_path / "elsewhere")], [mapper.pid])
    finally:
        mapper.kill()
        mapper.wait(timeout=10)
