"""The bounded on-disk queue of outgoing messages (SPEC §4), and the persistent counters behind
``seq``.

Every detection, event and command result is written here before it is sent, and deleted only
once the broker has confirmed it, so nothing is lost to a broker outage or a restart of the
agent. When the queue is full the OLDEST messages make room: after a long outage the most recent
state is worth more than the first minutes of it.

One SQLite file in WAL mode, with ``synchronous=NORMAL``: a crash of the process loses nothing,
and a power cut loses at most the last few transactions but never corrupts the file. (Syncing
every message would wear out the SD card of a Raspberry Pi for little gain.)
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, List, Optional, Union

from ..errors import EdgewatchError

log = logging.getLogger(__name__)

PayloadSource = Union[bytes, Callable[[int], bytes]]

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused, so id order is age order
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL,
    correlation_data BLOB
);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- Accepted commands still without their final result (SPEC §5), written in the transaction
-- that queues "accepted" and deleted in the one that queues the final result: after a crash,
-- what is left here is exactly the commands a restart must end.
CREATE TABLE IF NOT EXISTS open_commands (id TEXT PRIMARY KEY, type TEXT NOT NULL, context TEXT NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('dropped', 0);
"""


class OutboxError(EdgewatchError):
    """The queue's database failed (a full disk, an I/O error): names the file and the reason."""


@dataclass(frozen=True)
class OpenCommand:
    """An accepted command whose final result is not queued yet; ``context`` is the caller's
    note (JSON text) for ending it after a restart."""

    id: str
    type: str
    context: str = "{}"


@dataclass(frozen=True)
class OutboxItem:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    correlation_data: Optional[bytes]


