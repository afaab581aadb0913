"""The ledger: one SQLite database (WAL) in OUTBOX's hidden folder, one row per (clip path, size, mtime,
settings hash), so a clip is processed again exactly when it or its settings changed, and never again once
done ("Resume": the HandBrake watcher's md5 of name, size and mtime).

States: queued -> running -> done | failed; a crashed `running` row is re-queued by whoever next holds the
clip's lock. `phase = 'committing'` marks the short window in which the finished staging file is being
renamed to `output`, so a crash there is completed, not rendered twice.

WAL needs shared memory between the processes using the database, so the ledger must be on a local disk
or shared only by daemons on one machine (sqlite.org/wal.html); INBOX and OUTBOX themselves may be shares.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

STATES = ("queued", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS clips (
    id            INTEGER PRIMARY KEY,
    path          TEXT    NOT NULL,
    size          INTEGER NOT NULL,
    mtime_ns      INTEGER NOT NULL,
    settings_hash TEXT    NOT NULL,
    state         TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    attempts      INTEGER NOT NULL DEFAULT 0,
    phase         TEXT,
    owner         TEXT,
    staged        TEXT,
    output        TEXT,
    error         TEXT,
    frames        INTEGER,
    queued_at     REAL    NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    seconds       REAL,
    UNIQUE (path, size, mtime_ns, settings_hash)
);
CREATE INDEX IF NOT EXISTS clips_state ON clips (state);
"""


@dataclass(frozen=True)
class Row:
    id: int
    path: str
    size: int
    mtime_ns: int
    settings_hash: str
    state: str
    attempts: int
    phase: str | None
    owner: str | None
    staged: str | None
    output: str | None
    error: str | None
    frames: int | None
    queued_at: float
    started_at: float | None
    finished_at: float | None
    seconds: float | None


_COLUMNS = ", ".join(Row.__dataclass_fields__)
_BUSY_SECONDS = 60.0


def _until_unlocked(step, seconds: float = _BUSY_SECONDS):
    """Run `step` again while SQLite reports the database locked, for at most `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return step()
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Ledger:
    """Thread-safe: each thread gets its own connection; every change is one short transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        path.parent.mkdir(parents=True, exist_ok=True)
        # executescript commits on its own; IF NOT EXISTS makes concurrent first starts harmless.
        _until_unlocked(lambda: self._db().executescript(_SCHEMA))

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=_BUSY_SECONDS, isolation_level=None)
            # Switching a new database to WAL takes an exclusive lock, and SQLite answers "database is
            # locked" at once instead of calling the busy handler when a second daemon starting at the same
            # moment holds the file: retried here, like the busy timeout would.
            _until_unlocked(lambda: db.execute("PRAGMA journal_mode=WAL"))
            # FULL: a transaction reported committed survives a power loss (the ledger writes a few rows per
            # clip, so the cost does not matter).
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    def _tx(self):
        ledger = self

        class _Tx:
            def __enter__(self):
                self.db = ledger._db()
                self.db.execute("BEGIN IMMEDIATE")
                return self.db

            def __exit__(self, exc_type, exc, tb):
                self.db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    # -- queries -----------------------------------------------------------------------------------------

    def find(self, path: str, size: int, mtime_ns: int, settings_hash: str) -> Row | None:
        cur = self._db().execute(
            f"SELECT {_COLUMNS} FROM clips WHERE path=? AND size=? AND mtime_ns=? AND settings_hash=?",
            (path, size, mtime_ns, settings_hash),
        )
        found = cur.fetchone()
        return None if found is None else Row(*found)

    def get(self, row_id: int) -> Row:
        found = self._db().execute(f"SELECT {_COLUMNS} FROM clips WHERE id=?", (row_id,)).fetchone()
        if found is None:
            raise KeyError(row_id)
        return Row(*found)

    def state_of(self, row_id: int) -> str | None:
        found = self._db().execute("SELECT state FROM clips WHERE id=?", (row_id,)).fetchone()
        return None if found is None else found[0]

    def rows(self, state: str | None = None) -> list[Row]:
        if state is None:
            cur = self._db().execute(f"SELECT {_COLUMNS} FROM clips ORDER BY id")
        else:
            cur = self._db().execute(f"SELECT {_COLUMNS} FROM clips WHERE state=? ORDER BY id", (state,))
        return [Row(*r) for r in cur.fetchall()]

    # -- transitions -------------------------------------------------------------------------------------

    def enqueue(self, path: str, size: int, mtime_ns: int, settings_hash: str) -> Row:
        """The row for this key, created `queued` if new. Older queued rows of the same path (the clip changed
        before it was processed) are dropped: they can never match the file again."""
        with self._tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO clips (path, size, mtime_ns, settings_hash, state, queued_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?)",
                (path, size, mtime_ns, settings_hash, time.time()),
            )
            db.execute(
                "DELETE FROM clips WHERE path=? AND state='queued' "
                "AND NOT (size=? AND mtime_ns=? AND settings_hash=?)",
                (path, size, mtime_ns, settings_hash),
            )
        found = self.find(path, size, mtime_ns, settings_hash)
        if found is None:
            raise RuntimeError(f"the ledger {self.path} lost the row of {path} it just inserted")
        return found

    def start(self, row_id: int, owner: str, staged: str) -> Row:
        """queued -> running (the caller holds the clip's lock), one more attempt."""
        with self._tx() as db:
            db.execute(
                "UPDATE clips SET state='running', attempts=attempts+1, phase=NULL, owner=?, staged=?, "
                "started_at=?, error=NULL WHERE id=?",
                (owner, staged, time.time(), row_id),
            )
        return self.get(row_id)

    def committing(self, row_id: int, output: str, frames: int | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE clips SET phase='committing', output=?, frames=? WHERE id=?", (output, frames, row_id)
            )

    def done(self, row_id: int, output: str, frames: int | None) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE clips SET state='done', phase=NULL, owner=NULL, output=?, frames=?, finished_at=?, "
                "seconds=? - COALESCE(started_at, ?) WHERE id=?",
                (output, frames, now, now, now, row_id),
            )

    def failed(self, row_id: int, error: str) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE clips SET state='failed', phase=NULL, owner=NULL, error=?, finished_at=?, "
                "seconds=? - COALESCE(started_at, ?) WHERE id=?",
                (error, now, now, now, row_id),
            )

    def adopt(self, row_id: int, state: str, output: str | None, error: str | None) -> None:
        """Record the outcome another daemon (writing to another OUTBOX) reached for this clip."""
        with self._tx() as db:
            db.execute(
                "UPDATE clips SET state=?, phase=NULL, owner=NULL, output=?, error=?, finished_at=? WHERE id=?",
                (state, output, error, time.time(), row_id),
            )

    def requeue(self, row_id: int, *, count_attempt: bool) -> None:
        """running -> queued. A clean abandon (SIGTERM) does not count as an attempt; a crash does."""
        with self._tx() as db:
            db.execute(
                "UPDATE clips SET state='queued', phase=NULL, owner=NULL, output=NULL, "
                "attempts=attempts - ? WHERE id=?",
                (0 if count_attempt else 1, row_id),
            )
