"""The demo's parts: the two bundled demo models, the embedded MQTT broker, snapshot drawing."""

from __future__ import annotations

import socket
import sys
import threading
from pathlib import Path
from typing import Any, Dict, List, Tuple

import cv2
import numpy as np
import pytest

from edge_agent.annotate import class_color, draw_detections, encode_jpeg
from edge_agent.bundle import load_bundle
from edge_agent.bundle.manifest import version_key
from edge_agent.cli import open_detector
from edge_agent.demo import BUNDLES_DIR
from edge_agent.demo.broker import EmbeddedBroker
from edge_agent.errors import EdgewatchError
from edge_agent.messages import BoxOut, DetectionOut
from edge_agent.sources.synthetic import SceneGenerator
from tests.waiting import wait_for

DEMO_VERSIONS = ("1.0.0", "1.1.0")
MAX_BUNDLE_BYTES = 1024 * 1024  # int8 TFLite + fp32 ONNX of the trainer's small network, ~0.8 MB
EVAL_FRAMES = 10


def bundle_dir(version: str) -> Path:
    return BUNDLES_DIR / f"shapes-{version}"


# --- the bundled demo models -------------------------------------------------------------------


@pytest.mark.parametrize("version", DEMO_VERSIONS)
def test_demo_bundle_loads_and_verifies(version: str) -> None:
    bundle = load_bundle(bundle_dir(version), verify=True)
    m = bundle.manifest
    assert (m.name, m.version) == ("shapes", version)
    assert m.labels == ["circle", "square", "triangle"]
    assert sorted(a.runtime for a in m.artifacts) == ["onnx", "tflite"]
    assert bundle.artifact("tflite").precision == "int8"
    assert m.metrics is not None and "map50" in m.metrics
    # Shipped unsigned: the demo signs copies with a throwaway key at run time.
    assert not (bundle_dir(version) / "manifest.sig").exists()
    files = [p for p in bundle_dir(version).iterdir() if p.is_file()]
    assert {p.name for p in files} == {"manifest.json"} | {a.file for a in m.artifacts}
    assert sum(p.stat().st_size for p in files) < MAX_BUNDLE_BYTES


def test_demo_versions_order_and_the_newer_is_better() -> None:
    old, new = (load_bundle(bundle_dir(v)).manifest for v in DEMO_VERSIONS)
    assert version_key(old.version) < version_key(new.version)
    assert old.metrics is not None and new.metrics is not None
    assert new.metrics["map50"] > old.metrics["map50"]
    assert old.source is not None and new.source is not None
    # Both come from the same synthetic dataset; only the training differs.
    assert old.source["dataset_sha256"] == new.source["dataset_sha256"]


def matched_count(version: str) -> Tuple[int, int]:
    """(ground-truth shapes found with the right label and IoU >= 0.5, all ground-truth shapes)
    on synthetic frames the models never saw, through the tflite backend."""
    detector, _ = open_detector(str(bundle_dir(version)), backend="tflite")
    gen = SceneGenerator(width=640, height=480, seed=4242)
    found = total = 0
    try:
        for i in range(EVAL_FRAMES):
            image, truth = gen.render(i)
            dets = detector.detect(image).detections
            used = set()
            for t in truth:
                x0, y0, x1, y1 = t.box
                gt = (x0 / 640, y0 / 480, x1 / 640, y1 / 480)
                total += 1
                best, best_iou = None, 0.5
                for k, d in enumerate(dets):
                    if k in used or d.class_id != t.class_id:
                        continue
                    iou = box_iou(gt, (d.box.xmin, d.box.ymin, d.box.xmax, d.box.ymax))
                    if iou >= best_iou:
                        best, best_iou = k, iou
                if best is not None:
                    used.add(best)
                    found += 1
    finally:
        detector.close()
    return found, total


def box_iou(a: Tuple[float, ...], b: Tuple[float, ...]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def test_demo_models_find_the_shapes_and_the_newer_finds_more() -> None:
    old_found, total = matched_count("1.0.0")
    new_found, total_again = matched_count("1.1.0")
    assert total == total_again and total >= 2 * EVAL_FRAMES
    assert new_found >= 0.8 * total, f"1.1.0 found {new_found} of {total}"
    assert old_found >= 1, "1.0.0 should work, just worse"
    assert new_found >= old_found, f"1.1.0 found {new_found}, 1.0.0 found {old_found} of {total}"


# --- the embedded broker -----------------------------------------------------------------------


def test_embedded_broker_without_amqtt_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "amqtt.broker", None)  # makes `import amqtt.broker` fail
    with pytest.raises(EdgewatchError, match=r"needs amqtt .*edgewatch\[demo\].*--broker"):
        EmbeddedBroker().start()


class Client:
    """A paho-mqtt 2 client that records what happens, for polling with a deadline."""

    def __init__(self, port: int, client_id: str, protocol: Any) -> None:
        import paho.mqtt.client as mqtt

        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.reason: Any = None  # the CONNACK's reason code
        self.messages: List[Tuple[str, bytes, int]] = []  # topic, payload, QoS
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *args: self.subscribed.set()
        self.client.on_message = lambda c, u, msg: self.messages.append(
            (msg.topic, bytes(msg.payload), msg.qos)
        )
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any = None) -> None:
        self.reason = reason
        self.connected.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        self.messages.append((msg.topic, bytes(msg.payload), msg.qos))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    pytest.importorskip("amqtt", reason="the embedded broker needs amqtt (Python 3.10+)")
    monkeypatch.chdir(tmp_path)  # so that a file the broker wrote would show up here
    b = EmbeddedBroker()
    b.start()
    yield b
    b.stop()