class Outbox:
    """A thread-safe, bounded, persistent FIFO of messages plus named counters."""

    def __init__(self, path: Path, max_messages: int) -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be at least 1, not {max_messages}")
        self.path = Path(path)
        self.max_messages = max_messages
        self._lock = threading.Lock()
        self._overflowing = False
        self._conn: Optional[sqlite3.Connection] = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as e:
            # A queue the agent cannot read must not keep it from starting: set it aside for a
            # post-mortem and begin an empty one (seq starts again, which consumers can see).
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("outbox %s is unreadable (%s); moved to %s, starting an empty one", self.path, e, aside)
            self.path.replace(aside)
            for suffix in ("-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            self._conn = self._open()
        self._count: int = self._conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0]
        self._dropped: int = self._conn.execute("SELECT value FROM meta WHERE key = 'dropped'").fetchone()[0]

    def _open(self) -> sqlite3.Connection:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT) below.
        conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=10.0)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > _SCHEMA_VERSION:
                raise sqlite3.DatabaseError(f"schema version {version} is newer than this agent's")
            conn.executescript(_SCHEMA)
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        except BaseException:
            conn.close()
            raise
        return conn

    @contextlib.contextmanager
    def _transaction(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction (the caller holds the lock). ``durable``: synced to the disk
        before it returns (SQLite's FULL), for the rare writes a power cut must not undo. A
        failure of the database itself (a full disk, an I/O error) is an OutboxError."""
        conn = self._db()
        try:
            if durable:
                conn.execute("PRAGMA synchronous=FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:  # SQLite rolls back by itself after some errors (disk full)
                    conn.execute("ROLLBACK")
                raise
            finally:
                if durable:
                    conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError as e:
            raise OutboxError(f"outbox {self.path}: {e}") from e

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError(f"outbox {self.path} is closed")
        return self._conn

    def put(
        self,
        topic: str,
        payload: PayloadSource,
        qos: int,
        retain: bool = False,
        correlation_data: Optional[bytes] = None,
        counter: Optional[str] = None,
        opens: Optional[OpenCommand] = None,
        closes: Optional[str] = None,
    ) -> Optional[int]:
        """Queue one message; with ``counter``, increment that counter, build the payload from its
        new value (``payload`` is then a function of it) in the same transaction, and return it.
        ``opens`` records a command as open and ``closes`` forgets the command with that id, both
        in the same transaction as the message (its ``accepted`` and its final result)."""
        if callable(payload) and counter is None:
            raise ValueError("a payload built from a counter value needs the counter's name")
        if qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, not {qos}")
        # A command's start or end must survive a power cut, not only a crash.
        journal = opens is not None or closes is not None
        with self._lock:
            with self._transaction(durable=journal) as conn:
                value: Optional[int] = None
                if counter is not None:
                    conn.execute("INSERT OR IGNORE INTO counters (name, value) VALUES (?, 0)", (counter,))
                    conn.execute("UPDATE counters SET value = value + 1 WHERE name = ?", (counter,))
                    value = conn.execute("SELECT value FROM counters WHERE name = ?", (counter,)).fetchone()[
                        0
                    ]
                if callable(payload):
                    assert value is not None
                    body = bytes(payload(value))
                else:
                    body = bytes(payload)
                dropped_now = 0
                overflow = self._count + 1 - self.max_messages
                if overflow > 0:
                    dropped_now = conn.execute(
                        "DELETE FROM messages WHERE id IN (SELECT id FROM messages ORDER BY id LIMIT ?)",
                        (overflow,),
                    ).rowcount
                    conn.execute("UPDATE meta SET value = value + ? WHERE key = 'dropped'", (dropped_now,))
                conn.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, correlation_data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    (topic, body, qos, int(retain), correlation_data),
                )
                if opens is not None:
                    conn.execute(
                        "INSERT OR REPLACE INTO open_commands (id, type, context) VALUES (?, ?, ?)",
                        (opens.id, opens.type, opens.context),
                    )
                if closes is not None:
                    conn.execute("DELETE FROM open_commands WHERE id = ?", (closes,))
            if dropped_now and not self._overflowing:
                # Once per episode of overflow, not once per message.
                log.warning("outbox full (%d messages): dropping the oldest to make room", self.max_messages)
                self._overflowing = True
            self._count += 1 - dropped_now
            self._dropped += dropped_now
            return value

    def peek(self, limit: int, after_id: int = 0) -> List[OutboxItem]:
        """Up to ``limit`` queued messages with an id above ``after_id``, oldest first."""
        with self._lock:
            rows = (
                self._db()
                .execute(
                    "SELECT id, topic, payload, qos, retain, correlation_data FROM messages"
                    " WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, limit),
                )
                .fetchall()
            )
        return [
            OutboxItem(
                id=row[0],
                topic=row[1],
                payload=bytes(row[2]),
                qos=row[3],
                retain=bool(row[4]),
                correlation_data=None if row[5] is None else bytes(row[5]),
            )
            for row in rows
        ]

    def ack(self, item_id: int) -> None:
        """Forget a delivered message. An id no longer queued (dropped, or acked before) is ignored."""
        self.ack_many((item_id,))

    def ack_many(self, item_ids: Iterable[int]) -> None:
        """:meth:`ack` for several messages, in one transaction."""
        ids = [(int(i),) for i in item_ids]
        if not ids:
            return
        with self._lock:
            with self._transaction() as conn:
                removed = 0
                for params in ids:
                    removed += conn.execute("DELETE FROM messages WHERE id = ?", params).rowcount
            self._count -= removed
            if self._count < self.max_messages:
                self._overflowing = False

    def note_open(self, command_id: str, context: str) -> None:
        """Replace the context of an open command (what the restart will need to end it)."""
        with self._lock, self._transaction(durable=True) as conn:
            conn.execute("UPDATE open_commands SET context = ? WHERE id = ?", (context, command_id))

    def open_commands(self) -> List[OpenCommand]:
        """The accepted commands whose final result was never queued, oldest first."""
        with self._lock:
            rows = self._db().execute("SELECT id, type, context FROM open_commands ORDER BY rowid").fetchall()
        return [OpenCommand(id=r[0], type=r[1], context=r[2]) for r in rows]

    def counter(self, name: str) -> int:
        """The counter's current value: 0 if it was never used."""
        with self._lock:
            row = self._db().execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()
        return 0 if row is None else int(row[0])

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        # An Outbox is a resource, not just a container: `if outbox:` must not mean "non-empty".
        return True

    @property
    def dropped(self) -> int:
        """Messages dropped to make room, for the life of the file."""
        return self._dropped

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
