"""The agent's MQTT connection (SPEC §4): one paho-mqtt 2 client that stays connected for the
life of the agent, takes commands and delivers what the agent publishes.

Delivery is write-ahead: detections, events and command results go to the :class:`Outbox` on
disk first; a sender thread hands them to paho oldest first, keeps a bounded window of them in
flight, and deletes each from disk only when paho reports it delivered (PUBACK for QoS 1, PUBCOMP
for QoS 2, written to the socket for QoS 0). What is in flight when the connection drops is sent
again after reconnecting (paho keeps QoS 1/2 messages and re-sends them with DUP; QoS 0 ones it
drops are put back in line here); what is on disk when the process dies is sent by the next
one. That is at-least-once delivery: a consumer sees duplicates by their ``seq``.

The status is not queued: only the latest one matters. It is kept in memory, published retained
and re-published on every connect; the broker's Last Will replaces it with "offline" when the
connection dies without a DISCONNECT.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from ..config import ConfigError, MQTTConfig
from ..messages import utc_now_iso
from .outbox import OpenCommand, Outbox, OutboxError, OutboxItem
from .tls import read_password, tls_context
from .topics import Topics

log = logging.getLogger(__name__)

# How long the broker keeps the agent's session (subscriptions, queued commands) after it drops.
SESSION_EXPIRY_S = 24 * 3600
# Queued messages handed to paho at once; the broker's Receive Maximum lowers it (MQTT 5).
DEFAULT_MAX_IN_FLIGHT = 100
DETECTIONS_COUNTER = "detections"
JSON_CONTENT_TYPE = "application/json"
JPEG_CONTENT_TYPE = "image/jpeg"
# How often the sender looks at its state without being woken (a safety net, not the mechanism).
_IDLE_POLL_S = 1.0


@dataclass(frozen=True)
class IncomingCommand:
    """A message on one of the command topics, with its MQTT 5 request/response properties."""

    topic: str
    payload: bytes
    response_topic: Optional[str]
    correlation_data: Optional[bytes]
    # The delivery, for ``MqttLink.ack`` once the command is recorded (not part of its identity).
    mid: int = field(default=0, compare=False)
    qos: int = field(default=0, compare=False)
    redelivered: bool = field(default=False, compare=False)  # MQTT DUP: sent before, not acknowledged


@dataclass(frozen=True)
class LinkStats:
    sent: int  # queued messages handed to paho (re-sends after a reconnect count again)
    acked: int  # queued messages confirmed delivered and removed from the outbox
    queued: int  # messages in the outbox now
    dropped: int  # messages the outbox dropped to make room, for the life of its file
    reconnects: int  # successful connections after the first
    connected: bool


@dataclass
class _InFlight:
    mid: int
    qos: int
    info: mqtt.MQTTMessageInfo


class _DemoteShutdownNoise(logging.Filter):
    """paho 2 logs an ERROR from its loop after every clean disconnect ("Client is not
    connected"); that is the normal end of a connection, not an error."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and str(record.msg).startswith("Client is not connected"):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            # The level check happened before this filter: apply it again for the new level.
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def encode_json(obj: Dict[str, Any]) -> bytes:
    """The wire form of every JSON payload: compact UTF-8."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _with_ts(obj: Dict[str, Any]) -> Dict[str, Any]:
    return obj if "ts" in obj else {**obj, "ts": utc_now_iso()}


class MqttLink:
    """The connection to the broker; see the module's docstring for what it guarantees."""

    def __init__(
        self,
        config: MQTTConfig,
        topics: Topics,
        outbox: Outbox,
        on_command: Callable[[IncomingCommand], None],
        offline_status: Optional[Dict[str, Any]] = None,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        reconnect_delay: Tuple[int, int] = (1, 60),
    ) -> None:
        if not config.host:
            raise ConfigError("mqtt.host: empty")
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, not {max_in_flight}")
        self.config = config
        self.topics = topics
        self.outbox = outbox
        self._on_command = on_command
        self._v5 = config.protocol == 5
        self._max_in_flight = max_in_flight
        self.client_id = config.client_id or f"edge-agent-{topics.device}"
        self._offline_payload = encode_json(_with_ts(offline_status or {"state": "offline"}))

        self._cv = threading.Condition()
        # Guarded by _cv: shared between the caller's threads, paho's thread and the sender.
        self._connected = False
        self._generation = 0  # successful connections so far
        self._subscribed_generation = 0  # the connection whose command subscriptions were acknowledged
        self._subscribe_mid: Optional[int] = None
        self._window = max_in_flight
        self._acked_mids: List[int] = []
        self._status_payload: Optional[bytes] = None
        self._status_due = False
        self._wake = True
        self._started = False
        self._stopping = False
        self._stopped = False
        self._sent = 0
        self._acked = 0
        self._failed_attempts = 0  # connection attempts failed since the last success (paho's thread)
        # Owned by the sender thread (and by stop() once the sender has ended).
        self._in_flight: Dict[int, _InFlight] = {}  # outbox item id -> its publish
        self._mid_to_item: Dict[int, int] = {}
        self._cursor = 0  # every item up to this id is in flight or gone

        self._client = self._make_client(reconnect_delay)
        self._sender = threading.Thread(target=self._run_sender, name="mqtt-sender", daemon=True)

    # ----------------------------------------------------------------------------- set-up

    def _make_client(self, reconnect_delay: Tuple[int, int]) -> mqtt.Client:
        config = self.config
        if self._v5:
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv5,
            )
        else:
            # A persistent session: the broker keeps the subscriptions and queues commands while away.
            client = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                clean_session=False,
                protocol=mqtt.MQTTv311,
            )
        # A command is acknowledged to the broker only once the handler has recorded it (``ack``):
        # one that arrives just before a crash is delivered again after the restart, not lost.
        client.manual_ack_set(True)
        paho_log = logging.getLogger(f"{__name__}.paho")
        if not any(isinstance(f, _DemoteShutdownNoise) for f in paho_log.filters):
            paho_log.addFilter(_DemoteShutdownNoise())
        client.enable_logger(paho_log)
        # An exception escaping a callback would otherwise end paho's network thread for good.
        client.suppress_exceptions = True
        client.reconnect_delay_set(*reconnect_delay)
        client.max_inflight_messages_set(self._max_in_flight)
        if config.password_file is not None:
            if config.username is None:
                raise ConfigError("mqtt.password_file: a password needs mqtt.username")
            client.username_pw_set(config.username, read_password(config.password_file))
        elif config.username is not None:
            client.username_pw_set(config.username)
        context = tls_context(config)
        if context is not None:
            client.tls_set_context(context)
        client.will_set(
            self.topics.status, self._offline_payload, qos=1, retain=True, properties=self._properties(True)
        )
        client.on_connect = self._handle_connect
        client.on_connect_fail = self._handle_connect_fail
        client.on_disconnect = self._handle_disconnect
        client.on_subscribe = self._handle_subscribe
        client.on_message = self._handle_message
        client.on_publish = self._handle_publish
        return client

    def _properties(
        self, will: bool = False, json_payload: bool = True, correlation_data: Optional[bytes] = None
    ) -> Optional[Properties]:
        if not self._v5:
            return None
        props = Properties(PacketTypes.WILLMESSAGE if will else PacketTypes.PUBLISH)
        props.PayloadFormatIndicator = 1 if json_payload else 0
        props.ContentType = JSON_CONTENT_TYPE if json_payload else JPEG_CONTENT_TYPE
        if correlation_data is not None:
            props.CorrelationData = correlation_data
        return props

    # ----------------------------------------------------------------------------- life cycle

    def start(self) -> None:
        """Connect in the background; retries with exponential backoff for as long as it runs."""
        with self._cv:
            if self._started or self._stopped:
                return
            self._started = True
        properties = None
        if self._v5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY_S
        self._client.connect_async(
            self.config.host,
            self.config.port,
            keepalive=self.config.keepalive,
            clean_start=False if self._v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
            properties=properties,
        )
        self._client.loop_start()
        self._sender.start()
        log.info("MQTT: connecting to %s:%d as %s", self.config.host, self.config.port, self.client_id)

    @property
    def connected(self) -> bool:
        with self._cv:
            return self._connected

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected with the command subscriptions acknowledged; True if so."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while not (self._connected and self._subscribed_generation == self._generation):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(remaining)
            return True

    @property
    def stats(self) -> LinkStats:
        with self._cv:
            return LinkStats(
                sent=self._sent,
                acked=self._acked,
                queued=len(self.outbox),
                dropped=self.outbox.dropped,
                reconnects=max(0, self._generation - 1),
                connected=self._connected,
            )

    def flush(self, timeout: float) -> bool:
        """Wait until the outbox is empty, every message delivered; True if it emptied in time."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.outbox) > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cv.wait(min(remaining, 0.25))
        return True

    def stop(self, final_status: Optional[Dict[str, Any]], timeout: float = 5.0) -> None:
        """Deliver what is queued (within ``timeout``), publish ``final_status`` retained, and
        disconnect cleanly so that the broker does not publish the Last Will. What could not be
        delivered stays in the outbox for the next start. Idempotent."""
        with self._cv:
            if self._stopped:
                return
            self._stopped = True
            started = self._started
        if not started:
            return
        deadline = time.monotonic() + timeout
        if self.connected:
            self.flush(max(0.0, deadline - time.monotonic()))
        with self._cv:
            self._stopping = True
            self._cv.notify_all()
        self._sender.join(timeout=max(1.0, deadline - time.monotonic()))
        if final_status is not None and self.connected:
            info = self._client.publish(
                self.topics.status,
                encode_json(_with_ts(final_status)),
                qos=1,
                retain=True,
                properties=self._properties(),
            )
            try:
                info.wait_for_publish(max(0.1, deadline - time.monotonic()))
            except (RuntimeError, ValueError) as e:
                log.warning("MQTT: the final status was not delivered: %s", e)
        self._client.disconnect()
        self._client.loop_stop()
        # Deliveries confirmed after the sender ended are still worth recording.
        if not self._sender.is_alive():
            with self._cv:
                mids, self._acked_mids = self._acked_mids, []
            try:
                self._settle(mids)
            except Exception:  # e.g. the outbox closed already: those messages will be sent again
                log.exception("MQTT: could not record the last deliveries")
        log.info("MQTT: stopped; %d message(s) left in the outbox", len(self.outbox))

    # ----------------------------------------------------------------------------- publishing

    def publish_status(self, status: Dict[str, Any]) -> None:
        """Retained, QoS 1, latest wins; re-published on every connect. Never queued on disk."""
        payload = encode_json(_with_ts(status))
        with self._cv:
            self._status_payload = payload
            self._status_due = True
            self._wake = True
            self._cv.notify_all()

    def publish_detection(self, make_payload: Callable[[int], bytes]) -> int:
        """Queue a detection message built by ``make_payload(seq)``; returns its ``seq``."""
        seq = self.outbox.put(
            self.topics.detections, make_payload, self.config.qos, counter=DETECTIONS_COUNTER
        )
        assert seq is not None
        self._notify()
        return seq

    def publish_event(self, event: Dict[str, Any]) -> None:
        self.outbox.put(self.topics.events, encode_json(_with_ts(event)), qos=1)
        self._notify()

    def publish_result(
        self,
        result: Dict[str, Any],
        reply_to: Optional[IncomingCommand] = None,
        opens: Optional[OpenCommand] = None,
    ) -> None:
        """A command result on P/D/cmd/result. ``reply_to``: a command whose signature verified
        (only the caller knows; pass None for any other, since anyone can set a Response Topic);
        the result then also goes to its MQTT 5 Response Topic, with its Correlation Data, when
        that lies under P/D/cmd/result/ (SPEC §4). Any other Response Topic is ignored: a command
        must not make the device publish where it likes (its status, another device's commands)."""
        payload = encode_json(_with_ts(result))
        # An accepted command is journaled with its "accepted", and forgotten with its final
        # result, in the same transaction (SPEC §5: each ends exactly once, across crashes too).
        closes = result["id"] if result.get("status") in ("succeeded", "failed") else None
        self.outbox.put(self.topics.cmd_result, payload, qos=1, opens=opens, closes=closes)
        if reply_to is not None and reply_to.response_topic is not None:
            topic = reply_to.response_topic
            if self.topics.is_reply_topic(topic):
                self.outbox.put(topic, payload, qos=1, correlation_data=reply_to.correlation_data)
            else:
                log.debug(
                    "MQTT: ignoring the response topic %r (not under %s)", topic, self.topics.cmd_reply_prefix
                )
        self._notify()

    def publish_snapshot(self, jpeg: bytes) -> None:
        """QoS 0 and not queued: a snapshot is only worth its moment, so it is dropped offline."""
        if not self.connected:
            log.debug("MQTT: offline, snapshot dropped")
            return
        self._client.publish(
            self.topics.snapshot, jpeg, qos=0, properties=self._properties(json_payload=False)
        )

    def _notify(self) -> None:
        with self._cv:
            self._wake = True
            self._cv.notify_all()

    # ----------------------------------------------------------------------------- sender thread

    def _run_sender(self) -> None:
        while True:
            with self._cv:
                while not (self._wake or self._stopping):
                    self._cv.wait(_IDLE_POLL_S)
                    if self._connected:
                        break  # a periodic look, e.g. for QoS 0 messages a reconnect dropped
                if self._stopping:
                    return
                self._wake = False
                mids, self._acked_mids = self._acked_mids, []
                connected = self._connected
                window = self._window
                status = self._status_payload if connected and self._status_due else None
                if status is not None:
                    self._status_due = False
            try:
                self._settle(mids)
                if connected:
                    if status is not None:
                        self._client.publish(
                            self.topics.status, status, qos=1, retain=True, properties=self._properties()
                        )
                    self._send(window)
            except Exception as e:
                # The outbox (a full disk) or paho failed; keep the link alive and retry. What the
                # environment does is one line; anything else is a bug, with its traceback.
                if isinstance(e, OutboxError):
                    log.error("MQTT: the sender failed (%s); retrying", e)
                else:
                    log.exception("MQTT: the sender failed; retrying")
                with self._cv:
                    self._acked_mids[:0] = mids  # settling again is harmless
                    self._cv.wait(_IDLE_POLL_S)
                    self._wake = True

    def _settle(self, mids: List[int]) -> None:
        """Remove what the broker confirmed from the outbox."""
        # None: a status publish, not an outbox item.
        done = [item_id for item_id in (self._mid_to_item.get(mid) for mid in mids) if item_id is not None]
        if done:
            self.outbox.ack_many(done)  # first: if it fails, the mids are settled again later
        for mid in mids:
            item_id = self._mid_to_item.pop(mid, None)
            if item_id is not None:
                self._in_flight.pop(item_id, None)
        if done:
            with self._cv:
                self._acked += len(done)
                self._cv.notify_all()  # flush() waits on this

    def _send(self, window: int) -> None:
        """Hand paho the oldest items not yet in flight, up to the window."""
        self._requeue_lost()
        room = window - len(self._in_flight)
        if room <= 0:
            return
        # In-flight items may lie after the cursor (after a requeue): read far enough to skip them.
        for item in self.outbox.peek(room + len(self._in_flight), after_id=self._cursor):
            if room <= 0:
                break
            if item.id in self._in_flight:
                continue
            info = self._publish_item(item)
            if info is None:
                continue
            taken = info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                # Not connected after all: paho keeps QoS 1/2 messages and sends them on reconnect.
                item.qos > 0 and info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN
            )
            if not taken:
                break  # try again from this item on the next round
            self._in_flight[item.id] = _InFlight(info.mid, item.qos, info)
            self._mid_to_item[info.mid] = item.id
            self._cursor = max(self._cursor, item.id)
            room -= 1
            with self._cv:
                self._sent += 1

    def _publish_item(self, item: OutboxItem) -> Optional[mqtt.MQTTMessageInfo]:
        try:
            return self._client.publish(
                item.topic,
                item.payload,
                qos=item.qos,
                retain=item.retain,
                properties=self._properties(correlation_data=item.correlation_data),
            )
        except ValueError as e:
            # A message paho refuses (a bad topic) would block the queue for ever: drop it.
            log.error("MQTT: dropping an unsendable message to %r: %s", item.topic, e)
            self.outbox.ack(item.id)
            self._cursor = max(self._cursor, item.id)
            return None

    def _requeue_lost(self) -> None:
        """paho forgets QoS 0 messages still unwritten when the connection drops (marking them
        CONN_LOST); put them back in line to be sent again."""
        lost = [
            item_id
            for item_id, flight in self._in_flight.items()
            if flight.qos == 0 and flight.info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS
        ]
        for item_id in lost:
            flight = self._in_flight.pop(item_id)
            self._mid_to_item.pop(flight.mid, None)
        if lost:
            self._cursor = min(self._cursor, min(lost) - 1)

    # ----------------------------------------------------------------------------- paho's thread

    def _handle_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Optional[Properties],
    ) -> None:
        if reason_code.is_failure:
            log.error(
                "MQTT: %s:%d refused the connection: %s", self.config.host, self.config.port, reason_code
            )
            return
        receive_maximum = getattr(properties, "ReceiveMaximum", None) if self._v5 else None
        if receive_maximum:
            # Past the broker's Receive Maximum it would disconnect us; keep a slot for the status.
            window = max(1, min(self._max_in_flight, receive_maximum - 1))
        else:
            window = self._max_in_flight
        topics = self.topics.command_topics()
        if self._v5:
            # Commands are events, not state: a retained one must not be replayed on every subscribe.
            options = SubscribeOptions(qos=1, retainHandling=SubscribeOptions.RETAIN_DO_NOT_SEND)
            result, mid = client.subscribe([(topic, options) for topic in topics])
        else:
            result, mid = client.subscribe([(topic, 1) for topic in topics])
        with self._cv:
            self._connected = True
            self._generation += 1
            self._subscribe_mid = mid
            self._window = window
            self._status_due = self._status_payload is not None
            self._wake = True
            self._cv.notify_all()
            generation = self._generation
        log.info(
            "MQTT: connected to %s:%d (%s after %d failed attempt(s), session present: %s)",
            self.config.host,
            self.config.port,
            "reconnected" if generation > 1 else "first connection",
            self._failed_attempts,
            flags.session_present,
        )
        self._failed_attempts = 0
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("MQTT: subscribing to %s failed: %s", topics, mqtt.error_string(result))

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # Warn once per outage; the retries (every minute at most) are only worth a debug line.
        self._failed_attempts += 1
        log.log(
            logging.WARNING if self._failed_attempts == 1 else logging.DEBUG,
            "MQTT: cannot connect to %s:%d (attempt %d); retrying with backoff",
            self.config.host,
            self.config.port,
            self._failed_attempts,
        )

    def _handle_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Optional[Properties],
    ) -> None:
        with self._cv:
            was_connected = self._connected
            self._connected = False
            self._wake = True
            self._cv.notify_all()
            stopping = self._stopped
        if stopping:
            log.debug("MQTT: disconnected (%s)", reason_code)
        elif was_connected:
            log.warning("MQTT: connection lost (%s); reconnecting", reason_code)

    def _handle_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: List[ReasonCode],
        properties: Optional[Properties],
    ) -> None:
        refused = [str(code) for code in reason_codes if code.is_failure]
        if refused:
            log.error("MQTT: the broker refused command subscriptions: %s", ", ".join(refused))
        with self._cv:
            if mid == self._subscribe_mid:
                self._subscribed_generation = self._generation
                self._cv.notify_all()

    def _handle_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Optional[Properties],
    ) -> None:
        if reason_code.is_failure:
            # Sending it again would get the same answer (e.g. not authorised): count it as done.
            log.error("MQTT: the broker refused a message (mid %d): %s", mid, reason_code)
        with self._cv:
            self._acked_mids.append(mid)
            self._wake = True
            self._cv.notify_all()

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        handed_over = False
        try:
            if message.retain:
                # Only a retained message replayed on subscribe carries the flag (MQTT 3.1.1).
                log.warning("MQTT: ignoring a retained command on %s", message.topic)
                return
            props = message.properties
            response_topic = getattr(props, "ResponseTopic", None) if props is not None else None
            correlation_data = getattr(props, "CorrelationData", None) if props is not None else None
            command = IncomingCommand(
                topic=message.topic,
                payload=bytes(message.payload),
                response_topic=response_topic,
                correlation_data=None if correlation_data is None else bytes(correlation_data),
                mid=message.mid,
                qos=message.qos,
                redelivered=bool(message.dup),
            )
            self._on_command(command)
            handed_over = True
        except Exception:
            log.exception("MQTT: handling a message failed")
        finally:
            if not handed_over:  # nobody else will acknowledge it
                client.ack(message.mid, message.qos)

    def ack(self, command: IncomingCommand) -> None:
        """Acknowledge a command to the broker once it is recorded (answered, or journaled as
        accepted): until then a crash leaves it with the broker, which delivers it again."""
        if command.qos > 0:
            self._client.ack(command.mid, command.qos)
