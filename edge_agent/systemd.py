"""The agent's link to its service manager (SPEC §8): sd_notify messages and journald logging.

``Notifier`` speaks the notification protocol: ``READY=1`` once the model is loaded and frames
flow, ``STATUS=`` lines for ``systemctl status``, ``WATCHDOG=1`` keep-alives from the processing
loop and ``STOPPING=1`` on shutdown. It uses systemd-python (``systemd.daemon.notify``) when that is
importable and otherwise sends the datagrams itself: the protocol is one ``AF_UNIX`` datagram of
newline-separated ``KEY=VALUE`` lines to the socket named by ``$NOTIFY_SOCKET`` (a path, or an
abstract socket when it starts with ``@``). Outside systemd (no ``$NOTIFY_SOCKET``) every call is a
no-op, so the composition root calls it unconditionally.

``setup_logging`` sends the log to journald with structured fields when the agent runs as a
service, and plain lines to stderr otherwise.
"""

from __future__ import annotations

import importlib
import logging
import os
import socket
import sys
import threading
import time
from typing import Any, Callable, Mapping, Optional, Union

log = logging.getLogger(__name__)

SYSLOG_IDENTIFIER = "edge-agent"
# Loggers that narrate every request or packet at INFO/DEBUG: kept at WARNING unless -vv.
NOISY_LOGGERS = ("botocore", "boto3", "s3transfer", "urllib3", "paho", "asyncio", "PIL")
# A sd_notify STATUS= value is one line; systemd shows it in `systemctl status`.
_MAX_STATUS_CHARS = 256

SocketAddress = Union[str, bytes]


def _library_notify() -> Optional[Callable[..., Any]]:
    """systemd-python's notify, or None. Only that package's signature ``notify(str)`` is used:
    other distributions that install a ``systemd.daemon`` module (cysystemd) take different
    arguments, and a failed call falls back to the plain protocol. (Imported by name: the checkout's
    own ``systemd/`` folder of unit files would otherwise pass for a namespace package.)"""
    try:
        daemon = importlib.import_module("systemd.daemon")
    except ImportError:
        return None
    notify = getattr(daemon, "notify", None)
    return notify if callable(notify) else None


def _socket_address(value: str) -> Optional[SocketAddress]:
    """``$NOTIFY_SOCKET`` as a socket address: ``@name`` is Linux's abstract namespace (a leading
    NUL byte), anything else must be an absolute path. Other forms (``vsock:``) are not ours."""
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


def _one_line(text: str) -> str:
    # A newline would start a new KEY=VALUE assignment in the datagram.
    return " ".join(str(text).split())[:_MAX_STATUS_CHARS]


class Notifier:
    """Notifications to the service manager. Thread-safe; never raises (failures are logged at
    debug level, because a service must not stop over a lost status line)."""

    def __init__(
        self,
        *,
        environ: Optional[Mapping[str, str]] = None,
        clock: Callable[[], float] = time.monotonic,
        use_library: bool = True,
    ) -> None:
        """``environ`` (default ``os.environ``) and ``clock`` (monotonic seconds) are read here once
        and can be injected by tests; ``use_library=False`` forces the plain socket protocol."""
        env = os.environ if environ is None else environ
        self._clock = clock
        self._lock = threading.Lock()
        self._sock: Optional[socket.socket] = None
        self._last_watchdog: Optional[float] = None
        socket_value = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(socket_value) if socket_value else None
        if socket_value and self._address is None:
            log.debug("NOTIFY_SOCKET=%r is not a socket path; notifications disabled", socket_value)
        # The library reads os.environ itself, so it only serves the real environment.
        library_ok = use_library and environ is None and self._address is not None
        self._library = _library_notify() if library_ok else None
        self._watchdog_interval = self._read_watchdog(env) if self._address is not None else None

    @staticmethod
    def _read_watchdog(env: Mapping[str, str]) -> Optional[float]:
        """sd_watchdog_enabled(): ``$WATCHDOG_USEC`` microseconds, for us only when
        ``$WATCHDOG_PID`` is unset or our own pid (a child must not ping for its parent).
        Pings go every quarter of the timeout, so one late frame never trips it."""
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            return None
        if usec <= 0:
            return None
        pid = env.get("WATCHDOG_PID")
        if pid is not None:
            try:
                if int(pid) != os.getpid():
                    return None
            except ValueError:
                return None
        return usec / 1e6 / 4

    @property
    def enabled(self) -> bool:
        """True when a service manager listens ($NOTIFY_SOCKET was set to a usable address)."""
        return self._address is not None

    @property
    def watchdog_interval_s(self) -> Optional[float]:
        """Seconds between two ``WATCHDOG=1`` pings (a quarter of the unit's ``WatchdogSec=``), or
        None when no watchdog is configured for this process."""
        return self._watchdog_interval

    def ready(self, status: str) -> None:
        """The service is up: ``READY=1`` with a status line."""
        self._send(f"READY=1\nSTATUS={_one_line(status)}")

    def status(self, text: str) -> None:
        self._send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> None:
        """Keep-alive from the processing loop: cheap to call every frame, it sends at most one
        ``WATCHDOG=1`` per ``watchdog_interval_s``."""
        if self._watchdog_interval is None:
            return
        now = self._clock()
        with self._lock:
            last = self._last_watchdog
            if last is not None and now - last < self._watchdog_interval:
                return
            self._last_watchdog = now
        self._send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        """Shutdown has begun: ``STOPPING=1`` with a status line."""
        self._send(f"STOPPING=1\nSTATUS={_one_line(status)}")

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, message: str) -> None:
        if self._address is None:
            return
        if self._library is not None:
            try:
                self._library(message)
                return
            except Exception as e:  # another package's systemd.daemon with another signature
                log.debug("systemd.daemon.notify failed (%s); using the socket protocol", e)
                self._library = None
        try:
            with self._lock:
                if self._sock is None:
                    self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.sendto(message.encode(), self._address)
        except OSError as e:
            # The manager may be restarting (daemon-reexec) or the socket gone: drop this one
            # message and open a fresh socket next time.
            log.debug("sd_notify %r to %r failed: %s", message, self._address, e)
            self.close()


