"""The embedded database on real files: schema, journal mode, and every fault losing nothing."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from culler.adapters.database import SCHEMA_VERSION, Database, DatabaseError, describe, file_system_of
from culler.adapters.keep_store import KeepStore
from culler.core.keeps import Kept

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
REPO = Path(__file__).resolve().parents[2]


def a_keep(user: str = "alice", hours: float = 24) -> Kept:
    return Kept(user, "", NOW + timedelta(hours=hours), user, NOW, NOW - timedelta(days=1))


def test_keeps_and_their_audit_outlive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "culler.sqlite"
    first = Database(path)
    assert first.journal == "wal"  # a local file system holds WAL
    first.save_keep(a_keep())
    first.save_keep(a_keep(hours=48))  # a second keep of the same server replaces the first
    first.close()
    again = Database(path)
    assert again.keeps() == [a_keep(hours=48)]
    assert [entry["until"] for entry in again.keep_log()] == [
        "2026-12-02T12:00:00.000000Z",
        "2026-12-03T12:00:00.000000Z",
    ]
    again.drop_keeps_until(NOW + timedelta(days=3))
    assert again.keeps() == [] and len(again.keep_log()) == 2  # the audit stays


def test_a_network_file_system_gets_the_rollback_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mounts = f"server:/export {tmp_path} nfs4 rw,relatime 0 0\n/dev/sda1 / ext4 rw 0 0\n"
    assert file_system_of(tmp_path / "x.sqlite", mounts) == "nfs4"
    assert file_system_of(Path("/etc/hostname"), mounts) == "ext4"
    monkeypatch.setattr("culler.adapters.database._mounts", lambda: mounts)
    database = Database(tmp_path / "culler.sqlite")
    assert database.journal == "delete"
    database.save_keep(a_keep())
    assert not (tmp_path / "culler.sqlite-wal").exists()


def test_a_database_from_a_newer_version_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "culler.sqlite"
    with sqlite3.connect(path) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = path.read_bytes()
    with pytest.raises(DatabaseError, match=r"schema 2, written by a newer jupyterhub-activity-culler"):
        Database(path)
    assert path.read_bytes() == before


def test_a_corrupt_file_is_refused_with_its_path(tmp_path: Path) -> None:
    path = tmp_path / "culler.sqlite"
    path.write_bytes(b"this is not a database, it only sits where one should" * 100)
    with pytest.raises(DatabaseError, match=rf"{path}: file is not a database"):
        Database(path)


def test_a_full_database_refuses_the_keep_and_keeps_what_it_had(tmp_path: Path) -> None:
    database = Database(tmp_path / "culler.sqlite")
    store = KeepStore(database)
    store.save(a_keep("alice"))
    pages = database._run("PRAGMA page_count")[0][0]
    database._run(f"PRAGMA max_page_count = {pages}")  # as a full disk: no page more
    with pytest.raises(DatabaseError, match="full"):
        for index in range(2000):
            store.save(Kept(f"user-{index}-" + "x" * 200, "", NOW, "admin", NOW, None))
    assert store.kept("alice", "") == a_keep("alice")
    assert all(store.kept(k.user, "") is not None for k in database.keeps())  # what was stored is in force
    assert {k.user for k in database.keeps()} == {k.user for k in store.all()}  # and nothing in force unstored


READ_ONLY = """\
import sys
from datetime import UTC, datetime
from culler.adapters.database import Database, DatabaseError
from culler.adapters.keep_store import KeepStore
from culler.core.keeps import Kept
store = KeepStore(Database(__import__("pathlib").Path(sys.argv[1])))
print("read", [k.user for k in store.all()], store.problem)
now = datetime(2026, 12, 1, tzinfo=UTC)
try:
    store.save(Kept("bob", "", now, "bob", now, None))
except DatabaseError as error:
    print("refused", error)
print("in force", [k.user for k in store.all()])
"""


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's own tmp dirs are root's only)."""
    with tempfile.TemporaryDirectory(prefix="culler-ro-") as name:
        os.chmod(name, 0o755)
        yield Path(name)
        os.chmod(name, 0o755)


def unprivileged() -> list[str]:
    """The prefix that runs a command as nobody when this runs as root (root writes a 0444 file anyway)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    try:
        probe = subprocess.run(
            [*prefix, sys.executable, "-c", "import culler"], capture_output=True, timeout=60, cwd=REPO
        )
    except (OSError, subprocess.TimeoutExpired):
        pytest.skip("cannot run a process as an unprivileged user here")
    if probe.returncode != 0:
        pytest.skip(f"this Python cannot run as nobody here: {probe.stderr.decode()[-200:]}")
    return prefix


def test_a_read_only_database_is_read_and_refuses_new_keeps(shared_dir: Path) -> None:
    tmp_path = shared_dir
    path = tmp_path / "culler.sqlite"
    database = Database(path)
    database.save_keep(a_keep("alice"))
    database._run("PRAGMA journal_mode = delete")  # a reader without write access cannot open WAL's files
    database.close()
    os.chmod(path, 0o444)
    os.chmod(tmp_path, 0o555)
    run_as = unprivileged()
    try:
        done = subprocess.run(
            [*run_as, sys.executable, "-c", READ_ONLY, str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
    finally:
        os.chmod(tmp_path, 0o755)
        os.chmod(path, 0o644)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "read ['alice'] None"
    assert lines[1].startswith("refused database") and "readonly" in lines[1]
    assert lines[2] == "in force ['alice']"


def test_without_a_path_the_database_is_in_memory_and_says_so(tmp_path: Path) -> None:
    database = Database(None)
    database.save_keep(a_keep())
    assert database.keeps() == [a_keep()] and database.journal == "memory"
    assert describe(database).startswith("in memory (set CULLER_DATABASE")
    assert describe(Database(tmp_path / "x.sqlite")).startswith(f"{tmp_path / 'x.sqlite'} (journal wal, ")