def test_embedded_broker_round_trip_qos1_mqtt311(broker: EmbeddedBroker, tmp_path: Path) -> None:
    import paho.mqtt.client as mqtt

    port = broker.port
    assert broker.url == f"mqtt://127.0.0.1:{port}"
    sub = Client(port, "sub", mqtt.MQTTv311)
    pub = Client(port, "pub", mqtt.MQTTv311)
    try:
        assert sub.connected.wait(10) and pub.connected.wait(10)
        assert not sub.reason.is_failure and not pub.reason.is_failure
        sub.client.subscribe("edgewatch/pi-01/#", qos=1)
        assert sub.subscribed.wait(10)
        info = pub.client.publish("edgewatch/pi-01/detections", b'{"seq": 1}', qos=1)
        info.wait_for_publish(10)
        assert info.is_published()  # the broker acknowledged it (PUBACK)
        wait_for(lambda: sub.messages, 10, "the message")
        assert sub.messages == [("edgewatch/pi-01/detections", b'{"seq": 1}', 1)]
    finally:
        sub.close()
        pub.close()
    assert list(tmp_path.iterdir()) == []  # no persistence files


def test_embedded_broker_refuses_mqtt5(broker: EmbeddedBroker) -> None:
    """amqtt speaks MQTT 3.1.1 only: the demo's config must say mqtt.protocol 311."""
    import paho.mqtt.client as mqtt

    client = Client(broker.port, "v5", mqtt.MQTTv5)
    try:
        assert client.connected.wait(10)
        assert client.reason.is_failure
    finally:
        client.close()


def test_embedded_broker_stops_and_reports_a_busy_port(broker: EmbeddedBroker) -> None:
    port = broker.port
    other = EmbeddedBroker(port=port)
    with pytest.raises(EdgewatchError, match=f"cannot listen on 127.0.0.1:{port}"):
        other.start()
    with pytest.raises(EdgewatchError, match="already started"):
        broker.start()
    broker.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    with pytest.raises(EdgewatchError, match="not running"):
        _ = broker.url


# --- snapshots ---------------------------------------------------------------------------------


def detection(label: str, class_id: int, box: Tuple[float, float, float, float]) -> DetectionOut:
    xmin, ymin, xmax, ymax = box
    return DetectionOut(
        label=label, class_id=class_id, score=0.9, box=BoxOut(xmin=xmin, ymin=ymin, xmax=xmax, ymax=ymax)
    )


def test_draw_detections_draws_boxes_labels_and_caption() -> None:
    frame = np.full((480, 640, 3), 40, np.uint8)
    original = frame.copy()
    dets = [detection("circle", 0, (0.25, 0.5, 0.5, 0.75)), detection("square", 1, (0.6, 0.1, 0.9, 0.4))]
    out = draw_detections(frame, dets, caption="shapes 1.1.0 · tflite · 14.8 fps")
    assert np.array_equal(frame, original)  # the input is left alone
    assert out.shape == frame.shape and out.dtype == np.uint8
    # The first box's left edge (x = 0.25 * 639 ~ 160) is drawn in its class's colour.
    edge = out[300:340, 158:163].reshape(-1, 3)
    assert any(tuple(int(c) for c in px) == class_color(0) for px in edge)
    # The label sits just above the box; the caption in the top-left corner.
    assert np.any(out[215:240, 160:260] != 40)
    assert np.any(out[0:20, 0:200] != 40)
    # Far from every box, caption and label, nothing changed.
    assert np.array_equal(out[400:480, 0:100], original[400:480, 0:100])
    # The inside of a box stays visible.
    assert np.array_equal(out[300:340, 200:300], original[300:340, 200:300])


def test_class_colours_are_stable_and_distinct() -> None:
    colours = [class_color(i) for i in range(6)]
    assert colours == [class_color(i) for i in range(6)]
    assert len(set(colours)) == 6


def test_draw_detections_takes_grey_frames_and_clips_boxes() -> None:
    grey = np.zeros((120, 160), np.uint8)
    out = draw_detections(grey, [detection("triangle", 2, (-0.2, -0.1, 1.3, 1.2))])
    assert out.shape == (120, 160, 3)
    assert np.any(out != 0)


def test_encode_jpeg_round_trip() -> None:
    image, _ = SceneGenerator(width=320, height=240, seed=1).render(0)
    data = encode_jpeg(draw_detections(image, []), quality=90)
    assert data[:2] == b"\xff\xd8" and data[-2:] == b"\xff\xd9"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded is not None and decoded.shape == image.shape
    assert float(np.mean(np.abs(decoded.astype(np.int16) - image.astype(np.int16)))) < 8
    assert len(encode_jpeg(image, quality=20)) < len(data)
    with pytest.raises(ValueError):
        encode_jpeg(image, quality=101)


def test_manifest_metrics_are_recorded() -> None:
    metrics: Dict[str, Any] = load_bundle(bundle_dir("1.1.0")).manifest.metrics or {}
    assert set(metrics["per_artifact"]) == {"tflite", "onnx"}
