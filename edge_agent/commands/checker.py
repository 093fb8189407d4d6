"""Admission of incoming commands (SPEC §5): every rule, in a fixed order, with a short and
specific reason for the first one a command breaks.

Order: a JSON object with a readable id (else the payload is too broken to answer:
``command_id`` None), text that is valid Unicode, envelope shape, signature, ``ts`` within the
allowed clock skew, ``expires`` not past, target, id not used before (remembered from then on, so
only commands that passed the signature check take room in the memory), known type, valid arguments.

A readable id (SPEC §5: such a payload gets exactly one ``rejected`` when it is not accepted): the
payload is at most MAX_PAYLOAD_BYTES of UTF-8 JSON, an object without duplicate keys, nested at most
MAX_NESTING deep, whose numbers are finite and at most MAX_NUMBER_CHARS long; its ``id`` is a string
of 1 to MAX_ID_LENGTH characters that is valid Unicode (a lone surrogate such as ``"\\ud800"``
cannot be written back in a result, so it is no id).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from ..bundle.signing import SignatureError, load_public_key
from ..config import CommandsConfig, ConfigError, DeviceConfig
from .args import ARGS_BY_TYPE, CommandArgs, parse_args
from .envelope import MAX_ID_LENGTH, Envelope, canonical_json, verify_envelope
from .replay import SeenIds

# A command is a few hundred bytes; a deploy with pre-signed URLs a few kilobytes.
MAX_PAYLOAD_BYTES = 256 * 1024
# A command nests 3 deep (args.files); json.loads recurses once per level, so a payload nested
# hundreds deep would end in RecursionError instead of a clear refusal.
MAX_NESTING = 32
# No argument needs more; Python parses a long integer in quadratic time (before 3.11's limit).
MAX_NUMBER_CHARS = 64
# A reason quotes what the command carried; a long one must not make every result as long.
MAX_REASON_CHARS = 500

# What stays of a payload once escapes and strings are gone: its brackets (see _nesting_problem).
_ESCAPE_RE = re.compile(rb"\\.", re.DOTALL)
_STRING_RE = re.compile(rb'"[^"]*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class CommandRejected(Exception):
    """``command_id`` is None when the payload is too broken to carry an id: log it and drop it;
    otherwise answer with a ``rejected`` result carrying ``reason``."""

    def __init__(self, command_id: Optional[str], reason: str, signature_verified: bool = False) -> None:
        if len(reason) > MAX_REASON_CHARS:
            reason = reason[: MAX_REASON_CHARS - 1] + "…"
        super().__init__(reason if command_id is None else f"command {command_id}: {reason}")
        self.command_id = command_id
        self.reason = reason
        # A rejection after the signature verified may go to the command's Response Topic (SPEC §4).
        self.signature_verified = signature_verified


@dataclass(frozen=True)
class Command:
    """``signature_verified``: the signature verified against a trusted key (False for an unsigned
    command a device without ``require_signature`` accepts); only then is a Response Topic honoured."""

    id: str
    type: str
    args: CommandArgs
    envelope: Envelope
    signature_verified: bool


def _reject_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    doc: Dict[str, Any] = {}
    for key, value in pairs:
        if key in doc:
            raise ValueError(f"duplicate key {key!r}")
        doc[key] = value
    return doc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _bounded_int(text: str) -> int:
    if len(text) > MAX_NUMBER_CHARS:
        raise ValueError(f"an integer of {len(text)} characters is out of range")
    return int(text)


def _finite_float(text: str) -> float:
    value = float(text)
    if len(text) > MAX_NUMBER_CHARS or not math.isfinite(value):
        raise ValueError(f"the number {text[:20]}{'…' if len(text) > 20 else ''} is out of range")
    return value


def _nesting_problem(payload: bytes, limit: int) -> Optional[str]:
    """Why the brackets of ``payload`` outside its strings do not balance or nest deeper than
    ``limit``; None when they are fine. Linear, vectorised and without recursion, so that it can
    run before json.loads on any payload: escapes go first (then no string holds a quote), then
    strings, then everything but brackets; a running sum of +1 per opening and -1 per closing
    bracket is the depth. JSON nested at most ``limit`` deep always passes; what else passes is
    not JSON, and json.loads refuses it."""
    skeleton = _STRING_RE.sub(b"", _ESCAPE_RE.sub(b"", payload)).translate(None, _NOT_BRACKETS)
    if len(skeleton) <= limit:  # every command on the wire: nothing to count
        return None
    brackets = np.frombuffer(skeleton, dtype=np.uint8)
    depth = np.cumsum(np.where((brackets == ord("[")) | (brackets == ord("{")), 1, -1))
    if depth.min() < 0 or depth[-1] != 0:
        return "its brackets do not balance"
    if depth.max() > limit:
        return f"nested deeper than {limit} levels"
    return None


def readable_id(value: Any) -> Optional[str]:
    """``value`` when it can be a command's id in a result: a string of 1 to MAX_ID_LENGTH
    characters that encodes as UTF-8 (a lone surrogate does not)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_ID_LENGTH:
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _decode(payload: Union[bytes, bytearray]) -> Dict[str, Any]:
    """The payload as a JSON object with a readable id, or CommandRejected(None, ...)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandRejected(None, f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    problem = _nesting_problem(bytes(payload), MAX_NESTING)
    if problem is not None:
        raise CommandRejected(None, f"not UTF-8 JSON: {problem}")
    try:
        doc = json.loads(
            payload.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_refuse_constant,
            parse_int=_bounded_int,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise CommandRejected(None, f"not UTF-8 JSON: {e}") from None
    except RecursionError:  # _nesting_problem makes this unreachable; a refusal all the same
        raise CommandRejected(None, f"not UTF-8 JSON: nested deeper than {MAX_NESTING} levels") from None
    if not isinstance(doc, dict):
        raise CommandRejected(None, "not a JSON object")
    if readable_id(doc.get("id")) is None:
        raise CommandRejected(
            None, f"no usable id (a string of 1 to {MAX_ID_LENGTH} characters, valid Unicode)"
        )
    return doc


def _check_unicode(command_id: str, doc: Dict[str, Any]) -> None:
    """Every string is valid Unicode: a lone surrogate (``"\\udc80"`` in the JSON) can be neither
    signed, stored, logged as UTF-8 nor quoted back in a result."""
    try:
        canonical_json(doc)
    except ValueError:  # UnicodeEncodeError; numbers are finite and nesting is bounded by now
        raise CommandRejected(
            command_id, "envelope: a string is not valid Unicode (a lone surrogate)"
        ) from None


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
        _check_unicode(command_id, doc)
        try:
            envelope = Envelope.model_validate(doc)
        except ValidationError as e:
            raise CommandRejected(command_id, _describe_envelope_error(e)) from None
        verified = self._check_signature(command_id, doc)
        try:
            return self._admit(command_id, envelope, verified)
        except CommandRejected as r:
            r.signature_verified = verified
            raise

    def _admit(self, command_id: str, envelope: Envelope, verified: bool) -> Command:
        """The rules after the signature."""
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
        return Command(
            id=command_id, type=envelope.type, args=args, envelope=envelope, signature_verified=verified
        )

    def _check_signature(self, command_id: str, doc: Dict[str, Any]) -> bool:
        """True when the signature verified; False for an unsigned command this device accepts."""
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
        if not signed or not self.trusted_keys:
            return False  # accepted unverified: this device does not require signatures
        # A signature that is present is checked even when not required: a wrong one is never
        # an accident worth obeying.
        if not verify_envelope(doc, self.trusted_keys):
            raise CommandRejected(command_id, "signature does not verify against any trusted key")
        return True

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
