"""Waiting in tests: the one helper every test and the reliability scenarios use.

A test never sleeps for "long enough": it waits for what it needs to see, with a deadline that
only a failure reaches.

- :func:`wait_for` — wait until ``predicate()`` is truthy and return that value; at the deadline
  raise ``AssertionError`` naming what was awaited and the last value seen. Polls every
  ``interval`` seconds; given the ``condition`` (a :class:`threading.Condition`) that the
  watched state is changed and notified under, it is also woken by each change.
- :func:`eventually` — the same wait as a value instead of a failure: the predicate's first
  truthy value, or its last (falsy) one at the deadline. For code that counts outcomes rather
  than failing on the first (the reliability scenarios).
- :func:`holds_for` — the opposite: ``predicate()`` stays truthy for ``seconds`` (something
  does NOT happen during a window the test deliberately holds open); fails as soon as it turns
  falsy.
- :func:`reaches` — a predicate: a count has reached ``n``.

Typical use::

    wait_for(lambda: len(out.items) >= 10, what="10 processed frames")
    first = wait_for(lambda: sub.received(topic), what=f"a message on {topic}")  # the messages
    holds_for(lambda: len(out.items) == n, 0.3, "no frame processed while paused")
"""

from __future__ import annotations

import threading
import time
from typing import Callable, Optional, TypeVar, Union

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0  # seconds; only a failing test waits this long
INTERVAL = 0.02  # seconds between two looks at a polled predicate

What = Union[str, Callable[[], str]]  # a description, or one made at the deadline (a log's tail)


def eventually(
    predicate: Callable[[], T],
    timeout: float,
    interval: float = INTERVAL,
    pause: Callable[[float], object] = time.sleep,
) -> T:
    """``predicate()``'s first truthy value within ``timeout`` seconds, or its last (falsy) value
    when the deadline passed; looked at every ``interval`` seconds and once more at the deadline.
    ``pause(seconds)`` waits between two looks (``Condition.wait``: woken early by a change)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        left = deadline - time.monotonic()
        if left <= 0:
            return value
        pause(min(interval, left))


def wait_for(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    what: What = "a condition",
    *,
    interval: float = INTERVAL,
    condition: Optional[threading.Condition] = None,
) -> T:
    """Wait until ``predicate()`` is truthy and return that value. After ``timeout`` seconds raise
    ``AssertionError`` naming ``what`` (a string, or a function called then, e.g. to add a log's
    tail) and the predicate's last value.

    The predicate is looked at every ``interval`` seconds. Given ``condition``, it is looked at
    holding that condition, and also as soon as the condition is notified: pass it when what the
    predicate reads is changed under it and ``notify_all()``-ed (a message arrived, an ack came)."""
    if condition is None:
        value = eventually(predicate, timeout, interval)
    else:
        with condition:
            value = eventually(predicate, timeout, interval, condition.wait)
    if not value:
        raise AssertionError(
            f"timed out after {timeout:g} s waiting for {_said(what)} (last value: {value!r})"
        )
    return value


def holds_for(
    predicate: Callable[[], object], seconds: float, what: What, interval: float = INTERVAL
) -> None:
    """Check that ``predicate()`` stays truthy for ``seconds`` (looked at every ``interval``
    seconds, the last time at the end of the window); raise ``AssertionError`` naming ``what``
    as soon as it is not. The window is the test's subject: it is waited out in full whenever
    the predicate holds."""
    start = time.monotonic()
    if eventually(lambda: not predicate(), seconds, interval):
        elapsed = time.monotonic() - start
        raise AssertionError(f"{_said(what)} stopped holding {elapsed:.2f} s into a {seconds:g} s window")


def _said(what: What) -> str:
    return what() if callable(what) else what


def reaches(value: Callable[[], int], n: int) -> Callable[[], bool]:
    """A predicate: ``value()`` has reached ``n``."""
    return lambda: value() >= n
