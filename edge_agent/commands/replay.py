"""Command ids already used, remembered across restarts (SPEC §5), so that a captured signed
command cannot be sent again.

A small SQLite database in the store: every ``add`` is committed with SQLite's full
synchronous mode before it returns, so an id survives a power cut the moment it is accepted.
The table is bounded: past ``capacity`` ids the oldest are forgotten (by then the clock-skew
check refuses their commands anyway, unless commands arrive faster than capacity per skew window).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path

from ..errors import EdgewatchError

log = logging.getLogger(__name__)

_CANNOT_OPEN = "cannot open the database of used command ids"
_SCHEMA = "CREATE TABLE IF NOT EXISTS seen (n INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE)"


class SeenIds:
    """A durable, bounded set of command ids. Safe to share between threads."""

    def __init__(self, path: Path, capacity: int = 10000) -> None:
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.path = Path(path)
        self.capacity = capacity
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EdgewatchError(f"{self.path.parent}: cannot create the directory: {e}") from e
        self._db = self._open()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: explicit transactions below; the connection is used from
        # whichever thread handles MQTT messages, always under self._lock.
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10)
        db.execute("PRAGMA synchronous=FULL")
        db.execute(_SCHEMA)
        db.execute("SELECT count(*) FROM seen").fetchone()
        return db

    def _open(self) -> sqlite3.Connection:
        try:
            return self._connect()
        except sqlite3.OperationalError as e:  # permissions, a directory in the way, a full disk
            raise EdgewatchError(f"{self.path}: {_CANNOT_OPEN}: {e}") from e
        except sqlite3.DatabaseError as e:
            # A damaged file must not keep the device from starting: set it aside, start
            # afresh (the clock-skew check still bounds what could be replayed) and say so.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.warning("%s: unreadable (%s); moved to %s, starting with no used ids", self.path, e, aside)
            try:
                self.path.replace(aside)
                return self._connect()
            except (OSError, sqlite3.Error) as e2:
                raise EdgewatchError(f"{self.path}: {_CANNOT_OPEN}: {e2}") from e2

    def __contains__(self, command_id: object) -> bool:
        if not isinstance(command_id, str):
            return False
        with self._lock:
            row = self._db.execute("SELECT 1 FROM seen WHERE id = ?", (command_id,)).fetchone()
        return row is not None

    def add(self, command_id: str) -> None:
        """Remember ``command_id``; committed to disk before returning."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.execute("INSERT OR IGNORE INTO seen (id) VALUES (?)", (command_id,))
                # Keep the newest `capacity` rows (n has gaps: an ignored insert uses a number).
                self._db.execute(
                    "DELETE FROM seen WHERE n < (SELECT n FROM seen ORDER BY n DESC LIMIT 1 OFFSET ?)",
                    (self.capacity - 1,),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise EdgewatchError(f"{self.path}: cannot record command id: {e}") from e

    def __len__(self) -> int:
        with self._lock:
            row = self._db.execute("SELECT count(*) FROM seen").fetchone()
        return int(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SeenIds:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
