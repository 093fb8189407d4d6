"""A device's command side without a camera, for tests that send it commands (SPEC §4, §5).

:class:`CommandRig` is the real :class:`CommandChecker` (one trusted key, a durable id memory),
the real :class:`CommandHandler` and the real :class:`MqttLink`; only what a command sets in
motion is faked (the deployer is always busy, the pipeline and the hooks do nothing). Without a
broker the link never connects: what it would send stays in its outbox, as the exact bytes that
would go on the wire (:meth:`CommandRig.take_sent`). With one, it is a device on that broker.

:func:`expected_id` is SPEC §5's readable id, written from the SPEC apart from the checker (it
imports nothing of it): the oracle of tests/fuzz_commands.py and tests/agent/test_hostile_commands.py.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_agent.bundle.signing import generate_keypair, load_private_key, load_public_key
from edge_agent.commands import CommandChecker, SeenIds, sign_envelope, verify_envelope
from edge_agent.config import AgentConfig, CommandsConfig, DeviceConfig, MQTTConfig
from edge_agent.messages import utc_now_iso
from edge_agent.mqtt import MqttLink, Outbox, Topics
from edge_agent.service.commands import CommandHandler
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

    store = None

    def try_submit(self, *_args: Any) -> bool:
        return False


class _Switch:
    serving = None

    def revert(self) -> None:
        pass

    def commit(self) -> None:
        pass


class _Control:
    """The agent side of the commands (``AgentControl``), without a pipeline or a camera."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.policy = PublishPolicy(settings.effective.publish_mode)

    def change_settings(self, changes: Dict[str, Any]) -> Dict[str, Any]:
        self.settings.update(changes)
        self.policy.configure(changes.get("publish_mode"), changes.get("max_rate_hz"))
        return self.settings.public()

    def status(self) -> Dict[str, Any]:
        return {"state": "online"}

    def publish_status(self) -> None:
        pass

    def event(self, kind: str, data: Dict[str, Any]) -> None:
        pass

    def snapshot_jpeg(self) -> Optional[bytes]:
        return b"\xff\xd8jpeg\xff\xd9"

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
            _Control(settings_),
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
#
# SPEC §5, read apart from the checker (nothing below comes from edge_agent.commands.checker): a
# payload carries a readable id when it is UTF-8, is a JSON object as Python's json reads JSON
# (NaN, Infinity, numbers of any length, duplicate keys and any depth are still JSON: what a
# command may not hold is a reason to reject it, not a reason to lose its id), and has exactly one
# top-level "id" (twice is ambiguous: no id), a string of 1 to ID_MAX_CHARS characters that UTF-8
# can encode (a lone surrogate cannot be written back in a result).

ID_MAX_CHARS = 128  # the envelope's id length (edge_agent.commands.envelope.MAX_ID_LENGTH)
PAYLOAD_MAX_BYTES = 256 * 1024  # the agent reads no bigger payload: none carries a readable id

# A string token, found the way JSON pairs escapes (json.loads then says whether it is valid),
# and a number or literal token: JSON has no valid token that runs into one of these characters.
_STRING_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BARE_TOKEN = re.compile(r"[-+.0-9A-Za-z]+")
_SPACE = " \t\n\r"


class _Container:
    """The value of a top-level member that is an object or an array (its content is not kept)."""


@dataclass(frozen=True)
class _Number:
    """A JSON number, as written: only whether it is JSON matters here, not its value."""

    text: str


def _token(text: str, i: int) -> Optional[Tuple[Any, int]]:
    """The string, number or literal at ``text[i]`` and where it ends; None when it is not JSON.
    A number is a :class:`_Number`."""
    match = (_STRING_TOKEN if text[i] == '"' else _BARE_TOKEN).match(text, i)
    if match is None:
        return None
    try:
        return json.loads(match.group(), parse_int=_Number, parse_float=_Number), match.end()
    except ValueError:
        return None


