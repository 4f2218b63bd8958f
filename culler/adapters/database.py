"""The service's embedded database (SQLite, standard library): keeps and their audit, the stop history,
and the activity page's sessions. One file at a path setting, or in memory without one.

The schema is versioned (``PRAGMA user_version``); a database written by a newer version is refused,
never altered. WAL where the file system can hold it; on a network file system (hub PVCs are sometimes
NFS), where WAL's shared memory cannot work, the rollback journal. Every failure is ``DatabaseError``
with one line saying what and where.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from culler.core.keeps import Kept
from culler.core.text import parse_time

log = logging.getLogger("culler.database")

SCHEMA_VERSION = 1
NETWORK_FILE_SYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "glusterfs", "lustre", "gpfs", "beegfs", "9p", "fuse.sshfs"}
)
SCHEMA = """
CREATE TABLE keeps (user TEXT NOT NULL, server TEXT NOT NULL, until TEXT NOT NULL, by TEXT NOT NULL,
                    at TEXT NOT NULL, started TEXT, PRIMARY KEY (user, server));
CREATE TABLE keep_log (id INTEGER PRIMARY KEY, user TEXT NOT NULL, server TEXT NOT NULL, until TEXT NOT NULL,
                       by TEXT NOT NULL, at TEXT NOT NULL);
CREATE TABLE stops (id INTEGER PRIMARY KEY, user TEXT NOT NULL, server TEXT NOT NULL, time TEXT NOT NULL,
                    entry TEXT NOT NULL);
