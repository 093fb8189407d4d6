"""What the agent says about itself: the retained status message (SPEC §4), the one-line
``STATUS=`` for systemd, ``/healthz`` and ``/metrics`` — pure functions of the pipeline's state."""

from __future__ import annotations

import time
from typing import Any, Dict, Optional, Tuple

from .. import __version__
from ..messages import utc_now_iso
from .pipeline import Pipeline

STALE_AFTER_S = 10.0  # no processed frame for this long (and not paused): unhealthy


def status_document(pipeline: Optional[Pipeline], state: str, uptime_s: float, queued: int) -> Dict[str, Any]:
    detector = pipeline.detector if pipeline else None
    stats = pipeline.stats if pipeline else None
    return {
        "state": state,
        "ts": utc_now_iso(),
        "agent_version": __version__,
        "model": detector.model.to_json_dict() if detector else None,
        "backend": detector.backend.name if detector else None,
        "accelerator": detector.backend.accelerator if detector else None,
        "fps": round(stats.fps, 2) if stats else 0.0,
        "inference_ms": round(stats.inference_ms, 2) if stats else None,
        "uptime_s": round(uptime_s, 1),
        "camera": stats.camera if stats else "ok",
        "paused": bool(pipeline and pipeline.paused),
        "frames": stats.processed if stats else 0,
        "dropped": stats.dropped if stats else 0,
        "queued": queued,
    }


def status_line(pipeline: Optional[Pipeline]) -> str:
    d = pipeline.detector if pipeline else None
    if pipeline is None or d is None:
        return "no model: waiting for a deploy"
    paused = " (paused)" if pipeline.paused else ""
    where = f"{d.backend.name}/{d.backend.accelerator}"
    return f"{d.model.name} {d.model.version} on {where}, {pipeline.stats.fps:.1f} fps{paused}"


def health(
    status: Dict[str, Any], pipeline: Optional[Pipeline], mqtt_connected: bool
) -> Tuple[bool, Dict[str, Any]]:
    """Healthy: a model serves, the camera delivers and frames were processed lately (or the
    operator paused it). The broker is reported, not required: the outbox covers an outage."""
    last = pipeline.stats.last_frame_ts if pipeline else None
    fresh = last is not None and time.time() - last < STALE_AFTER_S
    healthy = bool(
        pipeline and pipeline.detector is not None and status["camera"] == "ok" and (fresh or pipeline.paused)
    )
    return healthy, {**status, "mqtt": "connected" if mqtt_connected else "disconnected"}


def metrics_text(status: Dict[str, Any], mqtt_connected: bool) -> str:
    """Prometheus text exposition."""
    s = status
    lines = [
        "# TYPE edgewatch_frames_processed_total counter",
        f"edgewatch_frames_processed_total {s['frames']}",
        "# TYPE edgewatch_frames_dropped_total counter",
        f"edgewatch_frames_dropped_total {s['dropped']}",
        "# TYPE edgewatch_fps gauge",
        f"edgewatch_fps {s['fps']}",
        "# TYPE edgewatch_inference_ms gauge",
        f"edgewatch_inference_ms {s['inference_ms'] or 0}",
        "# TYPE edgewatch_outbox_messages gauge",
        f"edgewatch_outbox_messages {s['queued']}",
        "# TYPE edgewatch_mqtt_connected gauge",
        f"edgewatch_mqtt_connected {int(mqtt_connected)}",
        "# TYPE edgewatch_paused gauge",
        f"edgewatch_paused {int(s['paused'])}",
    ]
    if s["model"]:
        m = s["model"]
        lines += [
            "# TYPE edgewatch_model_info gauge",
            f'edgewatch_model_info{{name="{m["name"]}",version="{m["version"]}",backend="{s["backend"]}"}} 1',
        ]
    return "\n".join(lines) + "\n"
