"""Outgoing message shapes (SPEC §4) as pydantic models."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Dict, List, Optional

from pydantic import BaseModel, ConfigDict


def utc_now_iso(ts: Optional[float] = None) -> str:
    """RFC 3339 UTC with milliseconds, as every message carries."""
    dt = datetime.now(timezone.utc) if ts is None else datetime.fromtimestamp(ts, timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def encodable(text: str) -> str:
    """``text`` with what UTF-8 cannot encode (a lone surrogate, as JSON's "\\ud800" makes) written
    as a visible escape: text that quotes what a peer sent must never make a message unsendable."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")

    def to_json_dict(self) -> Dict[str, Any]:
        return self.model_dump(exclude_none=True)


class BoxOut(Message):
    xmin: float
    ymin: float
    xmax: float
    ymax: float


class DetectionOut(Message):
    label: str
    class_id: int
    score: float
    box: BoxOut


class ModelRef(Message):
    name: str
    version: str


class ImageSize(Message):
    width: int
    height: int


class Latency(Message):
    inference: float
    total: float


class DetectionMessage(Message):
    device: Optional[str] = None
    ts: Optional[str] = None
    seq: Optional[int] = None
    frame: Optional[int] = None
    file: Optional[str] = None  # `edge-agent detect` only
    model: ModelRef
    backend: str
    image: ImageSize
    latency_ms: Latency
    detections: List[DetectionOut]
