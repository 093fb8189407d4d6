"""Admission of incoming commands (SPEC §5): every rule, in a fixed order, with a short and
specific reason for the first one a command breaks.

Order: a JSON object with a readable id (else the payload is too broken to answer:
``command_id`` None), JSON a command may hold, text that is valid Unicode, envelope shape,
signature, ``ts`` within the allowed clock skew, ``expires`` not past, target, id not used before
(remembered from then on, so only commands that passed the signature check take room in the
memory), known type, valid arguments.

A readable id (SPEC §5: such a payload gets exactly one ``rejected`` when it is not accepted): the
payload is at most MAX_PAYLOAD_BYTES of UTF-8 JSON (as Python's json reads it: NaN, Infinity,
numbers of any length and duplicate keys are still JSON here), a JSON object whose top-level ``id``
is a string of 1 to MAX_ID_LENGTH characters that encodes as UTF-8 (a lone surrogate such as
``"\\ud800"`` cannot be written back in a result, so it is no id). An object with ``id`` twice at
the top has no readable id: which one a sender meant is anyone's guess.

JSON a command may hold, else one ``rejected`` naming the first problem: nested at most
MAX_NESTING deep, no duplicate keys, numbers finite and at most MAX_NUMBER_CHARS long. A payload
nested deeper is never given to json.loads (it recurses once per level, and 256 KiB of ``[`` is
about 260,000 levels): :func:`_deep_object_id` reads its id with a scan that does not recurse.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

from ..bundle.signing import SignatureError, load_public_keys
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
_DEPTH_STEP = [0] * 256
_DEPTH_STEP[ord("[")] = _DEPTH_STEP[ord("{")] = 1
_DEPTH_STEP[ord("]")] = _DEPTH_STEP[ord("}")] = -1

# One JSON token after optional whitespace, exactly as Python's json reads them (strict strings:
# no raw control characters; ASCII digits; NaN and the infinities): a punctuation mark (group 1),
# a string (group 2) or a number or literal (group 3).
_TOKEN_RE = re.compile(
    r'[ \t\n\r]*(?:([\[\]{}:,])|("(?:[^"\\\x00-\x1f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*")'
    r"|(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?|true|false|null|NaN|-?Infinity))"
)
_TRAILING_SPACE_RE = re.compile(r"[ \t\n\r]*\Z")


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


class _Bad:
    """What json.loads read where a command may not hold it (a number out of range, NaN): it
    stands in for the value, so that the payload still parses and its id can be answered."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem


class _Duplicated(Dict[str, Any]):
    """An object with a key more than once (the last value kept); ``duplicates`` in order."""

    duplicates: List[str]


