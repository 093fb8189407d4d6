"""The on-disk outbox: persistent seq counter, bounded FIFO, acks, restarts, threads."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import List

import pytest

from edge_agent.mqtt.outbox import Outbox


def seq_payload(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "store" / "outbox.db"  # the store directory does not exist yet


def test_counter_increments_once_per_put_and_builds_the_payload(path: Path) -> None:
    box = Outbox(path, 100)
    assert box.counter("detections") == 0
    seqs = [box.put("p/d/detections", seq_payload, 1, counter="detections") for _ in range(3)]
    assert seqs == [1, 2, 3]
    assert box.put("p/d/events", b'{"type":"x"}', 1) is None  # no counter: nothing counted
    assert box.counter("detections") == 3
    assert box.counter("other") == 0
    items = box.peek(10)
    assert [json.loads(i.payload)["seq"] for i in items[:3]] == [1, 2, 3]
    assert [i.topic for i in items] == ["p/d/detections"] * 3 + ["p/d/events"]
    assert [i.id for i in items] == sorted(i.id for i in items)
    assert len(box) == 4
    box.close()


def test_a_failing_payload_neither_counts_nor_queues(path: Path) -> None:
    box = Outbox(path, 100)
    box.put("t", seq_payload, 1, counter="detections")

    def broken(seq: int) -> bytes:
        raise RuntimeError("encoder bug")

    with pytest.raises(RuntimeError):
        box.put("t", broken, 1, counter="detections")
    assert box.counter("detections") == 1
    assert len(box) == 1
    assert box.put("t", seq_payload, 1, counter="detections") == 2
    with pytest.raises(ValueError):
        box.put("t", seq_payload, 1)  # a payload function without a counter
    with pytest.raises(ValueError):
        box.put("t", b"x", 3)


def test_fields_round_trip(path: Path) -> None:
    box = Outbox(path, 10)
    box.put("reply/here", b"\x00\xffbinary", 2, retain=True, correlation_data=b"\x01corr")
    box.put("plain", b"{}", 0)
    first, second = box.peek(10)
    assert (first.topic, first.payload, first.qos, first.retain, first.correlation_data) == (
        "reply/here",
        b"\x00\xffbinary",
        2,
        True,
        b"\x01corr",
    )
    assert (second.qos, second.retain, second.correlation_data) == (0, False, None)


def test_everything_survives_close_and_reopen(path: Path) -> None:
    box = Outbox(path, 100)
    for _ in range(5):
        box.put("t", seq_payload, 1, counter="detections")
    first = box.peek(1)[0]
    box.ack(first.id)
    last_id = box.peek(10)[-1].id
    box.close()
    box.close()  # idempotent
    with pytest.raises(RuntimeError):
        box.peek(1)

    reopened = Outbox(path, 100)
    assert len(reopened) == 4
    assert [json.loads(i.payload)["seq"] for i in reopened.peek(10)] == [2, 3, 4, 5]
    assert reopened.counter("detections") == 5
    assert reopened.put("t", seq_payload, 1, counter="detections") == 6
    # Ids keep growing across restarts (and deletions), so id order stays age order.
    assert reopened.peek(10)[-1].id > last_id
    reopened.close()


def test_ack_removes_and_ignores_unknown_ids(path: Path) -> None:
    box = Outbox(path, 100)
    for n in range(4):
        box.put(f"t/{n}", b"x", 1)
    ids = [i.id for i in box.peek(10)]
    box.ack(ids[1])
    box.ack(ids[1])  # twice: no effect
    box.ack(10**9)  # never existed
    assert len(box) == 3
    assert [i.id for i in box.peek(10)] == [ids[0], ids[2], ids[3]]
    assert [i.id for i in box.peek(10, after_id=ids[0])] == [ids[2], ids[3]]
    assert [i.id for i in box.peek(1, after_id=ids[0])] == [ids[2]]
    box.ack_many([ids[0], ids[3]])
    assert [i.topic for i in box.peek(10)] == ["t/2"]
    assert len(box) == 1


def test_full_queue_drops_the_oldest_and_counts_them(path: Path) -> None:
    box = Outbox(path, 3)
    for _ in range(5):
        box.put("t", seq_payload, 1, counter="detections")
    assert len(box) == 3
    assert box.dropped == 2
    assert [json.loads(i.payload)["seq"] for i in box.peek(10)] == [3, 4, 5]
    box.close()

    reopened = Outbox(path, 3)
    assert reopened.dropped == 2  # persisted
    assert len(reopened) == 3
    reopened.put("t", seq_payload, 1, counter="detections")
    assert reopened.dropped == 3
    assert [json.loads(i.payload)["seq"] for i in reopened.peek(10)] == [4, 5, 6]
    reopened.close()

    # A smaller bound after a restart trims the backlog to it on the next put.
    smaller = Outbox(path, 1)
    smaller.put("t", seq_payload, 1, counter="detections")
    assert [json.loads(i.payload)["seq"] for i in smaller.peek(10)] == [7]
    assert smaller.dropped == 6
    assert len(smaller) == 1


def test_concurrent_puts_never_share_a_seq(path: Path) -> None:
    box = Outbox(path, 100_000)
    threads, per_thread = 8, 150
    returned: List[int] = []
    lock = threading.Lock()
    start = threading.Barrier(threads)

    def worker() -> None:
        start.wait()
        mine = [box.put("t", seq_payload, 1, counter="detections") for _ in range(per_thread)]
        with lock:
            returned.extend(s for s in mine if s is not None)

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    total = threads * per_thread
    assert sorted(returned) == list(range(1, total + 1))
    items = box.peek(total + 1)
    assert len(items) == total == len(box)
    # The payload of each row carries the seq of its own transaction, in insertion order.
    assert [json.loads(i.payload)["seq"] for i in items] == list(range(1, total + 1))
    assert box.counter("detections") == total


def test_an_unreadable_file_is_set_aside(path: Path) -> None:
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not an sqlite database, just junk " * 100)
    box = Outbox(path, 10)
    assert len(box) == 0
    assert box.put("t", seq_payload, 1, counter="detections") == 1
    aside = list(path.parent.glob("outbox.db.corrupt-*"))
    assert len(aside) == 1
    assert aside[0].read_bytes().startswith(b"this is not")
    box.close()


def test_the_file_is_sqlite_in_wal_mode(path: Path) -> None:
    box = Outbox(path, 10)
    box.put("t", b"x", 1)
    with sqlite3.connect(path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 1
    box.close()
    with pytest.raises(ValueError):
        Outbox(path, 0)


def test_a_full_disk_is_one_outbox_error_and_the_queue_recovers(tmp_path: Path) -> None:
    """SQLite answers a full disk with "database or disk is full" and has already rolled the
    transaction back: the outbox says so in one OutboxError naming its file (the sender and the
    pipeline log it as one line), keeps its count right, and works again once there is room.
    The disk is made full with SQLite's own page limit, so no root or tmpfs is needed."""
    from edge_agent.mqtt.outbox import OutboxError

    outbox = Outbox(tmp_path / "o.db", 100_000)
    assert outbox._conn is not None
    pages = outbox._conn.execute("PRAGMA page_count").fetchone()[0]
    outbox._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    queued = 0
    with pytest.raises(OutboxError, match=r"outbox .*o\.db: database or disk is full"):
        for _ in range(1000):
            outbox.put("t", b"x" * 2000, qos=1)
            queued += 1
    assert 0 < queued < 1000 and len(outbox) == queued
    outbox._conn.execute("PRAGMA max_page_count = 1073741823")
    outbox.put("t", b"after", qos=1)
    assert len(outbox) == queued + 1 and outbox.peek(1, after_id=0)[0].payload == b"x" * 2000
    outbox.close()
