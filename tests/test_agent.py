"""The agent in-process, against a real Mosquitto: what it does when its accelerator fails
mid-run (the device call is the one thing replaced: there is no Coral to pull out here)."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.demo import BUNDLES_DIR
from edge_agent.errors import BackendError
from edge_agent.service.agent import Agent
from tests.mosquitto import Mosquitto, Subscriber, mosquitto, mqtt_subscriber  # noqa: F401  (fixtures)


def make_agent(broker: Mosquitto, store: Path, **sections: Any) -> Agent:
    doc = {
        "device": {"id": "pi-agent"},
        "camera": {"source": "synthetic:5", "width": 320, "height": 240, "fps": 50, "mode": "every"},
        "detector": {"backend": "tflite"},
        "model": {"bundle": str(BUNDLES_DIR / "shapes-1.1.0")},
        "store": {"dir": str(store)},
        "mqtt": {"host": broker.host, "port": broker.port},
        "publish": {"mode": "all"},
        "commands": {"require_signature": False},
        "http": {"listen": None},
    }
    doc.update(sections)
    return Agent(AgentConfig.model_validate(doc))


def events(sub: Subscriber) -> list:
    return [json.loads(m.payload) for m in sub.received("edgewatch/pi-agent/events")]


def test_an_accelerator_that_fails_mid_run_is_reloaded_and_serving_resumes(
    mosquitto: Mosquitto,  # noqa: F811
    mqtt_subscriber: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    sub = mqtt_subscriber(mosquitto, ["edgewatch/pi-agent/#"])
    agent = make_agent(mosquitto, tmp_path / "store")
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    detections = "edgewatch/pi-agent/detections"
    sub.wait_count(detections, 10, timeout=30)
    assert agent.pipeline is not None
    broken = agent.pipeline.detector
    assert broken is not None

    def unplugged(tensor: Any) -> Any:
        raise BackendError("EdgeTPU usb:0: device disconnected")

    broken.backend.submit = unplugged  # type: ignore[method-assign]  # the device call fails from now on
    sub.wait_for(lambda ms: any(e["type"] == "backend_reloaded" for e in events(sub)), 30, "backend_reloaded")
    assert agent.pipeline.detector is not broken
    n = len(sub.received(detections))
    sub.wait_count(detections, n + 10, timeout=30)  # serving again, on a fresh backend
    agent.stop()
    assert agent.wait_stopped(30)

    kinds = [e["type"] for e in events(sub)]
    failed = [e for e in events(sub) if e["type"] == "inference_failed"]
    assert [e["in_a_row"] for e in failed][:2] == [1, 10]  # reported sparingly, not per frame
    assert "device disconnected" in failed[0]["detail"]
    reloaded = next(e for e in events(sub) if e["type"] == "backend_reloaded")
    assert reloaded["model"] == {"name": "shapes", "version": "1.1.0"} and reloaded["backend"] == "tflite"
    assert kinds.count("backend_reloaded") == 1
    seqs = [json.loads(m.payload)["seq"] for m in sub.received(detections)]
    assert seqs == list(range(1, len(seqs) + 1))