def _stderr_is_journal(journal_stream: str) -> bool:
    """systemd sets ``$JOURNAL_STREAM=DEV:INODE`` of the stream it connected; it is ours only when
    stderr is still that stream (a child inherits the variable, not necessarily the stream)."""
    try:
        device, inode = (int(x) for x in journal_stream.split(":"))
        st = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError, AttributeError):
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


class _SyslogPrefixFormatter(logging.Formatter):
    """Lines for a journald stream: ``<N>`` in front of each line is the syslog priority, which
    journald strips and records (so `journalctl -p warning` works without systemd-python)."""

    _PRIORITIES = {
        logging.CRITICAL: 2,
        logging.ERROR: 3,
        logging.WARNING: 4,
        logging.INFO: 6,
        logging.DEBUG: 7,
    }

    def format(self, record: logging.LogRecord) -> str:
        priority = self._PRIORITIES.get(record.levelno, 6 if record.levelno > logging.DEBUG else 7)
        text = super().format(record)
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines() or [""])


def _journal_handler() -> Optional[logging.Handler]:
    try:
        journal = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    try:
        handler: logging.Handler = journal.JournalHandler(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
    except Exception as e:  # e.g. a different package that also calls itself systemd.journal
        log.debug("systemd.journal.JournalHandler unusable: %s", e)
        return None
    return handler


def setup_logging(verbosity: int, journald: Optional[bool] = None) -> None:
    """Configure the root logger for the agent (replacing handlers set before, e.g. by the CLI).

    ``verbosity`` 0: INFO for ``edge_agent`` (a service needs its info lines), WARNING for the
    rest; 1: DEBUG for ``edge_agent``, INFO for the rest; 2 or more: DEBUG for everything. Below 2
    the chatty third-party loggers (botocore, urllib3, paho…) stay at WARNING.

    ``journald``: None decides by ``$JOURNAL_STREAM`` (set by systemd for a service whose stderr
    goes to the journal); True asks for journald, False for stderr. The journal gets structured
    records through systemd-python when importable; otherwise stderr lines carry the syslog
    priority and no timestamp (journald adds its own), and outside systemd lines have timestamps.
    """
    journal_stream = os.environ.get("JOURNAL_STREAM", "")
    under_journal = bool(journal_stream) and _stderr_is_journal(journal_stream)
    want_journal = under_journal if journald is None else journald

    handler: Optional[logging.Handler] = _journal_handler() if want_journal else None
    if handler is not None:
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    elif want_journal:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_SyslogPrefixFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)

    if verbosity <= 0:
        agent_level, root_level = logging.INFO, logging.WARNING
    elif verbosity == 1:
        agent_level, root_level = logging.DEBUG, logging.INFO
    else:
        agent_level, root_level = logging.DEBUG, logging.DEBUG
    root.setLevel(root_level)
    logging.getLogger("edge_agent").setLevel(agent_level)
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING if verbosity < 2 else logging.NOTSET)
