"""edge-ctl's MQTT connection: connect and wait for CONNACK, subscribe and wait for SUBACK,
publish and wait for PUBACK, and hand incoming messages to the caller through a queue.

paho's network loop runs in its own thread; the caller blocks on events and the queue with
deadlines, so every wait ends with a clear error instead of hanging.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from ..errors import EdgewatchError
from ..mqtt.tls import build_tls_context, read_password

log = logging.getLogger("edge_agent.ctl")

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
CONNECT_TIMEOUT_S = 10.0
_POLL_S = 0.1


class BrokerError(EdgewatchError):
    """The broker cannot be reached, refused us, or dropped the connection."""


@dataclass(frozen=True)
class BrokerAddress:
    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """``mqtt://HOST[:PORT]`` (default port 1883) or ``mqtts://HOST[:PORT]`` (8883)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise EdgewatchError(f"--broker {url!r}: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT]")
    try:
        port = parts.port
    except ValueError as e:
        raise EdgewatchError(f"--broker {url!r}: the port is not a number from 1 to 65535") from e
    if not parts.hostname:
        raise EdgewatchError(f"--broker {url!r}: no host")
    if parts.path not in ("", "/") or parts.query or parts.username:
        raise EdgewatchError(f"--broker {url!r}: only a scheme, a host and a port are allowed")
    return BrokerAddress(scheme, parts.hostname, port or DEFAULT_PORTS[scheme])


@dataclass(frozen=True)
class ConnectOptions:
    broker: BrokerAddress
    protocol: int = 5
    ca: Optional[Path] = None
    cert: Optional[Path] = None
    key_file: Optional[Path] = None
    username: Optional[str] = None
    password_file: Optional[Path] = None


# edge-ctl's names for the files, in errors
CTL_TLS_OPTIONS = {"ca": "--ca", "cert": "--cert", "key": "--key-file"}


class Connection:
    """One MQTT session with the broker (clean start, nothing kept after it closes)."""

    def __init__(self, options: ConnectOptions) -> None:
        self.options = options
        self.url = options.broker.url
        self.protocol = options.protocol
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._connected = threading.Event()
        self._connack: Optional[ReasonCode] = None
        self._lost: Optional[str] = None
        self._lock = threading.Lock()
        self._acks: Dict[int, List[ReasonCode]] = {}
        self._ack_events: Dict[int, threading.Event] = {}
        self.client = self._make_client()

    @property
    def is_v5(self) -> bool:
        return self.protocol == 5

    def _make_client(self) -> mqtt.Client:
        opts = self.options
        if not opts.broker.tls and (opts.ca or opts.cert or opts.key_file):
            raise EdgewatchError("--ca, --cert and --key-file need an mqtts:// broker")
        if opts.key_file and not opts.cert:
            raise EdgewatchError("--key-file needs --cert (the client certificate it belongs to)")
        client_id = f"edge-ctl-{uuid.uuid4().hex[:12]}"
        if self.is_v5:
            client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311, clean_session=True
            )
        client.enable_logger(logging.getLogger("edge_agent.ctl.mqtt"))
        client.connect_timeout = CONNECT_TIMEOUT_S
        if opts.broker.tls:
            client.tls_set_context(
                build_tls_context(opts.ca, opts.cert, opts.key_file, names=CTL_TLS_OPTIONS)
            )
        if opts.username is not None or opts.password_file is not None:
            password = read_password(opts.password_file, "--password-file") if opts.password_file else None
            client.username_pw_set(opts.username or "", password)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # paho callbacks (network thread)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any) -> None:
        self._connack = rc
        self._connected.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, rc: ReasonCode, props: Any
    ) -> None:
        self._lost = f"lost the connection to {self.url}: {rc}"

    def _on_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, codes: List[ReasonCode], props: Any
    ) -> None:
        self._ack(mid, list(codes))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, rc: ReasonCode, props: Any) -> None:
        self._ack(mid, [rc])

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.messages.put(message)

    def _ack(self, mid: int, codes: List[ReasonCode]) -> None:
        with self._lock:
            self._acks[mid] = codes
            event = self._ack_events.setdefault(mid, threading.Event())
        event.set()

    # caller side

    def _wait(self, event: threading.Event, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not event.wait(_POLL_S):
            if self._lost is not None:
                raise BrokerError(self._lost)
            if time.monotonic() >= deadline:
                raise BrokerError(f"{self.url}: no {what} within {timeout:g} s")

    def _wait_ack(self, mid: int, timeout: float, what: str) -> List[ReasonCode]:
        with self._lock:
            event = self._ack_events.setdefault(mid, threading.Event())
        self._wait(event, timeout, what)
        with self._lock:
            self._ack_events.pop(mid, None)
            return self._acks.pop(mid)

    def open(self) -> None:
        broker = self.options.broker
        try:
            self.client.connect(broker.host, broker.port, keepalive=30)
        except (OSError, ValueError) as e:  # refused, unresolvable, TLS handshake, timeout
            raise BrokerError(f"cannot reach the broker {self.url}: {e}") from e
        self.client.loop_start()
        try:
            self._wait(self._connected, CONNECT_TIMEOUT_S, "CONNACK")
        except BrokerError:
            self.close()
            raise
        if self._connack is not None and self._connack.is_failure:
            self.close()
            raise BrokerError(f"the broker {self.url} refused the connection: {self._connack}")

    def subscribe(self, topics: Sequence[str], qos: int = 1, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Subscribe and wait for the SUBACK. Raises when the broker refuses every topic (a
        partial refusal, e.g. an ACL on one of two equivalent topics, is logged only)."""
        rc, mid = self.client.subscribe([(t, qos) for t in topics])
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise BrokerError(f"{self.url}: cannot subscribe: {mqtt.error_string(rc)}")
        codes = self._wait_ack(mid, timeout, "SUBACK")
        refused = [(t, c) for t, c in zip(topics, codes) if c.is_failure]
        for topic, code in refused:
            log.warning("the broker refused the subscription to %s: %s", topic, code)
        if len(refused) == len(topics):
            topic, code = refused[0]
            raise BrokerError(f"the broker {self.url} refused the subscription to {topic}: {code}")

    def publish(
        self,
        topic: str,
        payload: bytes,
        qos: int = 1,
        properties: Optional[Properties] = None,
        timeout: float = CONNECT_TIMEOUT_S,
    ) -> None:
        """Publish and, for QoS 1, wait for the PUBACK; raises when the broker refuses it."""
        info = self.client.publish(topic, payload, qos=qos, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise BrokerError(f"{self.url}: cannot publish to {topic}: {mqtt.error_string(info.rc)}")
        if qos == 0:
            return
        (code,) = self._wait_ack(info.mid, timeout, f"PUBACK for {topic}")
        if code.is_failure:
            raise BrokerError(f"the broker {self.url} refused the message to {topic}: {code}")

    def next_message(self, timeout: float) -> Optional[mqtt.MQTTMessage]:
        """The next incoming message, or None after ``timeout`` seconds; raises if the connection dropped."""
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            remaining = deadline - time.monotonic()
            try:
                return self.messages.get(timeout=max(min(remaining, _POLL_S), 0.0))
            except queue.Empty as e:
                if self._lost is not None:
                    raise BrokerError(self._lost) from e
                if remaining <= 0:
                    return None

    def close(self) -> None:
        self._lost = self._lost or "closed"
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()

    def __enter__(self) -> Connection:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
