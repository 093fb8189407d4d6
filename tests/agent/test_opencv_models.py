"""Darknet models (cfg + weights) and a TF frozen graph through the opencv backend and the
yolov2 / yolov3 decoders.

The weights are written by the test with a known answer: one 1x1 convolution per head whose
objectness follows one colour channel and whose class logits are the channels, with zero box
offsets, so a coloured grid cell is detected at exactly that cell with the anchor's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import pytest

from cloud_trainer.package import artifact_entry, write_bundle
from edge_agent.loading import open_detector

pytestmark = pytest.mark.skipif(
    not hasattr(cv2.dnn, "readNetFromDarknet"), reason="this OpenCV has no darknet reader"
)
A, C = 2, 3  # anchors per head, classes (red, green, blue)
CHANNEL = {"red": 0, "green": 1, "blue": 2}  # the manifest says rgb: channel 0 is red


def head(objectness_channel: int) -> Tuple[np.ndarray, np.ndarray]:
    """Weights [A*(5+C), 3] and biases of a 1x1 conv: anchor 0 fires on one channel."""
    w = np.zeros((A, 5 + C, 3), np.float32)
    b = np.zeros((A, 5 + C), np.float32)
    w[0, 4, objectness_channel] = 20.0
    b[:, 4] = -10.0  # objectness off unless the channel is bright (anchor 1 never fires)
    for c in range(C):
        w[:, 5 + c, c] = 10.0
    return w.reshape(A * (5 + C), 3), b.reshape(-1)


def write_weights(path: Path, heads: List[Tuple[np.ndarray, np.ndarray]]) -> None:
    with path.open("wb") as f:
        np.array([0, 2, 0], np.int32).tofile(f)  # major, minor, revision
        np.array([0], np.int64).tofile(f)  # images seen (int64 from version 0.2)
        for w, b in heads:
            b.tofile(f)  # no batch norm: biases, then weights
            w.tofile(f)


CONV = "[convolutional]\nsize=1\nstride=1\npad=0\nfilters={f}\nactivation=linear\n\n"
# darknet pads max-pooling by size-1 unless told otherwise; padding=0 keeps cells apart.
NET = "[net]\nwidth=32\nheight=32\nchannels=3\n\n[maxpool]\nsize=8\nstride=8\npadding=0\n\n"


def make_bundle(tmp: Path, name: str, cfg: str, heads, decoder: dict) -> Path:  # type: ignore[no-untyped-def]
    d = tmp / name
    d.mkdir()
    (d / "model.cfg").write_text(cfg)
    write_weights(d / "model.weights", heads)
    write_bundle(
        d,
        name=name,
        version="1.0.0",
        labels=["red", "green", "blue"],
        input={"width": 32, "height": 32, "color": "rgb", "resize": "stretch", "range": [0, 1]},
        decoder=decoder,
        artifacts=[artifact_entry("opencv", "fp32", d / "model.weights", config=d / "model.cfg")],
        defaults={"score_threshold": 0.5, "iou_threshold": 0.5, "max_detections": 10},
    )
    return d


def image_with(cells: List[Tuple[str, int, int, int]]) -> np.ndarray:
    """(colour, row, col, cell size in pixels) on black, BGR."""
    img = np.zeros((32, 32, 3), np.uint8)
    for colour, row, col, k in cells:
        bgr = [0, 0, 0]
        bgr[2 - CHANNEL[colour]] = 255
        img[row * k : (row + 1) * k, col * k : (col + 1) * k] = bgr
    return img


def boxes(found) -> List[Tuple[str, Tuple[float, ...]]]:  # type: ignore[no-untyped-def]
    return sorted((d.label, (d.box.xmin, d.box.ymin, d.box.xmax, d.box.ymax)) for d in found)


def test_yolov2_region_model(tmp_path: Path) -> None:
    cfg = (
        NET
        + CONV.format(f=A * (5 + C))
        + "[region]\nanchors=1,1, 2,2\nclasses=3\nnum=2\ncoords=4\nsoftmax=1\n"
    )
    d = make_bundle(
        tmp_path,
        "dk2",
        cfg,
        [head(CHANNEL["red"])],
        {"type": "yolov2", "params": {"anchors": [[1, 1], [2, 2]]}},
    )
    detector, _ = open_detector(str(d), "opencv")
    found = boxes(detector.detect(image_with([("red", 1, 2, 8), ("green", 3, 0, 8)])).detections)
    assert [f[0] for f in found] == ["red"]
    assert found[0][1] == pytest.approx((0.5, 0.25, 0.75, 0.5), abs=1e-3)


def test_yolov3_two_heads(tmp_path: Path) -> None:
    anchors = "8,8, 16,16, 16,16, 16,16"
    cfg = (
        NET
        + CONV.format(f=A * (5 + C))
        + f"[yolo]\nmask=0,1\nanchors={anchors}\nclasses=3\nnum=4\n\n"
        + "[route]\nlayers=0\n\n[maxpool]\nsize=2\nstride=2\npadding=0\n\n"
        + CONV.format(f=A * (5 + C))
        + f"[yolo]\nmask=2,3\nanchors={anchors}\nclasses=3\nnum=4\n"
    )
    decoder = {
        "type": "yolov3",
        "params": {"anchors": [[8, 8], [16, 16], [16, 16], [16, 16]], "masks": [[2, 3], [0, 1]]},
    }
    d = make_bundle(tmp_path, "dk3", cfg, [head(CHANNEL["red"]), head(CHANNEL["blue"])], decoder)
    detector, _ = open_detector(str(d), "opencv")
    # The raw head convolutions, one per yolo layer: a 4x4 and a 2x2 grid.
    assert sorted(o.shape for o in detector.backend.outputs) == [(1, 2, 2, 16), (1, 4, 4, 16)]
    found = boxes(detector.detect(image_with([("red", 3, 0, 8), ("blue", 0, 1, 16)])).detections)
    assert [f[0] for f in found] == ["blue", "red"]
    assert found[0][1] == pytest.approx((0.5, 0.0, 1.0, 0.5), abs=1e-3)  # 16 px anchor, 2x2 cell (0, 1)
    assert found[1][1] == pytest.approx((0.0, 0.75, 0.25, 1.0), abs=1e-3)  # 8 px anchor, 4x4 cell (3, 0)


def test_darknet_needs_both_files(tmp_path: Path) -> None:
    from edge_agent.errors import BackendError

    d = make_bundle(
        tmp_path,
        "dk",
        NET + CONV.format(f=16) + "[region]\nanchors=1,1, 2,2\nclasses=3\nnum=2\n",
        [head(0)],
        {"type": "yolov2", "params": {"anchors": [[1, 1], [2, 2]]}},
    )
    (d / "model.weights").write_bytes(b"\x00" * 8)
    import json

    doc = json.loads((d / "manifest.json").read_text())
    doc["artifacts"] = [artifact_entry("opencv", "fp32", d / "model.weights", config=d / "model.cfg")]
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(BackendError, match="OpenCV cannot read it"):
        open_detector(str(d), "opencv")


@pytest.mark.needs_tf
def test_tensorflow_frozen_graph_on_opencv(tmp_path: Path) -> None:
    """A TF frozen graph (.pb) of the same known-answer yolov2 head, read by cv2.dnn."""
    tf = pytest.importorskip("tensorflow")
    w, b = head(CHANNEL["red"])
    graph = tf.Graph()
    with graph.as_default():
        x = tf.compat.v1.placeholder(tf.float32, [1, 32, 32, 3], name="input")
        pooled = tf.nn.max_pool2d(x, 8, 8, "VALID")
        kernel = tf.constant(w.T.reshape(1, 1, 3, A * (5 + C)))
        tf.nn.bias_add(tf.nn.conv2d(pooled, kernel, 1, "VALID"), tf.constant(b), name="output")
    d = tmp_path / "tfpb"
    d.mkdir()
    tf.io.write_graph(graph.as_graph_def(), str(d), "model.pb", as_text=False)
    write_bundle(
        d,
        name="tfpb",
        version="1.0.0",
        labels=["red", "green", "blue"],
        input={"width": 32, "height": 32, "color": "rgb", "resize": "stretch", "range": [0, 1]},
        decoder={"type": "yolov2", "params": {"anchors": [[1, 1], [2, 2]]}},
        artifacts=[artifact_entry("opencv", "fp32", d / "model.pb")],
        defaults={"score_threshold": 0.5, "iou_threshold": 0.5, "max_detections": 10},
    )
    detector, _ = open_detector(str(d), "opencv")
    found = boxes(detector.detect(image_with([("red", 2, 1, 8), ("blue", 0, 0, 8)])).detections)
    assert [f[0] for f in found] == ["red"]
    assert found[0][1] == pytest.approx((0.25, 0.5, 0.5, 0.75), abs=1e-3)
