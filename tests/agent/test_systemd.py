"""edge_agent.systemd (sd_notify over a real AF_UNIX datagram socket, logging set-up) and the unit
file systemd/edge-agent.service (systemd-analyze verify and security, where installed)."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Tuple

import pytest

from edge_agent import systemd as sd

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "edge-agent.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze not installed")


def _library_importable(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


# --- sd_notify ------------------------------------------------------------------------------


class Listener:
    """The service manager's end: a bound datagram socket that the test reads."""

    def __init__(self, address: sd.SocketAddress) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(5)

    def next(self) -> str:
        return self.sock.recv(4096).decode()

    def pending(self) -> List[str]:
        """Datagrams already queued, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                out.append(self.sock.recv(4096).decode())
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(5)
        return out

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["socket", "library"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways of sending: the plain protocol (systemd-python made unimportable) and
    systemd-python's notify where it is installed."""
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "socket":
        monkeypatch.setitem(sys.modules, "systemd.daemon", None)  # import raises ImportError
    elif not _library_importable("systemd.daemon"):
        pytest.skip("systemd-python not installed")
    return str(request.param)


@pytest.fixture
def listener(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, implementation: str) -> Iterator[Listener]:
    path = tmp_path / "notify"
    if len(str(path)) > 100:  # sun_path holds 108 bytes
        pytest.skip(f"tmp_path too long for an AF_UNIX address: {path}")
    server = Listener(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield server
    server.close()


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_ready_status_and_stopping_reach_the_socket(listener: Listener) -> None:
    notifier = sd.Notifier()
    assert notifier.enabled
    notifier.ready("shapes 1.4.0 on coral, 15.0 fps")
    assert listener.next() == "READY=1\nSTATUS=shapes 1.4.0 on coral, 15.0 fps"
    notifier.status("camera lost\nretrying")  # a newline would start a new assignment
    assert listener.next() == "STATUS=camera lost retrying"
    notifier.stopping()
    assert listener.next() == "STOPPING=1\nSTATUS=stopping"
    notifier.stopping("stopping: SIGTERM")
    assert listener.next() == "STOPPING=1\nSTATUS=stopping: SIGTERM"


def test_watchdog_is_rate_limited_to_a_quarter_of_the_timeout(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "8000000")  # WatchdogSec=8: a ping at most every 2 s
    clock = FakeClock()
    notifier = sd.Notifier(clock=clock)
    assert notifier.watchdog_interval_s == pytest.approx(2.0)

    notifier.watchdog()
    assert listener.next() == "WATCHDOG=1"
    for step in (0.5, 1.0, 1.999):  # every frame calls it; none of these may ping
        clock.now = 1000.0 + step
        notifier.watchdog()
    notifier.status("marker")  # datagrams keep their order: nothing may come before the marker
    assert listener.next() == "STATUS=marker"
    clock.now = 1002.0
    notifier.watchdog()
    assert listener.next() == "WATCHDOG=1"
    clock.now = 1003.0
    notifier.watchdog()
    clock.now = 1004.5
    notifier.watchdog()
    assert listener.next() == "WATCHDOG=1"
    assert listener.pending() == []


def test_watchdog_belongs_to_the_pid_systemd_named(
    listener: Listener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sd.Notifier().watchdog_interval_s == pytest.approx(7.5)

    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # set for another process: not ours
    notifier = sd.Notifier()
    assert notifier.watchdog_interval_s is None
    notifier.watchdog()
    notifier.status("marker")
    assert listener.next() == "STATUS=marker"


def test_no_watchdog_configured(listener: Listener, monkeypatch: pytest.MonkeyPatch) -> None:
    for bad in ("", "0", "-5", "soon"):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert sd.Notifier().watchdog_interval_s is None
    monkeypatch.delenv("WATCHDOG_USEC")
    notifier = sd.Notifier()
    notifier.watchdog()
    notifier.status("marker")
    assert listener.next() == "STATUS=marker"


def test_abstract_namespace_socket(implementation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"edgewatch-test-{uuid.uuid4().hex}"
    server = Listener(b"\0" + name.encode())
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        notifier = sd.Notifier()
        assert notifier.enabled
        notifier.ready("up")
        assert server.next() == "READY=1\nSTATUS=up"
    finally:
        server.close()


def test_without_notify_socket_every_call_is_a_no_op(
    implementation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")  # without a socket there is nobody to ping
    notifier = sd.Notifier()
    assert not notifier.enabled
    assert notifier.watchdog_interval_s is None
    notifier.ready("up")
    notifier.status("x")
    notifier.watchdog()
    notifier.stopping()
    notifier.close()


def test_unusable_notify_socket_value_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    notifier = sd.Notifier(environ={"NOTIFY_SOCKET": "relative/path"})
    assert not notifier.enabled
    notifier.ready("up")


def test_injected_environment(tmp_path: Path) -> None:
    server = Listener(str(tmp_path / "n"))
    try:
        notifier = sd.Notifier(environ={"NOTIFY_SOCKET": str(tmp_path / "n"), "WATCHDOG_USEC": "4000000"})
        assert notifier.watchdog_interval_s == pytest.approx(1.0)
        notifier.watchdog()
        assert server.next() == "WATCHDOG=1"
    finally:
        server.close()


def test_a_vanished_manager_never_raises_and_a_new_one_is_found(tmp_path: Path) -> None:
    path = tmp_path / "n"
    server = Listener(str(path))
    notifier = sd.Notifier(environ={"NOTIFY_SOCKET": str(path)})
    notifier.status("one")
    assert server.next() == "STATUS=one"
    server.close()
    path.unlink()
    notifier.status("lost")  # ENOENT / ECONNREFUSED: logged at debug, not raised
    notifier.ready("lost too")
    server = Listener(str(path))  # e.g. after `systemctl daemon-reexec`
    try:
        notifier.status("two")
        assert server.next() == "STATUS=two"
    finally:
        server.close()
        notifier.close()


# --- logging --------------------------------------------------------------------------------


@pytest.fixture
def clean_logging(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """setup_logging replaces the root handlers and sets levels: put everything back after."""
    root = logging.getLogger()
    names = ("edge_agent", *sd.NOISY_LOGGERS)
    saved: Tuple[List[logging.Handler], int, Dict[str, int]] = (
        list(root.handlers),
        root.level,
        {n: logging.getLogger(n).level for n in names},
    )
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


def _stderr_stream_id() -> str:
    st = os.fstat(sys.stderr.fileno())
    return f"{st.st_dev}:{st.st_ino}"


TIMESTAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO edge_agent\.test: hello$", re.M)


def test_plain_stderr_lines_have_timestamps(clean_logging: None, capfd: pytest.CaptureFixture[str]) -> None:
    sd.setup_logging(0)
    logging.getLogger("edge_agent.test").info("hello")
    logging.getLogger("edge_agent.test").debug("not at verbosity 0")
    err = capfd.readouterr().err
    assert TIMESTAMPED.search(err), err
    assert "not at verbosity 0" not in err


def test_journal_stream_lines_carry_priority_not_time(
    clean_logging: None, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", _stderr_stream_id())
    monkeypatch.setitem(sys.modules, "systemd.journal", None)  # no systemd-python: stream lines
    sd.setup_logging(0)
    log = logging.getLogger("edge_agent.test")
    log.info("hello")
    log.warning("careful")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed")
    lines = capfd.readouterr().err.splitlines()
    assert lines[0] == "<6>INFO edge_agent.test: hello"
    assert lines[1] == "<4>WARNING edge_agent.test: careful"
    assert lines[2] == "<3>ERROR edge_agent.test: failed"
    # A traceback stays one record at one priority: every line keeps the prefix.
    assert len(lines) > 4 and all(line.startswith("<3>") for line in lines[2:])
    assert any("RuntimeError: boom" in line for line in lines)


def test_journal_stream_of_another_process_is_ignored(
    clean_logging: None, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Inherited from a service that started us, with stderr pointing elsewhere now.
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    sd.setup_logging(0)
    logging.getLogger("edge_agent.test").info("hello")
    assert TIMESTAMPED.search(capfd.readouterr().err)


def test_explicit_journald_choice_wins(
    clean_logging: None, capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    monkeypatch.setenv("JOURNAL_STREAM", _stderr_stream_id())
    sd.setup_logging(0, journald=False)
    logging.getLogger("edge_agent.test").info("hello")
    assert TIMESTAMPED.search(capfd.readouterr().err)

    monkeypatch.delenv("JOURNAL_STREAM")
    sd.setup_logging(0, journald=True)
    logging.getLogger("edge_agent.test").info("hello")
    assert capfd.readouterr().err == "<6>INFO edge_agent.test: hello\n"


@pytest.mark.skipif(not _library_importable("systemd.journal"), reason="systemd-python not installed")
def test_journald_through_systemd_python(clean_logging: None) -> None:
    from systemd.journal import JournalHandler  # type: ignore[import-not-found,unused-ignore]

    sd.setup_logging(0, journald=True)
    handlers = logging.getLogger().handlers
    assert len(handlers) == 1 and isinstance(handlers[0], JournalHandler)


def test_verbosity_levels_and_quiet_third_parties(clean_logging: None) -> None:
    def effective(name: str) -> int:
        return logging.getLogger(name).getEffectiveLevel()

    sd.setup_logging(0)
    assert effective("edge_agent.agent") == logging.INFO
    assert effective("somelib") == logging.WARNING
    assert effective("botocore.endpoint") == logging.WARNING
    sd.setup_logging(1)
    assert effective("edge_agent.agent") == logging.DEBUG
    assert effective("somelib") == logging.INFO
    for noisy in ("botocore.endpoint", "urllib3.connectionpool", "paho.mqtt.client"):
        assert effective(noisy) == logging.WARNING
    sd.setup_logging(2)
    assert effective("paho.mqtt.client") == logging.DEBUG
    assert effective("somelib") == logging.DEBUG


def test_setup_logging_replaces_earlier_handlers(clean_logging: None) -> None:
    root = logging.getLogger()
    earlier = logging.StreamHandler(io.StringIO())
    root.addHandler(earlier)  # e.g. the CLI's basicConfig
    sd.setup_logging(0)
    sd.setup_logging(1)
    assert len(root.handlers) == 1 and earlier not in root.handlers


# --- the unit file --------------------------------------------------------------------------


def parse_unit(text: str) -> Dict[str, List[Tuple[str, str]]]:
    """Sections of (key, value) in order; keys repeat (DeviceAllow=...)."""
    sections: Dict[str, List[Tuple[str, str]]] = {}
    current: List[Tuple[str, str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not key=value: {raw!r}"
        current.append((key.strip(), value.strip()))
    return sections


def values(section: List[Tuple[str, str]], key: str) -> List[str]:
    return [v for k, v in section if k == key]


def test_unit_settings() -> None:
    unit = parse_unit(UNIT.read_text())
    service, head = unit["Service"], unit["Unit"]

    def one(key: str) -> str:
        found = values(service, key)
        assert len(found) == 1, f"{key}: {found}"
        return found[0]

    assert one("Type") == "notify"
    assert one("NotifyAccess") == "main"
    assert one("ExecStart") == "/opt/edge-agent/venv/bin/edge-agent run -c /etc/edge-agent/config.yaml"
    assert (one("User"), one("Group")) == ("edge-agent", "edge-agent")
    assert one("SupplementaryGroups").split() == ["video", "plugdev"]
    assert one("StateDirectory") == "edge-agent"
    assert one("ConfigurationDirectory") == "edge-agent"
    assert (one("WatchdogSec"), one("Restart"), one("RestartSec")) == ("30", "on-failure", "5")
    assert (one("TimeoutStopSec"), one("KillSignal")) == ("20", "SIGTERM")
    assert "network-online.target" in values(head, "After")
    assert "network-online.target" in values(head, "Wants")
    assert values(unit["Install"], "WantedBy") == ["multi-user.target"]

    # Devices: the real /dev, narrowed by the device cgroup to the camera and accelerators.
    assert (one("PrivateDevices"), one("DevicePolicy")) == ("no", "closed")
    allowed = {v.split()[0]: v.split()[1] for v in values(service, "DeviceAllow")}
    for device in (
        "char-video4linux",
        "char-media",
        "char-usb_device",
        "char-apex",
        "char-dma_heap",
        "char-vchiq",
    ):
        assert allowed.get(device) == "rw", device
    assert one("RestrictAddressFamilies").split() == ["AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"]
    for key, expected in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "CapabilityBoundingSet": "",
        "SystemCallArchitectures": "native",
        "LockPersonality": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "UMask": "0027",
    }.items():
        assert one(key) == expected, key
    assert "@system-service" in values(service, "SystemCallFilter")
    # Left off on purpose: JIT runtimes need W+X memory, and the broker and S3 need the network.
    assert values(service, "MemoryDenyWriteExecute") == []
    assert values(service, "IPAddressDeny") == []
    assert values(service, "PrivateNetwork") == []


def _verifiable_copy(tmp_path: Path) -> Path:
    """The unit with only ExecStart pointing at a binary that exists here."""
    lines = UNIT.read_text().splitlines(keepends=True)
    rewritten = [
        "ExecStart=/bin/true run -c /etc/edge-agent/config.yaml\n" if line.startswith("ExecStart=") else line
        for line in lines
    ]
    assert sum(a != b for a, b in zip(lines, rewritten)) == 1
    copy = tmp_path / UNIT.name
    copy.write_text("".join(rewritten))
    return copy


@needs_systemd_analyze
def test_systemd_analyze_verify(tmp_path: Path) -> None:
    assert SYSTEMD_ANALYZE is not None
    # The original fails only for want of the installed binary...
    original = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(UNIT)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    complaints = [line for line in original.stderr.splitlines() if UNIT.name in line]
    assert complaints and all("/opt/edge-agent/venv/bin/edge-agent" in line for line in complaints), (
        complaints
    )
    # ...and with that one line changed, it verifies without a word about the unit.
    copy = _verifiable_copy(tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(copy)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if UNIT.name in line] == []


@needs_systemd_analyze
def test_systemd_analyze_security_exposure() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    match = re.search(r"Overall exposure level for edge-agent\.service:\s*([0-9.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    exposure = float(match.group(1))
    assert exposure <= 3.0, result.stdout
