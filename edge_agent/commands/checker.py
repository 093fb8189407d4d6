"""Admission of incoming commands (SPEC §5): every rule, in a fixed order, with a short and
specific reason for the first one a command breaks.

Order: a JSON object with an id (else the payload is too broken to answer: ``command_id`` None),
envelope shape, signature, ``ts`` within the allowed clock skew, ``expires`` not past, target,
id not used before (remembered from then on, so only commands that passed the signature check
take room in the memory), known type, valid arguments.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from ..bundle.signing import SignatureError, load_public_key
from ..config import CommandsConfig, ConfigError, DeviceConfig
from .args import ARGS_BY_TYPE, CommandArgs, parse_args
from .envelope import MAX_ID_LENGTH, Envelope, verify_envelope
from .replay import SeenIds

# A command is a few hundred bytes; a deploy with pre-signed URLs a few kilobytes.
MAX_PAYLOAD_BYTES = 256 * 1024


class CommandRejected(Exception):
    """``command_id`` is None when the payload is too broken to carry an id: log it and drop it;
    otherwise answer with a ``rejected`` result carrying ``reason``."""

    def __init__(self, command_id: Optional[str], reason: str) -> None:
        super().__init__(reason if command_id is None else f"command {command_id}: {reason}")
        self.command_id = command_id
        self.reason = reason


@dataclass(frozen=True)
class Command:
    id: str
    type: str
    args: CommandArgs
    envelope: Envelope


def _reject_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    doc: Dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _decode(payload: Union[bytes, bytearray]) -> Dict[str, Any]:
    """The payload as a JSON object with a usable id, or CommandRejected(None, ...)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandRejected(None, f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        doc = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise CommandRejected(None, f"not UTF-8 JSON: {e}") from None
    if not isinstance(doc, dict):
        raise CommandRejected(None, "not a JSON object")
    command_id = doc.get("id")
    if not isinstance(command_id, str) or not 0 < len(command_id) <= MAX_ID_LENGTH:
        raise CommandRejected(None, f"no usable id (a string of 1 to {MAX_ID_LENGTH} characters)")
    return doc


def _describe_envelope_error(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"])
        msg = e["msg"]
        if e["type"] == "extra_forbidden":
            msg = "unknown envelope key"
        elif e["type"] == "missing":
            msg = "missing"
        elif msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{loc}: {msg}")
    return "envelope: " + "; ".join(parts)


class CommandChecker:
    """Checks command payloads for one device. ``clock`` returns seconds since the epoch."""

    def __init__(
        self,
        config: CommandsConfig,
        device: DeviceConfig,
        seen: SeenIds,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.device = device
        self.seen = seen
        self.clock = clock
        self.trusted_keys: List[Ed25519PublicKey] = []
        for i, path in enumerate(config.trusted_keys):
            try:
                self.trusted_keys.append(load_public_key(path))
            except SignatureError as e:
                raise ConfigError(f"commands.trusted_keys[{i}]: {e}") from None

    def check(self, payload: Union[bytes, bytearray]) -> Command:
        """The command, if it passes every rule; CommandRejected with the first reason otherwise."""
        doc = _decode(payload)
        command_id: str = doc["id"]
        try:
            envelope = Envelope.model_validate(doc)
        except ValidationError as e:
            raise CommandRejected(command_id, _describe_envelope_error(e)) from None
        self._check_signature(command_id, doc)
        self._check_times(command_id, envelope)
        if envelope.target != self.device.id and envelope.target not in self.device.groups:
            raise CommandRejected(
                command_id, f"target {envelope.target!r} is neither this device nor one of its groups"
            )
        if command_id in self.seen:
            raise CommandRejected(command_id, f"id {command_id} was already used")
        self.seen.add(command_id)
        if envelope.type not in ARGS_BY_TYPE:
            known = ", ".join(ARGS_BY_TYPE)
            raise CommandRejected(command_id, f"unknown type {envelope.type!r} (known: {known})")
        try:
            args = parse_args(envelope.type, envelope.args)
        except ValueError as e:
            raise CommandRejected(command_id, str(e)) from None
        return Command(id=command_id, type=envelope.type, args=args, envelope=envelope)

    def _check_signature(self, command_id: str, doc: Dict[str, Any]) -> None:
        signed = doc.get("sig") is not None
        if self.config.require_signature:
            if not self.trusted_keys:
                raise CommandRejected(
                    command_id,
                    "commands.require_signature is on but commands.trusted_keys is empty: "
                    "no command can be accepted",
                )
            if not signed:
                raise CommandRejected(command_id, "unsigned, and this device requires signed commands")
        # A signature that is present is checked even when not required: a wrong one is never
        # an accident worth obeying.
        if signed and self.trusted_keys and not verify_envelope(doc, self.trusted_keys):
            raise CommandRejected(command_id, "signature does not verify against any trusted key")

    def _check_times(self, command_id: str, envelope: Envelope) -> None:
        now = self.clock()
        skew = envelope.ts_epoch - now
        limit = self.config.max_clock_skew_s
        if abs(skew) > limit:
            raise CommandRejected(
                command_id,
                f"ts {envelope.ts} is {abs(skew):.0f} s from the device clock (max {limit:g})",
            )
        expires = envelope.expires_epoch
        if expires is not None and expires < now:
            raise CommandRejected(command_id, f"expired at {envelope.expires} ({now - expires:.0f} s ago)")
