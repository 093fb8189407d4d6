"""``edge-ctl watch``: one line per status or detection message, until Ctrl-C (or --count)."""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from .client import Connection


def _model(doc: Dict[str, Any]) -> str:
    model = doc.get("model")
    if isinstance(model, dict) and model.get("name"):
        return f"{model.get('name')}@{model.get('version', '?')}"
    return "-"


def _short_time(doc: Dict[str, Any]) -> str:
    ts = doc.get("ts")
    # "2026-11-22T10:00:00.123Z" -> "10:00:00.123": the date is rarely news in a live view.
    return ts[11:23] if isinstance(ts, str) and len(ts) >= 23 else "--:--:--.---"


def format_status(device: str, doc: Dict[str, Any]) -> str:
    parts = [_short_time(doc), device, "status", str(doc.get("state", "?")), f"model={_model(doc)}"]
    for key in ("backend", "fps", "camera"):
        value = doc.get(key)
        if value is not None:
            parts.append(f"{key}={value:.1f}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts)


def format_detections(device: str, doc: Dict[str, Any]) -> str:
    found = []
    for det in doc.get("detections") or []:
        if isinstance(det, dict):
            score = det.get("score")
            shown = f"{score:.2f}" if isinstance(score, (int, float)) else "?"
            found.append(f"{det.get('label', '?')}:{shown}")
    parts = [_short_time(doc), device, "detections", f"seq={doc.get('seq', '?')}", _model(doc)]
    parts.append(" ".join(found) if found else "(none)")
    return " ".join(parts)


def format_message(topic: str, payload: bytes, as_json: bool) -> Optional[str]:
    """The line to print for a message on P/D/status or P/D/detections (None: not one of those)."""
    levels = topic.split("/")
    if len(levels) < 3:
        return None
    device, kind = levels[-2], levels[-1]
    try:
        doc = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None if as_json else f"{device} {kind} (not JSON: {len(payload)} bytes)"
    if not isinstance(doc, dict):
        return None
    if as_json:
        return json.dumps({"topic": topic, "payload": doc}, ensure_ascii=False)
    if kind == "status":
        return format_status(device, doc)
    if kind == "detections":
        return format_detections(device, doc)
    return None


def watch(conn: Connection, prefix: str, device: Optional[str], as_json: bool, count: Optional[int]) -> int:
    """Print messages until Ctrl-C or until ``count`` have been printed."""
    who = device or "+"
    conn.subscribe([f"{prefix}/{who}/status", f"{prefix}/{who}/detections"], qos=0)
    printed = 0
    try:
        while count is None or printed < count:
            message = conn.next_message(1.0)
            if message is None:
                continue
            line = format_message(message.topic, bytes(message.payload), as_json)
            if line is not None:
                print(line, flush=True)
                printed += 1
    except KeyboardInterrupt:
        pass
    return 0