CREATE INDEX stops_time ON stops (time);
CREATE TABLE sessions (id TEXT PRIMARY KEY, identity TEXT NOT NULL, expires REAL NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


def _t(value: datetime) -> str:
    """One fixed-width UTC form, so that times compare as text."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _entry_time(entry: dict[str, str | None]) -> str:
    parsed = parse_time(entry.get("time"))
    if parsed is None:
        raise DatabaseError("a stop history entry without a time")
    return _t(parsed)


class DatabaseError(Exception):
    """The database cannot do what was asked; the message names the file and the reason."""


def file_system_of(path: Path, mounts: str) -> str:
    """The type of the file system holding ``path``, from /proc/mounts text ("" when unknown)."""
    target, best, kind = str(path.resolve()), "", ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def _mounts() -> str:
    try:
        return Path("/proc/mounts").read_text()
    except OSError:
        return ""


class Database:
    def __init__(self, path: Path | None, timeout: float = 5.0) -> None:
        self.path = path
        self.where = str(path) if path is not None else "memory"
        self.journal = "memory"
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(
                ":memory:" if path is None else str(path), timeout=timeout, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._open()
        except sqlite3.Error as error:
            raise DatabaseError(f"database {self.where}: {error}") from error

    def _open(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"database {self.where} has schema {version}, written by a newer jupyterhub-activity-culler "
                f"(this one knows {SCHEMA_VERSION}): it is left as it is; use that version or another path"
            )
        if self.path is not None:
            try:
                self.journal = self._journal_mode()
            except sqlite3.OperationalError as error:
                if "readonly" not in str(error):
                    raise
                self.journal = "read-only"  # readable: keeps stay in force; new ones are refused, saying so
                log.warning("database %s is read-only: %s", self.where, error)
        if version == 0:
            with self._db:
                self._db.executescript(SCHEMA + f"PRAGMA user_version = {SCHEMA_VERSION};")

    def _journal_mode(self) -> str:
        assert self.path is not None
        kind = file_system_of(self.path, _mounts())
        wanted = "delete" if kind in NETWORK_FILE_SYSTEMS or kind.startswith("fuse") else "wal"
        mode = str(self._db.execute(f"PRAGMA journal_mode = {wanted}").fetchone()[0]).lower()
        if mode != wanted:  # the file system refused WAL: fall back to the rollback journal
            mode = str(self._db.execute("PRAGMA journal_mode = delete").fetchone()[0]).lower()
        return mode

    def _run(self, sql: str, args: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                with self._db:
                    return self._db.execute(sql, args).fetchall()
            except sqlite3.Error as error:
                raise DatabaseError(f"database {self.where}: {error}") from error

    def _script(self, statements: list[tuple[str, tuple[Any, ...]]]) -> None:
        """Several statements in one transaction: all or none."""
        with self._lock:
            try:
                with self._db:
                    for sql, args in statements:
                        self._db.execute(sql, args)
            except sqlite3.Error as error:
                raise DatabaseError(f"database {self.where}: {error}") from error

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # --- keeps ---------------------------------------------------------------------------------------
    def keeps(self) -> list[Kept]:
        rows = self._run("SELECT user, server, until, by, at, started FROM keeps")
        return [_kept(row) for row in rows]

    def save_keep(self, kept: Kept) -> None:
        """The keep and its audit line, together."""
        started = _t(kept.started) if kept.started else None
        until, at = _t(kept.until), _t(kept.at)
        self._script(
            [
                (
                    "INSERT OR REPLACE INTO keeps (user, server, until, by, at, started) VALUES (?, ?, ?, ?, ?, ?)",
                    (kept.user, kept.server, until, kept.by, at, started),
                ),
                (
                    "INSERT INTO keep_log (user, server, until, by, at) VALUES (?, ?, ?, ?, ?)",
                    (kept.user, kept.server, until, kept.by, at),
                ),
            ]
        )

    def drop_keeps_until(self, now: datetime) -> None:
        """Forget keeps whose deadline has passed (their audit lines stay)."""
        self._run("DELETE FROM keeps WHERE until < ?", (_t(now),))

    def keep_log(self) -> list[dict[str, str]]:
        rows = self._run("SELECT user, server, until, by, at FROM keep_log ORDER BY id")
        return [dict(row) for row in rows]

    # --- the stop history ----------------------------------------------------------------------------
    def add_stop(self, entry: dict[str, str | None]) -> None:
        values = (entry["user"], entry["server"], _entry_time(entry), json.dumps(entry, sort_keys=True))
        self._run("INSERT INTO stops (user, server, time, entry) VALUES (?, ?, ?, ?)", values)

    def add_stops(self, entries: list[dict[str, str | None]], marker: str) -> None:
        """Import many at once, with a marker saying they were imported (all or none)."""
        statements: list[tuple[str, tuple[Any, ...]]] = [
            (
                "INSERT INTO stops (user, server, time, entry) VALUES (?, ?, ?, ?)",
                (e["user"], e["server"], _entry_time(e), json.dumps(e, sort_keys=True)),
            )
            for e in entries
        ]
        statements.append(("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (marker, str(len(entries)))))
        self._script(statements)

    def stops(self, limit: int) -> list[dict[str, str | None]]:
        """The newest ``limit`` stops, oldest first."""
        newest = "SELECT id, entry FROM stops ORDER BY id DESC LIMIT ?"
        rows = self._run(f"SELECT entry FROM ({newest}) ORDER BY id", (limit,))
        return [json.loads(row["entry"]) for row in rows]

    def iter_stops(self) -> Iterator[dict[str, str | None]]:
        for row in self._run("SELECT entry FROM stops ORDER BY id"):
            yield json.loads(row["entry"])

    def prune_stops(self, before: datetime, keep_at_most: int) -> None:
        self._script(
            [
                ("DELETE FROM stops WHERE time < ?", (_t(before),)),
                ("DELETE FROM stops WHERE id NOT IN (SELECT id FROM stops ORDER BY id DESC LIMIT ?)", (keep_at_most,)),
            ]
        )

    # --- page sessions (keyed by a hash of the cookie: the file holds no usable session id) -----------
    def save_session(self, key: str, identity: dict[str, Any], expires: float) -> None:
        text = json.dumps({**identity, "scopes": sorted(identity.get("scopes") or ())})
        self._run("INSERT OR REPLACE INTO sessions (id, identity, expires) VALUES (?, ?, ?)", (key, text, expires))

    def session(self, key: str, now: float) -> dict[str, Any] | None:
        rows = self._run("SELECT identity FROM sessions WHERE id = ? AND expires > ?", (key, now))
        if not rows:
            return None
        identity = json.loads(rows[0]["identity"])
        return {**identity, "scopes": frozenset(identity.get("scopes") or ())}

    def drop_session(self, key: str) -> None:
        self._run("DELETE FROM sessions WHERE id = ?", (key,))

    def prune_sessions(self, now: float) -> None:
        self._run("DELETE FROM sessions WHERE expires <= ?", (now,))

    # --- meta ------------------------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        rows = self._run("SELECT value FROM meta WHERE key = ?", (key,))
        return str(rows[0]["value"]) if rows else None


def _kept(row: sqlite3.Row) -> Kept:
    started = parse_time(row["started"]) if row["started"] else None
    until, at = parse_time(row["until"]), parse_time(row["at"])
    if until is None or at is None:
        raise DatabaseError(f"a keep of {row['user']}/{row['server']} has unreadable times")
    return Kept(row["user"], row["server"], until, row["by"], at, started)


def describe(database: Database) -> str:
    """For the start-up log: where the database is and how it journals."""
    if database.path is None:
        return "in memory (set CULLER_DATABASE to keep keeps, the stop history and page sessions across restarts)"
    size = os.path.getsize(database.path) if database.path.exists() else 0
    return f"{database.path} (journal {database.journal}, {size} bytes)"
