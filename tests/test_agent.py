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
from tests.mosquitto import Mosquitto, Subscriber


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
    mosquitto: Mosquitto,
    mqtt_subscriber: Any,
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


class GatedServer:
    """A loopback HTTP server for a bundle directory that holds back the model files until
    `release()`: a deploy stays in `downloading` for as long as the test needs."""

    def __init__(self, directory: Path):
        import functools
        import http.server

        gate = self.gate = threading.Event()

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                if not self.path.startswith("/manifest"):
                    gate.wait(30)
                super().do_GET()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
        )
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()


def command(sub: Subscriber, cid: str, kind: str, **args: Any) -> None:
    from edge_agent.commands.envelope import new_command

    doc = new_command(kind, "pi-agent", args)
    doc["id"] = cid
    sub.client.publish("edgewatch/pi-agent/cmd", json.dumps(doc), qos=1).wait_for_publish(5)


def results(sub: Subscriber, cid: str) -> list:
    docs = [json.loads(m.payload) for m in sub.received("edgewatch/pi-agent/cmd/result")]
    return [d for d in docs if d["id"] == cid]


def test_a_fresh_device_waits_for_its_first_model_and_a_second_deploy_meanwhile_is_busy(
    mosquitto: Mosquitto,
    mqtt_subscriber: Any,
    tmp_path: Path,
) -> None:
    sub = mqtt_subscriber(mosquitto, ["edgewatch/pi-agent/#"])
    agent = make_agent(mosquitto, tmp_path / "store", model={"bundle": None})
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    status = "edgewatch/pi-agent/status"
    sub.wait_for(lambda ms: any(m.topic == status for m in ms), 30, "a status")
    first = json.loads(sub.received(status)[0].payload)
    assert first["state"] == "online" and first["model"] is None  # up, connected, no model yet

    server = GatedServer(BUNDLES_DIR / "shapes-1.0.0")
    try:
        command(sub, "first", "deploy", manifest=f"{server.url}/manifest.json")
        sub.wait_for(lambda ms: any(r.get("stage") == "downloading" for r in results(sub, "first")), 30)
        command(sub, "second", "deploy", manifest=f"{server.url}/manifest.json")
        sub.wait_for(lambda ms: len(results(sub, "second")) >= 1, 30, "the answer to the second deploy")
        second = results(sub, "second")
        assert [r["status"] for r in second] == ["rejected"] and "busy" in second[0]["detail"]
        server.release()
        sub.wait_for(lambda ms: results(sub, "first")[-1]["status"] in ("succeeded", "failed"), 30)
        assert results(sub, "first")[-1]["status"] == "succeeded", results(sub, "first")
    finally:
        server.close()
    detections = "edgewatch/pi-agent/detections"
    sub.wait_count(detections, 5, timeout=30)
    assert {json.loads(m.payload)["model"]["version"] for m in sub.received(detections)} == {"1.0.0"}
    agent.stop()
    assert agent.wait_stopped(30)


def test_snapshots_are_published_at_most_once_a_second_when_enabled(
    mosquitto: Mosquitto,
    mqtt_subscriber: Any,
    tmp_path: Path,
) -> None:
    import time

    import cv2
    import numpy as np

    sub = mqtt_subscriber(mosquitto, ["edgewatch/pi-agent/snapshot", "edgewatch/pi-agent/detections"])
    agent = make_agent(mosquitto, tmp_path / "store", publish={"mode": "all", "snapshots": True})
    runner = threading.Thread(target=agent.run, daemon=True)
    runner.start()
    sub.wait_count("edgewatch/pi-agent/snapshot", 2, timeout=30)
    time.sleep(1.0)
    agent.stop()
    assert agent.wait_stopped(30)
    snaps = sub.received("edgewatch/pi-agent/snapshot")
    frames = sub.received("edgewatch/pi-agent/detections")
    assert len(frames) > 3 * len(snaps)  # 50 fps of detections, about one JPEG a second
    image = cv2.imdecode(np.frombuffer(snaps[-1].payload, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (240, 320, 3)
    assert snaps[-1].content_type == "image/jpeg"
