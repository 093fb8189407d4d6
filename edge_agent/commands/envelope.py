"""The command envelope (SPEC §5): its shape, its canonical JSON and its Ed25519 signature.

The signature covers the canonical JSON of the envelope without ``sig``: keys sorted, separators
``,`` and ``:``, UTF-8 without escaping, no whitespace. Signing and verifying both work on the
plain JSON document as sent, never on a parsed model, so that nothing a model normalises (a
default, a coerced type) can make the two sides disagree about the bytes that were signed.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Dict, Mapping, Optional, Sequence

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..bundle.signing import sign, verify
from ..messages import utc_now_iso

SIGNATURE_FIELD = "sig"
MAX_ID_LENGTH = 128

# RFC 3339 date-time: a time zone is mandatory; any number of fractional digits. ASCII digits
# only: \d would also take "２０２６".
_RFC3339_RE = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(?:([Zz])|([+-])(\d{2}):(\d{2}))$",
    re.ASCII,
)


def parse_rfc3339(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 date-time ("2026-11-22T10:00:00.000Z").

    Written out because ``datetime.fromisoformat`` on Python 3.9/3.10 accepts neither ``Z``
    nor other than 3 or 6 fractional digits."""
    m = _RFC3339_RE.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not an RFC 3339 date-time such as 2026-11-22T10:00:00.000Z")
    year, month, day, hour, minute, second = (int(g) for g in m.group(1, 2, 3, 4, 5, 6))
    fraction, zulu, sign_char, off_h, off_m = m.group(7, 8, 9, 10, 11)
    if zulu:
        tz = timezone.utc
    else:
        offset = timedelta(hours=int(off_h), minutes=int(off_m))
        tz = timezone(offset if sign_char == "+" else -offset)
    try:
        # A leap second (:60) is read as the last instant of its minute.
        dt = datetime(year, month, day, hour, minute, min(second, 59), tzinfo=tz)
    except ValueError as e:
        raise ValueError(f"{text!r} is not a valid date-time: {e}") from e
    return dt.timestamp() + (float("0." + fraction) if fraction else 0.0)


def canonical_json(doc: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: keys sorted, no whitespace, UTF-8 (not \\u escapes).

    NaN and infinities are refused (ValueError): they are not JSON."""
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _signed_part(doc: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in doc.items() if k != SIGNATURE_FIELD}


def sign_envelope(doc: Mapping[str, Any], private_key: Ed25519PrivateKey) -> Dict[str, Any]:
    """A copy of ``doc`` with ``sig`` = base64 Ed25519 signature of its canonical JSON without ``sig``."""
    body = _signed_part(doc)
    return {**body, SIGNATURE_FIELD: sign(canonical_json(body), private_key).decode("ascii")}


def verify_envelope(doc: Mapping[str, Any], public_keys: Sequence[Ed25519PublicKey]) -> bool:
    """True when ``doc["sig"]`` verifies against one of ``public_keys``; False for a missing,
    malformed or wrong signature and for a document that has no canonical JSON."""
    signature = doc.get(SIGNATURE_FIELD)
    if not isinstance(signature, str) or not public_keys:
        return False
    try:
        data = canonical_json(_signed_part(doc))
        signature_bytes = signature.encode("ascii")
    except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
        return False
    return verify(data, signature_bytes, public_keys)


def new_command(
    type: str, target: str, args: Dict[str, Any], expires_in_s: Optional[float] = None
) -> Dict[str, Any]:
    """An unsigned envelope with a fresh id (uuid4 hex) and the current time."""
    now = time.time()
    doc: Dict[str, Any] = {
        "id": uuid.uuid4().hex,
        "type": type,
        "ts": utc_now_iso(now),
        "target": target,
        "args": dict(args),
    }
    if expires_in_s is not None:
        doc["expires"] = utc_now_iso(now + expires_in_s)
    return doc


class Envelope(BaseModel):
    """A command as it travels (SPEC §5). Unknown keys are refused: every key is signed, and a
    key the device would ignore could carry meaning the operator did not intend."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str = Field(min_length=1, max_length=MAX_ID_LENGTH)
    type: str = Field(min_length=1)
    ts: str
    target: str = Field(min_length=1)
    args: Dict[str, Any] = Field(default_factory=dict)
    expires: Optional[str] = None
    sig: Optional[str] = None

    @field_validator("id")
    @classmethod
    def _printable_id(cls, v: str) -> str:
        # Ids end up in logs, results and reasons: no control characters or spaces.
        if not v.isprintable() or any(c.isspace() for c in v):
            raise ValueError("must be printable characters without spaces")
        return v

    @field_validator("ts", "expires")
    @classmethod
    def _rfc3339(cls, v: Optional[str]) -> Optional[str]:
        if v is not None:
            parse_rfc3339(v)
        return v

    @property
    def ts_epoch(self) -> float:
        return parse_rfc3339(self.ts)

    @property
    def expires_epoch(self) -> Optional[float]:
        return None if self.expires is None else parse_rfc3339(self.expires)
