"""``--wait``: follow the results of one command and turn them into an exit status.

Exit 0 only when every device that answered ended with ``succeeded``; 1 when one ended with
``failed`` or ``rejected``; 2 when the time ran out first (or, for a group, no device answered).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Protocol, Sequence, Set

from ..commands.envelope import canonical_json
from ..commands.results import FINAL_STATUSES
from .client import Connection

EXIT_SUCCEEDED = 0
EXIT_FAILED = 1
EXIT_TIMEOUT = 2


def parse_result(payload: bytes) -> Optional[Dict[str, Any]]:
    """A result document, or None for anything that is not a JSON object with an id."""
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("id"), str):
        return None
    return doc


@dataclass
class ResultTracker:
    """Results for ``command_id``, from one device or (``group``) from any that answers.

    With MQTT 5 a device sends each result twice (its result topic and our response topic):
    identical documents are counted once."""

    command_id: str
    group: bool = False
    last_status: Dict[str, str] = field(default_factory=dict)  # device -> its latest status
    last_news: float = field(default_factory=time.monotonic)
    _seen: Set[bytes] = field(default_factory=set)

    def add(self, doc: Dict[str, Any]) -> bool:
        """Record a result; False when it is not for this command or was seen already."""
        if doc.get("id") != self.command_id:
            return False
        try:
            fingerprint = canonical_json(doc)
        except (TypeError, ValueError):
            return False
        if fingerprint in self._seen:
            return False
        self._seen.add(fingerprint)
        device = str(doc.get("device", "?"))
        status = str(doc.get("status", "?"))
        # A late "in_progress" must not reopen a device that already finished.
        if self.last_status.get(device) not in FINAL_STATUSES:
            self.last_status[device] = status
        self.last_news = time.monotonic()
        return True

    @property
    def all_final(self) -> bool:
        return bool(self.last_status) and all(s in FINAL_STATUSES for s in self.last_status.values())

    def done(self, settle_s: Optional[float]) -> bool:
        """Single device: once it finished. Group: once every device that answered finished
        and none has said anything for ``settle_s`` (never, without settle_s: wait the timeout)."""
        if not self.all_final:
            return False
        if not self.group:
            return True
        return settle_s is not None and time.monotonic() - self.last_news >= settle_s

    @property
    def failed(self) -> bool:
        return any(s in ("failed", "rejected") for s in self.last_status.values())

    def exit_status(self) -> int:
        if self.failed:
            return EXIT_FAILED
        if self.all_final:
            return EXIT_SUCCEEDED
        return EXIT_TIMEOUT

    def unfinished(self) -> List[str]:
        return sorted(d for d, s in self.last_status.items() if s not in FINAL_STATUSES)


class ExtraWait(Protocol):
    """Something else a command waits for besides its results (the snapshot's JPEG)."""

    @property
    def topics(self) -> Sequence[str]: ...

    @property
    def done(self) -> bool: ...

    def handle(self, topic: str, payload: bytes) -> None: ...

    def missing(self) -> str: ...


def _say(text: str) -> None:
    print(f"edge-ctl: {text}", file=sys.stderr, flush=True)


def follow(
    conn: Connection,
    tracker: ResultTracker,
    timeout_s: float,
    settle_s: Optional[float] = None,
    wait_results: bool = True,
    extra: Optional[ExtraWait] = None,
) -> int:
    """Read messages until the command ends or ``timeout_s`` passes; the exit status.

    ``wait_results``: print each result as a JSON line and wait for the final ones; without
    it only ``extra`` is waited for (a failure still ends the wait)."""
    deadline = time.monotonic() + timeout_s
    extra_topics = set(extra.topics) if extra is not None else set()
    while True:
        if tracker.failed and not tracker.group:
            return EXIT_FAILED
        results_done = tracker.done(settle_s) or not wait_results
        if results_done and (extra is None or extra.done):
            return tracker.exit_status() if wait_results else EXIT_SUCCEEDED
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        message = conn.next_message(min(remaining, 0.5))
        if message is None:
            continue
        if extra is not None and message.topic in extra_topics:
            extra.handle(message.topic, bytes(message.payload))
            continue
        doc = parse_result(bytes(message.payload))
        if doc is None or not tracker.add(doc):
            continue
        if wait_results:
            print(json.dumps(doc, ensure_ascii=False), flush=True)
        if doc.get("status") in ("failed", "rejected"):
            _say(f"{doc.get('device', '?')}: {doc['status']}: {doc.get('detail', 'no detail')}")
    return _timed_out(tracker, timeout_s, wait_results, extra)


def _timed_out(
    tracker: ResultTracker, timeout_s: float, wait_results: bool, extra: Optional[ExtraWait]
) -> int:
    status = tracker.exit_status()
    if status == EXIT_FAILED:
        return status
    if extra is not None and not extra.done:
        _say(f"{extra.missing()} within {timeout_s:g} s")
        return EXIT_TIMEOUT
    if wait_results and not tracker.last_status:
        _say(f"no result within {timeout_s:g} s")
        return EXIT_TIMEOUT
    if wait_results and status == EXIT_TIMEOUT:
        _say(f"timed out after {timeout_s:g} s waiting for " + ", ".join(tracker.unfinished()))
    return status
