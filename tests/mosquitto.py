"""A real Mosquitto broker on loopback for tests (SPEC §8), and what tests need around it.

- :class:`Mosquitto`: writes a config into a directory, runs ``mosquitto -c`` on a free
  127.0.0.1 port, and can be stopped and started again ON THE SAME PORT to simulate an outage
  (``persistence false``: a restart loses every session and retained message, as a broker that
  crashed would). Optional TLS listener (``tls=make_tls_files(dir)``, ``require_certificate``
  for mutual TLS) and password authentication (``users={...}``, made with ``mosquitto_passwd``).
- TLS files come from :func:`tests.pki.make_tls_files` (a CA, a server certificate for
  127.0.0.1/localhost and a client certificate, generated with ``cryptography``).
- :class:`Subscriber`: a paho client that records what arrives, for assertions (with a deadline).
- :class:`TcpGate`: a TCP forwarder between one client and the broker, to cut and restore that
  client's network without touching anyone else's connection.

Fixtures (in a test module: ``pytest_plugins = ["tests.mosquitto"]``, or import them in conftest.py):
``mosquitto`` (function scope: a started broker, stopped afterwards) and ``mqtt_subscriber``
(a factory ``mqtt_subscriber(broker, topics, **kw) -> Subscriber``, closed afterwards).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import pytest

from tests.pki import TLSFiles
from tests.waiting import eventually, wait_for

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
DEFAULT_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def accepts(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something listens on ``host:port`` (a TCP connection is accepted)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(
    process: subprocess.Popen[bytes], ports: Sequence[int], timeout: float, log: Callable[[], str]
) -> None:
    """Wait until ``process`` (a broker just started) accepts connections on every one of
    ``ports`` on 127.0.0.1. Should it exit first, or the deadline pass, it is stopped and
    ``RuntimeError`` raised with ``log()`` (called once the process has ended)."""
    up = eventually(lambda: process.poll() is not None or all(accepts(p) for p in ports), timeout)
    if up and process.poll() is None:
        return
    exited = process.poll()
    if exited is None:
        process.kill()
        process.wait(5)
    why = f"exited ({exited})" if exited is not None else f"did not open {list(ports)} in {timeout:g} s"
    raise RuntimeError(f"mosquitto {why}:\n{log()}")


# --------------------------------------------------------------------------------------- TLS


def make_password_file(path: Path, users: Dict[str, str]) -> Path:
    """A Mosquitto password file, hashed by ``mosquitto_passwd`` (the test is skipped without it)."""
    if not os.access(MOSQUITTO_PASSWD, os.X_OK):
        pytest.skip("mosquitto_passwd is not installed")
    path.write_text("")
    for user, password in users.items():
        subprocess.run([MOSQUITTO_PASSWD, "-b", str(path), user, password], check=True, capture_output=True)
    return path


# --------------------------------------------------------------------------------------- broker


class Mosquitto:
    """One broker process; ``stop()`` and ``start()`` again keep its ports."""

    def __init__(
        self,
        directory: Path,
        *,
        tls: Optional[TLSFiles] = None,
        require_certificate: bool = False,
        users: Optional[Dict[str, str]] = None,
    ) -> None:
        if not os.access(MOSQUITTO, os.X_OK):
            pytest.skip("mosquitto is not installed")
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port()
        self.tls = tls
        self.tls_port: Optional[int] = free_port() if tls is not None else None
        self.users = dict(users or {})
        self.password_file = make_password_file(directory / "passwords", self.users) if users else None
        self.log_path = directory / "mosquitto.log"
        self.config_path = directory / "mosquitto.conf"
        self.config_path.write_text(self._config(require_certificate))
        self._process: Optional[subprocess.Popen[bytes]] = None

    def _config(self, require_certificate: bool) -> str:
        lines = [
            "per_listener_settings false",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "log_type information",
            "log_type subscribe",
            "connection_messages true",
            f"allow_anonymous {'false' if self.password_file else 'true'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # else it switches to the "mosquitto" user, who cannot read tmp_path
        if self.password_file is not None:
            lines.append(f"password_file {self.password_file}")
        lines.append(f"listener {self.port} {self.host}")
        if self.tls is not None:
            lines += [
                f"listener {self.tls_port} {self.host}",
                f"cafile {self.tls.ca}",
                f"certfile {self.tls.server_cert}",
                f"keyfile {self.tls.server_key}",
                f"require_certificate {'true' if require_certificate else 'false'}",
            ]
        return "\n".join(lines) + "\n"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        if self.running:
            return
        self._process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        process = self._process
        ports = [p for p in (self.port, self.tls_port) if p is not None]
        try:
            wait_listening(process, ports, timeout, lambda: self._stderr(process) + self.log())
        except RuntimeError:
            self.stop()
            raise

    @staticmethod
    def _stderr(process: subprocess.Popen[bytes]) -> str:
        return process.stderr.read().decode(errors="replace") + "\n" if process.stderr else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        if process.stderr is not None:
            process.stderr.close()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, timeout: float = DEFAULT_TIMEOUT) -> None:
        wait_for(lambda: text in self.log(), timeout, f"{text!r} in the broker's log")

    def __enter__(self) -> Mosquitto:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# --------------------------------------------------------------------------------------- subscriber


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: Optional[str] = None
    correlation_data: Optional[bytes] = None
    content_type: Optional[str] = None

    def json(self) -> Any:
        return json.loads(self.payload)


class Subscriber:
    """A paho client subscribed (SUBACK received) to ``topics`` once constructed."""

    def __init__(
        self,
        broker: Mosquitto,
        topics: Sequence[str],
        *,
        protocol: int = 5,
        username: Optional[str] = None,
        password: Optional[str] = None,
        client_id: Optional[str] = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._mqtt = mqtt
        self.messages: List[Received] = []
        self._arrived = threading.Condition()  # notified on every message
        self._subscribed = threading.Event()
        self._connected = threading.Event()
        cid = client_id or f"test-sub-{time.monotonic_ns()}"
        v5 = protocol == 5
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=cid,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
        )
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda *a: self._connected.set()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect(broker.host, broker.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise AssertionError(f"subscriber could not connect\n{broker.log()}")
        if topics:
            self.client.subscribe([(topic, 1) for topic in topics])
            if not self._subscribed.wait(timeout):
                self.close()
                raise AssertionError("subscriber got no SUBACK")

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        props = message.properties
        with self._arrived:
            self.messages.append(
                Received(
                    topic=message.topic,
                    payload=bytes(message.payload),
                    qos=message.qos,
                    retain=bool(message.retain),
                    response_topic=getattr(props, "ResponseTopic", None),
                    correlation_data=getattr(props, "CorrelationData", None),
                    content_type=getattr(props, "ContentType", None),
                )
            )
            self._arrived.notify_all()

    def received(self, topic: Optional[str] = None) -> List[Received]:
        with self._arrived:
            return [m for m in self.messages if topic is None or m.topic == topic]

    def wait_for(
        self, predicate: Callable[[List[Received]], bool], timeout: float = DEFAULT_TIMEOUT, what: str = ""
    ) -> List[Received]:
        """Wait until ``predicate(all messages so far)`` holds (woken by each arrival); returns them."""

        def met() -> Tuple[List[Received], ...]:
            messages = self.received()
            return (messages,) if predicate(messages) else ()  # truthy even when no message is the answer

        def seen() -> str:
            return f"{what or 'messages'}; received {[(m.topic, m.payload[:200]) for m in self.received()]}"

        return wait_for(met, timeout, seen, condition=self._arrived)[0]

    def wait_count(self, topic: str, count: int, timeout: float = DEFAULT_TIMEOUT) -> List[Received]:
        self.wait_for(lambda ms: sum(m.topic == topic for m in ms) >= count, timeout, f"{count} on {topic}")
        return self.received(topic)

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, properties: Any = None
    ) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        info.wait_for_publish(DEFAULT_TIMEOUT)

    def barrier(self, topic: str = "test/barrier", timeout: float = DEFAULT_TIMEOUT) -> None:
        """Publish a marker to ourselves and wait for it: whatever the broker sent us before it
        has arrived by then (one connection delivers in order)."""
        marker = f"barrier-{time.monotonic_ns()}".encode()
        self._subscribed.clear()
        self.client.subscribe(topic, 1)
        if not self._subscribed.wait(timeout):
            raise AssertionError("subscriber got no SUBACK for the barrier")
        self.publish(topic, marker)
        self.wait_for(lambda ms: any(m.payload == marker for m in ms), timeout, "the barrier marker")

    def close(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


# --------------------------------------------------------------------------------------- network cut


class TcpGate:
    """Forwards 127.0.0.1:``port`` to the broker. ``close()`` cuts every connection through it and
    refuses new ones (a network outage for whoever connects through it); ``open()`` restores it on
    the same port."""

    def __init__(self, upstream_port: int, upstream_host: str = "127.0.0.1") -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self._lock = threading.Lock()
        self._listener: Optional[socket.socket] = None
        self._accepting: Optional[threading.Thread] = None
        self._connections: List[Tuple[socket.socket, socket.socket]] = []
        self._flowing = threading.Event()  # cleared while frozen
        self._flowing.set()
        self.open()

    def open(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(16)
            listener.settimeout(0.1)
            self._listener = listener
        self._accepting = threading.Thread(target=self._accept, args=(listener,), daemon=True)
        self._accepting.start()

    def freeze(self) -> None:
        """Hold every byte in both directions (a network that silently stops) until ``thaw()``;
        ``close()`` then discards what was held."""
        self._flowing.clear()

    def thaw(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, []
        if listener is not None:
            listener.close()
        if self._accepting is not None:
            self._accepting.join(timeout=5)
        for pair in connections:
            for sock in pair:
                # Only shut down: the pump thread owns the sockets and closes them when it sees EOF.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
        # Frozen pumps wake up to find their sockets shut: what they held is never delivered.
        self._flowing.set()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            with self._lock:
                if self._listener is not listener:
                    return
            try:
                client, _ = listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=2)
            except OSError:
                _shutdown(client)
                continue
            with self._lock:
                if self._listener is not listener:
                    _shutdown(client)
                    _shutdown(upstream)
                    return
                self._connections.append((client, upstream))
            threading.Thread(target=_pump, args=(client, upstream, self._flowing), daemon=True).start()


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def _pump(a: socket.socket, b: socket.socket, flowing: threading.Event) -> None:
    a.settimeout(None)
    b.settimeout(None)
    peers = {a: b, b: a}
    try:
        while True:
            readable, _, _ = select.select([a, b], [], [], 0.5)
            if not flowing.is_set():
                flowing.wait()  # frozen: leave the bytes where they are until thawed or closed
                continue
            for sock in readable:
                data = sock.recv(65536)
                if not data:
                    return
                peers[sock].sendall(data)
    except (OSError, ValueError):
        return
    finally:
        _shutdown(a)
        _shutdown(b)


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mqtt_subscriber() -> Iterator[Callable[..., Subscriber]]:
    made: List[Subscriber] = []

    def make(broker: Mosquitto, topics: Sequence[str], **kwargs: Any) -> Subscriber:
        subscriber = Subscriber(broker, topics, **kwargs)
        made.append(subscriber)
        return subscriber

    yield make
    for subscriber in made:
        subscriber.close()
