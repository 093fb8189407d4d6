"""A device's command side without a camera, for tests that send it commands (SPEC §4, §5).

:class:`CommandRig` is the real :class:`CommandChecker` (one trusted key, a durable id memory),
the real :class:`CommandHandler` and the real :class:`MqttLink`; only what a command sets in
motion is faked (the deployer is always busy, the pipeline and the hooks do nothing). Without a
broker the link never connects: what it would send stays in its outbox, as the exact bytes that
would go on the wire (:meth:`CommandRig.take_sent`). With one, it is a device on that broker.

:func:`expected_id` is SPEC §5's readable id, written from the SPEC apart from the checker: the
oracle of tests/fuzz_commands.py and tests/test_hostile_commands.py.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.bundle.signing import generate_keypair, load_private_key, load_public_key
from edge_agent.commands import CommandChecker, SeenIds, sign_envelope, verify_envelope
from edge_agent.commands.checker import MAX_NESTING, MAX_NUMBER_CHARS, MAX_PAYLOAD_BYTES
from edge_agent.commands.envelope import MAX_ID_LENGTH
from edge_agent.config import AgentConfig, CommandsConfig, DeviceConfig, MQTTConfig
from edge_agent.messages import utc_now_iso
from edge_agent.mqtt import MqttLink, Outbox, Topics
from edge_agent.service.commands import AgentHooks, CommandHandler
from edge_agent.service.publishing import PublishPolicy
from edge_agent.service.settings import RuntimeSettings

PREFIX = "ew"
DEVICE = "pi-fz"
GROUP = "lab"
TOPICS = Topics(PREFIX, DEVICE, (GROUP,))

_fresh_ids = itertools.count(1)


def fresh_id() -> str:
    # Drawn ids repeat a lot (hypothesis favours small examples): these never do.
    return f"fz-{next(_fresh_ids)}"


class _BusyDeployer:
    """A deploy or rollback is answered ``rejected`` (busy) at once: no download in a fuzz."""

    def try_begin(self) -> bool:
        return False


class _Switch:
    serving = None

    def revert(self, old: Any) -> None:
        pass

    def commit(self) -> None:
        pass


class _Pipeline:
    def pause(self) -> None:
        pass

    def resume(self) -> None:
        pass


class CommandRig:
    """The command side of device ``pi-fz`` (group ``lab``) under ``directory``; ``keys`` are
    (trusted, stranger) private keys. Without ``broker`` the link never connects and each message
    is handled in the caller's thread; with ``broker`` (host, port) the link connects and the
    handler runs on its own thread, as in the agent."""

    def __init__(
        self,
        directory: Path,
        require_signature: bool = True,
        broker: Optional[Tuple[str, int]] = None,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.keys = [self._keypair(name) for name in ("trusted", "stranger")]
        self.trusted_public = load_public_key(directory / "trusted.pub")
        config = CommandsConfig(require_signature=require_signature, trusted_keys=[directory / "trusted.pub"])
        self.seen = SeenIds(directory / "seen.db")
        self.checker = CommandChecker(config, DeviceConfig(id=DEVICE, groups=[GROUP]), self.seen)
        self.outbox = Outbox(directory / "outbox.db", 100_000)
        host, port = broker or ("127.0.0.1", 1)
        mqtt_config = MQTTConfig.model_validate(
            {"host": host, "port": port, "keepalive": 5, "topic_prefix": PREFIX}
        )
        on_command = self._submit if broker is not None else self._handle
        self.link = MqttLink(mqtt_config, TOPICS, self.outbox, on_command, reconnect_delay=(1, 2))
        agent_config = AgentConfig.model_validate({"device": {"id": DEVICE}})
        settings_ = RuntimeSettings(directory / "settings.json", agent_config)
        self.handler = CommandHandler(
            DEVICE,
            self.checker,
            self.link,
            _BusyDeployer(),  # type: ignore[arg-type]
            _Switch(),  # type: ignore[arg-type]
            _Pipeline(),  # type: ignore[arg-type]
            settings_,
            PublishPolicy(settings_.effective.publish_mode),
            AgentHooks(
                apply_thresholds=lambda: None,
                status=lambda: {"state": "online"},
                publish_status=lambda: None,
                event=lambda kind, body: None,
                snapshot_jpeg=lambda: b"\xff\xd8jpeg\xff\xd9",
            ),
        )
        self._cursor = 0
        if broker is not None:
            self.handler.start()
            self.link.start()

    def _keypair(self, name: str) -> Any:
        private, public = generate_keypair()
        (self.directory / f"{name}.key").write_bytes(private)
        (self.directory / f"{name}.pub").write_bytes(public)
        return load_private_key(self.directory / f"{name}.key")

    def _handle(self, incoming: Any) -> None:
        self.handler.handle(incoming)  # in the caller's thread: an exception reaches the link

    def _submit(self, incoming: Any) -> None:
        self.handler.submit(incoming)  # as the agent does: the handler's own thread

    def command(self, kind: str = "status", signer: Optional[int] = 0, **fields: Any) -> bytes:
        """A fresh command for this device, signed by ``keys[signer]`` (None: unsigned)."""
        doc: Dict[str, Any] = {
            "id": fresh_id(),
            "type": kind,
            "ts": utc_now_iso(),
            "target": DEVICE,
            "args": {},
        }
        doc.update(fields)
        return dumps_raw(doc if signer is None else signed_doc(doc, self.keys[signer]))

    def deliver(
        self, payload: bytes, response_topic: Optional[str] = None, correlation: Optional[bytes] = None
    ) -> None:
        """``payload`` as paho hands a message on P/D/cmd to the link."""
        message = mqtt.MQTTMessage(topic=TOPICS.cmd.encode())
        message.payload = payload
        message.qos = 1
        props = Properties(PacketTypes.PUBLISH)
        if response_topic is not None:
            props.ResponseTopic = response_topic
            props.CorrelationData = correlation if correlation is not None else b"corr"
        message.properties = props
        # The link's own paho callback: what it does with a message is part of the path under test.
        self.link._handle_message(self.link._client, None, message)

    def take_sent(self) -> List[Tuple[str, bytes]]:
        """What the link queued since the last call, as (topic, payload) on the wire."""
        items = self.outbox.peek(1000, after_id=self._cursor)
        if items:
            self._cursor = items[-1].id
            self.outbox.ack_many(item.id for item in items)
        return [(item.topic, item.payload) for item in items]

    def close(self) -> None:
        self.handler.stop(timeout=2)
        self.link.stop(None, timeout=1)
        self.outbox.close()
        self.seen.close()

    def __enter__(self) -> CommandRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------- JSON


@dataclass(frozen=True)
class Raw:
    """A JSON literal written into the payload as is."""

    text: str


def _placeholders(doc: Any, literals: List[str]) -> Any:
    """``doc`` with each :class:`Raw` replaced by a string naming it in ``literals``."""
    if isinstance(doc, Raw):
        literals.append(doc.text)
        return f"@@raw{len(literals) - 1}@@"
    if isinstance(doc, dict):
        return {k: _placeholders(v, literals) for k, v in doc.items()}
    if isinstance(doc, list):
        return [_placeholders(v, literals) for v in doc]
    return doc


def dumps_raw(doc: Any) -> bytes:
    """JSON with each :class:`Raw` written as its literal; lone surrogates come out as \\u escapes."""
    literals: List[str] = []
    text = json.dumps(_placeholders(doc, literals))
    for i, literal in enumerate(literals):
        text = text.replace(f'"@@raw{i}@@"', literal, 1)
    return text.encode("utf-8")


def signed_doc(doc: Dict[str, Any], key: Any) -> Dict[str, Any]:
    """``doc`` signed by ``key``; one without canonical JSON (a raw literal, a lone surrogate)
    gets a real signature of something else, which cannot verify."""
    try:
        return sign_envelope(doc, key)
    except (TypeError, ValueError):
        return {**doc, "sig": sign_envelope({"unsignable": True}, key)["sig"]}


# ----------------------------------------------------------------------------------- the oracle


def _pairs(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    if len({k for k, _ in pairs}) != len(pairs):
        raise ValueError("duplicate key")
    return dict(pairs)


def _no_constant(name: str) -> Any:
    raise ValueError(name)


def _int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(text)
    return int(text)


def _float(text: str) -> float:
    value = float(text)
    if len(text) > MAX_NUMBER_CHARS or not math.isfinite(value):
        raise ValueError(text)
    return value


def _depth(doc: Any) -> int:
    """Nesting depth without recursion: 1 for {} or []."""
    deepest, stack = 0, [(doc, 1)]
    while stack:
        value, level = stack.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is not None:
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in children)
    return deepest


def strict_document(payload: bytes) -> Optional[Dict[str, Any]]:
    """The payload as SPEC §5 JSON: UTF-8, an object without duplicate keys, finite numbers of a
    sane length, nested at most MAX_NESTING deep; None otherwise."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        doc = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_pairs,
            parse_constant=_no_constant,
            parse_int=_int,
            parse_float=_float,
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None
    if not isinstance(doc, dict) or _depth(doc) > MAX_NESTING:
        return None
    return doc


def expected_id(payload: bytes) -> Optional[str]:
    """The readable id a payload carries (SPEC §5: it gets exactly one ``rejected`` unless
    accepted): a string of 1 to MAX_ID_LENGTH characters that UTF-8 can encode."""
    doc = strict_document(payload)
    value = None if doc is None else doc.get("id")
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def signature_verifies(payload: bytes, rig: CommandRig) -> bool:
    doc = strict_document(payload)
    return doc is not None and verify_envelope(doc, [rig.trusted_public])