def object_members(text: str) -> Optional[List[Tuple[str, Any]]]:
    """The top-level (key, value) pairs of the JSON object ``text``, in order and duplicates
    included, a nested object or array standing as a :class:`_Container`; None when ``text`` is
    not a JSON object. One pass over the characters with a stack of the open brackets, so that
    no depth is too deep."""
    n = len(text)
    members: List[Tuple[str, Any]] = []
    stack: List[str] = []  # "{" or "[" for each open container
    key = ""  # the top-level key whose value comes next
    expect = "value"  # "value", "key", "colon" or "next" (a comma, a closing bracket or the end)
    i = 0
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if expect == "next" and not stack:
            return members if i == n else None
        if i == n:
            return None
        c = text[i]
        if expect == "value":
            if not stack and c != "{":
                return None
            if c in "{[":
                if len(stack) == 1:
                    members.append((key, _Container()))
                stack.append(c)
                i += 1
                while i < n and text[i] in _SPACE:
                    i += 1
                if i < n and text[i] == ("}" if c == "{" else "]"):  # empty
                    stack.pop()
                    i += 1
                    expect = "next"
                else:
                    expect = "key" if c == "{" else "value"
                continue
            token = _token(text, i)
            if token is None:
                return None
            if len(stack) == 1:
                members.append((key, token[0]))
            i = token[1]
            expect = "next"
        elif expect == "key":
            token = _token(text, i) if c == '"' else None
            if token is None:
                return None
            key, i = token
            expect = "colon"
        elif expect == "colon":
            if c != ":":
                return None
            i += 1
            expect = "value"
        else:  # "next", inside a container
            if c == ",":
                expect = "key" if stack[-1] == "{" else "value"
            elif c == ("}" if stack[-1] == "{" else "]"):
                stack.pop()
            else:
                return None
            i += 1


def _permissive_members(text: str) -> Optional[List[Tuple[str, Any]]]:
    """The same as :func:`object_members` by json.loads itself (keeping every pair); raises
    RecursionError when ``text`` is too deep for it."""
    top: List[List[Tuple[str, Any]]] = []

    def keep(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        top.append(pairs)  # the top-level object is the last one to close
        return dict(pairs)

    try:
        doc = json.loads(text, object_pairs_hook=keep, parse_int=_Number, parse_float=_Number)
    except ValueError:
        return None
    return top[-1] if isinstance(doc, dict) else None


def expected_id(payload: bytes) -> Optional[str]:
    """The readable id a payload carries (SPEC §5: it gets exactly one ``rejected`` unless
    accepted); None when it carries none."""
    if len(payload) > PAYLOAD_MAX_BYTES:
        return None
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        return None
    members = object_members(text)
    try:  # the scan above agrees with json.loads wherever json.loads can read the payload
        permissive = _permissive_members(text)
    except RecursionError:
        pass
    else:
        assert (members is None) == (permissive is None), (payload[:300], members, permissive)
        if members is not None and permissive is not None:
            strings = [[(k, v) for k, v in found if isinstance(v, str)] for found in (members, permissive)]
            assert strings[0] == strings[1], payload[:300]
    ids = [value for key, value in members or () if key == "id"]
    if len(ids) != 1:
        return None
    value = ids[0]
    if not isinstance(value, str) or not 0 < len(value) <= ID_MAX_CHARS:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def signature_verifies(payload: bytes, rig: CommandRig) -> bool:
    """Whether ``payload``'s signature verifies against the rig's trusted key: a JSON object
    without a duplicate key (else what was signed is ambiguous) whose canonical JSON it signs."""

    def unique(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        if len({k for k, _ in pairs}) != len(pairs):
            raise ValueError("duplicate key")
        return dict(pairs)

    try:
        doc = json.loads(payload.decode("utf-8"), object_pairs_hook=unique)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return False
    return isinstance(doc, dict) and verify_envelope(doc, [rig.trusted_public])
