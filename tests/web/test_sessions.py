"""Page sessions outlive a restart in the database, which holds no usable session id and no token."""

from __future__ import annotations

from pathlib import Path

from culler.adapters.database import Database
from culler.web.sessions import Sessions

IDENTITY = {"name": "alice", "admin": False, "scopes": frozenset({"access:services!service=activity-culler"})}


def test_a_session_outlives_a_restart_and_expires(tmp_path: Path) -> None:
    now = {"t": 1000.0}
    path = tmp_path / "culler.sqlite"
    first = Sessions(Database(path), ttl=60, cap=10, clock=lambda: now["t"])
    first.put("sid-secret-cookie-value", IDENTITY)
    assert b"sid-secret-cookie-value" not in path.read_bytes() + (tmp_path / "culler.sqlite-wal").read_bytes()
    restarted = Sessions(Database(path), ttl=60, cap=10, clock=lambda: now["t"])
    assert restarted.get("sid-secret-cookie-value") == IDENTITY
    assert restarted.get("another") is None
    now["t"] += 61
    later = Sessions(Database(path), ttl=60, cap=10, clock=lambda: now["t"])
    assert later.get("sid-secret-cookie-value") is None


def test_a_logout_ends_the_stored_session_too(tmp_path: Path) -> None:
    path = tmp_path / "culler.sqlite"
    sessions = Sessions(Database(path), ttl=60, cap=10)
    sessions.put("sid", IDENTITY)
    sessions.pop("sid")
    assert Sessions(Database(path), ttl=60, cap=10).get("sid") is None


def test_a_database_that_cannot_store_leaves_the_session_in_memory(tmp_path: Path, caplog) -> None:
    database = Database(tmp_path / "culler.sqlite")
    database.close()  # every call now fails
    sessions = Sessions(database, ttl=60, cap=10)
    sessions.put("sid", IDENTITY)
    sessions.put("sid2", IDENTITY)
    assert sessions.get("sid") == IDENTITY
    assert [r.getMessage() for r in caplog.records].count(
        "cannot store page sessions in the database (kept in memory): database "
        f"{tmp_path / 'culler.sqlite'}: Cannot operate on a closed database."
    ) == 1