class _Reader:
    """json.loads hooks that stand :class:`_Bad` in for what a command may not hold instead of
    raising, and note that they did (``bad``)."""

    def __init__(self) -> None:
        self.bad = False

    def _problem(self, problem: str) -> _Bad:
        self.bad = True
        return _Bad(problem)

    def object(self, pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
        doc = dict(pairs)
        if len(doc) == len(pairs):
            return doc
        self.bad = True
        duplicated = _Duplicated(doc)
        seen: Dict[str, int] = {}
        for key, _ in pairs:
            seen[key] = seen.get(key, 0) + 1
        duplicated.duplicates = [key for key, count in seen.items() if count > 1]
        return duplicated

    def constant(self, name: str) -> Any:
        return self._problem(f"{name} is not JSON")

    def integer(self, text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            return self._problem(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        return int(text)

    def real(self, text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            return self._problem(f"a number of {len(text)} characters (at most {MAX_NUMBER_CHARS})")
        value = float(text)
        return value if math.isfinite(value) else self._problem(f"{text} is not a finite number")


def _member(path: str, key: str) -> str:
    """The path of ``key`` in the object at ``path``, quoted when it is not a plain name (a quote
    escapes what UTF-8 cannot carry, a lone surrogate, and what could break a log line)."""
    if key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _first_problem(doc: Dict[str, Any]) -> Optional[str]:
    """Where and what the first thing in ``doc`` a command may not hold is (depth first, in the
    order of the payload); None when there is none. Without recursion."""
    stack: List[Tuple[str, Any]] = [("", doc)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, _Bad):
            return f"{path}: {value.problem}" if path else value.problem
        if isinstance(value, _Duplicated):
            return f"{path or 'envelope'}: duplicate key {value.duplicates[0]!r}"
        if isinstance(value, dict):
            stack.extend((_member(path, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", value[i]) for i in reversed(range(len(value))))
    return None


def _nesting_problem(payload: bytes, limit: int) -> Optional[str]:
    """Why the brackets of ``payload`` outside its strings do not balance or nest deeper than
    ``limit``; None when they are fine. Linear and without recursion, so that it can run before
    json.loads on any payload: escapes go first (then no string holds a quote), then strings,
    then everything but brackets; a running sum of +1 per opening and -1 per closing bracket is
    the depth. JSON nested at most ``limit`` deep always passes, and JSON nested deeper is
    always found deeper; what else passes is not JSON, and json.loads refuses it."""
    skeleton = _STRING_RE.sub(b"", _ESCAPE_RE.sub(b"", payload)).translate(None, _NOT_BRACKETS)
    if len(skeleton) <= limit:  # every command on the wire: nothing to count
        return None
    depths = list(itertools.accumulate(map(_DEPTH_STEP.__getitem__, skeleton)))
    if min(depths) < 0 or depths[-1] != 0:
        return "its brackets do not balance"
    if max(depths) > limit:
        return f"nested deeper than {limit} levels"
    return None


def _deep_object_id(text: str) -> Any:
    """The value of the top-level ``id`` of the JSON object ``text``, read without recursion at
    any depth (None when it has none); CommandRejected(None, ...) when ``text`` is not a JSON
    object or has ``id`` twice at the top. A pushdown automaton over the tokens of
    :data:`_TOKEN_RE`: ``stack`` holds the open brackets; ``want`` is what may come next."""
    stack: List[str] = []
    want = "value"  # "value", "value or ]", "key", "key or }", ":", "after value"
    is_id = False  # the value coming belongs to the top-level key "id"
    ids: List[Any] = []
    pos = 0
    while True:
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            break
        pos = match.end()
        mark, string, scalar = match.groups()
        if want == "after value":
            if mark == "," and stack:
                want = "key" if stack[-1] == "{" else "value"
            elif mark is not None and stack and mark == ("}" if stack[-1] == "{" else "]"):
                stack.pop()
            else:
                break
            if not stack:
                want = "end"
        elif want in ("key", "key or }"):
            if string is not None:
                is_id = len(stack) == 1 and json.loads(string) == "id"
                want = ":"
            elif mark == "}" and want == "key or }":
                stack.pop()
                want = "after value" if stack else "end"
            else:
                break
        elif want == ":":
            if mark != ":":
                break
            want = "value"
        elif want in ("value", "value or ]"):
            if is_id and (mark in ("{", "[") or scalar is not None):
                ids.append(None)  # an id, but not a string
            elif is_id and string is not None:
                ids.append(json.loads(string))
            if mark in ("{", "["):
                if not stack and mark == "[":
                    raise CommandRejected(None, "not a JSON object")
                stack.append(mark)
                want = "key or }" if mark == "{" else "value or ]"
            elif mark == "]" and want == "value or ]":
                stack.pop()
                want = "after value" if stack else "end"
            elif string is not None or scalar is not None:
                if not stack:
                    raise CommandRejected(None, "not a JSON object")
                want = "after value"
            else:
                break
            is_id = False
        else:  # "end": only whitespace may follow the object
            break
        if want == "end" and not stack:
            if _TRAILING_SPACE_RE.match(text, pos) is None:
                break
            if len(ids) > 1:
                raise CommandRejected(None, "no usable id: duplicate key 'id'")
            return ids[0] if ids else None
    raise CommandRejected(None, f"not UTF-8 JSON: no JSON at character {pos}")


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


def _no_usable_id() -> CommandRejected:
    return CommandRejected(None, f"no usable id (a string of 1 to {MAX_ID_LENGTH} characters, valid Unicode)")


def _decode(payload: Union[bytes, bytearray]) -> Dict[str, Any]:
    """The payload as a JSON object with a readable id that a command may hold. Else
    CommandRejected(None, ...) when it has no readable id, or CommandRejected(id, ...) naming
    the first thing in it a command may not hold."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise CommandRejected(None, f"payload of {len(payload)} bytes is over {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CommandRejected(None, f"not UTF-8 JSON: {e}") from e
    problem = _nesting_problem(bytes(payload), MAX_NESTING)
    if problem is not None:
        if problem.startswith("nested"):
            command_id = readable_id(_deep_object_id(text))  # a JSON object, or it raises
            if command_id is None:
                raise _no_usable_id()
            raise CommandRejected(command_id, problem)
        raise CommandRejected(None, f"not UTF-8 JSON: {problem}")
    reader = _Reader()
    try:
        doc = json.loads(
            text,
            object_pairs_hook=reader.object,
            parse_constant=reader.constant,
            parse_int=reader.integer,
            parse_float=reader.real,
        )
    except ValueError as e:
        raise CommandRejected(None, f"not UTF-8 JSON: {e}") from e
    except RecursionError as e:  # _nesting_problem makes this unreachable; a refusal all the same
        raise CommandRejected(None, f"not UTF-8 JSON: nested deeper than {MAX_NESTING} levels") from e
    if not isinstance(doc, dict):
        raise CommandRejected(None, "not a JSON object")
    if isinstance(doc, _Duplicated) and "id" in doc.duplicates:
        raise CommandRejected(None, "no usable id: duplicate key 'id'")
    command_id = readable_id(doc.get("id"))
    if command_id is None:
        raise _no_usable_id()
    if reader.bad:
        raise CommandRejected(command_id, _first_problem(doc) or "not JSON a command may hold")
    return doc


def _check_unicode(command_id: str, doc: Dict[str, Any]) -> None:
    """Every string is valid Unicode: a lone surrogate (``"\\udc80"`` in the JSON) can be neither
    signed, stored, logged as UTF-8 nor quoted back in a result."""
    try:
        canonical_json(doc)
    except ValueError as e:  # UnicodeEncodeError; numbers are finite and nesting is bounded by now
        raise CommandRejected(command_id, "envelope: a string is not valid Unicode (a lone surrogate)") from e


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
        try:
            self.trusted_keys: List[Ed25519PublicKey] = load_public_keys(
                config.trusted_keys, "commands.trusted_keys"
            )
        except SignatureError as e:
            raise ConfigError(str(e)) from e

    def check(self, payload: Union[bytes, bytearray]) -> Command:
        """The command, if it passes every rule; CommandRejected with the first reason otherwise."""
        doc = _decode(payload)
        command_id: str = doc["id"]
        _check_unicode(command_id, doc)
        try:
            envelope = Envelope.model_validate(doc)
        except ValidationError as e:
            raise CommandRejected(command_id, _describe_envelope_error(e)) from e
        verified = self._check_signature(command_id, doc)
        return self._admit(command_id, envelope, verified)

    def _admit(self, command_id: str, envelope: Envelope, verified: bool) -> Command:
        """The rules after the signature; a rejection says whether the signature verified."""

        def rejected(reason: str) -> CommandRejected:
            return CommandRejected(command_id, reason, signature_verified=verified)

        time_problem = self._time_problem(envelope)
        if time_problem is not None:
            raise rejected(time_problem)
        if envelope.target != self.device.id and envelope.target not in self.device.groups:
            raise rejected(f"target {envelope.target!r} is neither this device nor one of its groups")
        if command_id in self.seen:
            raise rejected(f"id {command_id} was already used")
        self.seen.add(command_id)
        if envelope.type not in ARGS_BY_TYPE:
            known = ", ".join(ARGS_BY_TYPE)
            raise rejected(f"unknown type {envelope.type!r} (known: {known})")
        try:
            args = parse_args(envelope.type, envelope.args)
        except ValueError as e:
            raise rejected(str(e)) from e
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

    def _time_problem(self, envelope: Envelope) -> Optional[str]:
        """Why ``ts`` or ``expires`` refuse the command now; None when they do not."""
        now = self.clock()
        skew = envelope.ts_epoch - now
        limit = self.config.max_clock_skew_s
        if abs(skew) > limit:
            return f"ts {envelope.ts} is {abs(skew):.0f} s from the device clock (max {limit:g})"
        expires = envelope.expires_epoch
        if expires is not None and expires < now:
            return f"expired at {envelope.expires} ({now - expires:.0f} s ago)"
        return None
