"""cloud_trainer's model, targets, augmentation, training loop and exports (TensorFlow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict

import numpy as np
import pytest

pytestmark = pytest.mark.needs_tf
tf = pytest.importorskip("tensorflow")

from cloud_trainer.augment import Augment, prepare  # noqa: E402
from cloud_trainer.data import synthesize  # noqa: E402
from cloud_trainer.data.dataset import Annotation, Dataset, Sample  # noqa: E402
from cloud_trainer.evaluate import coco_map  # noqa: E402
from cloud_trainer.model import ModelSpec, build, cell_grid  # noqa: E402
from cloud_trainer.targets import encode  # noqa: E402
from edge_agent.preprocess import place  # noqa: E402


def test_model_shapes_and_ops() -> None:
    spec = ModelSpec(num_classes=3, img_size=128)
    train_model, export = build(spec, batch_size=1)
    assert spec.grids == [16, 8, 4] and spec.num_cells == 336
    assert tuple(train_model.output.shape) == (1, 336, 7)
    assert tuple(export.output.shape) == (1, 7, 336)
    allowed = {
        "InputLayer", "Conv2D", "DepthwiseConv2D", "BatchNormalization", "ReLU", "Add", "Concatenate",
        "Reshape", "Activation", "Lambda", "Permute",
    }  # fmt: skip
    assert {type(layer).__name__ for layer in export.layers} <= allowed
    out = export(np.random.rand(1, 128, 128, 3).astype(np.float32)).numpy()
    assert out.min() >= 0 and out.max() <= 1  # normalised boxes and scores: one int8 scale fits


def test_cell_grid_matches_output_order() -> None:
    spec = ModelSpec(num_classes=2, img_size=64)
    grid = cell_grid(spec)
    assert grid.shape == (64 + 16 + 4, 3)
    assert tuple(grid[0]) == (0, 0, 8) and tuple(grid[9]) == (1, 1, 8) and tuple(grid[64]) == (0, 0, 4)
    assert tuple(grid[80]) == (0, 0, 2)


def test_encode_assigns_cells_near_the_centre() -> None:
    spec = ModelSpec(num_classes=3, img_size=128)
    grid = cell_grid(spec)
    # A 40x40 px square centred at (52, 52): max side 0.31 -> the stride-16 and -32 heads learn it.
    t = encode(np.array([[2, 32, 32, 72, 72]], np.float32), spec, grid)
    pos = np.nonzero(t[:, 4 + 3])[0]
    assert len(pos) >= 2
    assert np.allclose(t[pos, :4], [52 / 128, 52 / 128, 40 / 128, 40 / 128])
    assert (t[pos, 4 + 2] == 1).all() and (t[pos, 4:6] == 0).all()
    g = grid[pos]
    cx, cy = (g[:, 0] + 0.5) / g[:, 2], (g[:, 1] + 0.5) / g[:, 2]
    assert (np.abs(cx - 52 / 128) < 1 / g[:, 2]).all() and (np.abs(cy - 52 / 128) < 1 / g[:, 2]).all()
    # Every cell inside the box knows the box it lies in (for the loss's ignore rule).
    inside = np.nonzero(t[:, 4 + 3 + 5])[0]
    assert set(pos) <= set(inside) and len(inside) > len(pos)
    assert np.allclose(t[inside, 8:12], [52 / 128, 52 / 128, 40 / 128, 40 / 128])
    # Two objects sharing a cell of the stride-16 head (both sizes suit it): the smaller keeps it.
    both = encode(np.array([[0, 8, 8, 56, 56], [1, 24, 24, 40, 40]], np.float32), spec, grid)
    home = int(np.nonzero((grid[:, 0] == 2) & (grid[:, 1] == 2) & (grid[:, 2] == 8))[0][0])
    assert both[home, 4 + 1] == 1 and both[home, 4] == 0
    assert both[:, 4].sum() > 0  # the larger object still has cells of its own
    assert encode(np.zeros((0, 5), np.float32), spec, grid)[:, 4 + 3].sum() == 0


def test_plain_prepare_is_the_agents_letterbox() -> None:
    image = (np.random.default_rng(0).random((48, 80, 3)) * 255).astype(np.uint8)
    boxes = np.array([[0, 10, 5, 30, 25]], np.float32)
    canvas, placed = prepare(image, boxes, 64)
    agent, transform = place(image, 64, 64, "letterbox", 114)
    assert np.array_equal(canvas, agent)
    assert placed[0, 1] == pytest.approx(10 * transform.scale_x + transform.pad_x, abs=0.01)
    assert placed[0, 2] == pytest.approx(5 * transform.scale_y + transform.pad_y, abs=0.01)


def test_augmentation_moves_boxes_with_pixels() -> None:
    image = np.zeros((100, 100, 3), np.uint8)
    image[20:40, 60:90] = 255
    boxes = np.array([[1, 60, 20, 90, 40]], np.float32)
    aug = Augment(hue=0, saturation=(1, 1), value=(1, 1))
    for seed in range(8):
        canvas, placed = prepare(image, boxes, 64, np.random.default_rng(seed), aug)
        if len(placed) == 0:
            continue  # cropped away
        ys, xs = np.nonzero(canvas[..., 0] > 127)
        x0, y0, x1, y1 = placed[0, 1:]
        assert abs(xs.min() - x0) <= 1.5 and abs(xs.max() + 1 - x1) <= 1.5
        assert abs(ys.min() - y0) <= 1.5 and abs(ys.max() + 1 - y1) <= 1.5


def test_coco_map_perfect_and_empty(tmp_path: Path) -> None:
    samples = [
        Sample(
            tmp_path / f"{i}.jpg",
            100,
            100,
            (Annotation(i % 2, 10, 10, 50, 60), Annotation(1, 60, 60, 90, 95)),
        )
        for i in range(4)
    ]
    ds = Dataset(["a", "b"], samples)
    perfect = [
        {
            "image_id": i,
            "category_id": b.class_id,
            "bbox": [b.xmin, b.ymin, b.xmax - b.xmin, b.ymax - b.ymin],
            "score": 0.9,
        }
        for i, s in enumerate(samples)
        for b in s.boxes
    ]
    m = coco_map(ds, perfect)
    assert m.map50 == pytest.approx(1.0) and m.map50_95 == pytest.approx(1.0)
    assert m.per_class["a"]["map50"] == pytest.approx(1.0)
    wrong_class = [dict(r, category_id=1 - r["category_id"]) for r in perfect]
    assert coco_map(ds, wrong_class).map50 < 0.6
    assert coco_map(ds, []).map50 == 0.0


def trainer(*args: str, cwd: Path) -> Dict[str, Any]:
    r = subprocess.run(
        [sys.executable, "-m", "cloud_trainer", *args], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few epochs on a small synthetic set: enough to exercise every step, not to be good."""
    root = tmp_path_factory.mktemp("trainer")
    synthesize(root / "data", images=48, seed=3, fmt="yolo")
    args = [
        "train",
        "data",
        "--out",
        "run",
        "--epochs",
        "2",
        "--img-size",
        "96",
        "--batch",
        "16",
        "--eval-every",
        "1",
    ]
    summary = trainer(*args, cwd=root)
    assert summary["epochs"] == 2
    return root / "run"


@pytest.mark.slow  # trains a model (small_run)
def test_train_writes_checkpoints_and_resumes(small_run: Path) -> None:
    state = json.loads((small_run / "state.json").read_text())
    assert state["epoch"] == 2 and len(state["history"]) == 2 and "map50" in state["history"][-1]
    assert (small_run / "weights" / "last.weights.h5").is_file()
    assert (small_run / "weights" / "best.weights.h5").is_file()
    info = json.loads((small_run / "run.json").read_text())
    assert info["classes"] == ["circle", "square", "triangle"] and info["data"]["format"] is None
    summary = trainer("train", "data", "--out", "run", "--epochs", "3", "--resume", cwd=small_run.parent)
    assert summary["epochs"] == 3
    state = json.loads((small_run / "state.json").read_text())
    assert [h["epoch"] for h in state["history"]] == [1, 2, 3]


@pytest.mark.slow  # trains a model (small_run)
def test_export_evaluate_package(small_run: Path, tmp_path: Path) -> None:
    from edge_agent.bundle import load_bundle
    from edge_agent.bundle.signing import load_public_key, verify

    subprocess.run([sys.executable, "-m", "cloud_trainer", "keygen", str(tmp_path / "k")], check=True)
    out = trainer(
        "export", str(small_run), "--formats", "tflite,edgetpu,openvino,onnx", "--version", "0.1.0",
        "--name", "tiny", "--sign-key", str(tmp_path / "k.key"), cwd=small_run.parent,
    )  # fmt: skip
    assert out["edgetpu_check"]["maps_fully"] is True
    assert "edgetpu_compiler not on PATH" in out["edgetpu"]
    bundle = load_bundle(small_run / "bundle")
    m = bundle.manifest
    assert (m.name, m.version) == ("tiny", "0.1.0")
    assert [a.runtime for a in m.artifacts] == ["tflite", "openvino", "onnx"]
    assert m.input.width == 96 and m.decoder.type == "yolov8"
    # The trainer's IoU-aware scores: a lower score threshold than a plain bundle's default.
    assert m.defaults.model_dump() == {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 100}
    assert set(m.metrics["per_artifact"]) == {"tflite", "openvino", "onnx"}
    assert 0 <= m.metrics["map50"] <= 1
    assert bundle.signature and verify(
        bundle.manifest_bytes, bundle.signature, [load_public_key(tmp_path / "k.pub")]
    )
    # The exported IR uses no operation newer than OpenVINO 2022.3 knows (opset <= 8 here).
    xml = (small_run / "bundle" / "model_fp16.xml").read_text()
    assert "opset11" not in xml and "opset9" not in xml
    metrics = trainer("evaluate", str(small_run), cwd=small_run.parent)
    assert set(metrics["per_artifact"]) == {"tflite", "openvino", "onnx"}
    assert (small_run / "metrics.json").is_file()


@pytest.mark.slow  # trains a model (small_run)
def test_edgetpu_check_flags_a_float_model(small_run: Path, tmp_path: Path) -> None:
    from cloud_trainer.edgetpu_check import check
    from cloud_trainer.export import tflite_fp32
    from cloud_trainer.train import load_model

    _, _, export = load_model(small_run)
    report = check(tflite_fp32(export, tmp_path))
    assert not report.maps_fully
    assert any("float32, not 8-bit" in str(f) for f in report.findings)


def test_export_refuses_unknown_format_and_missing_run(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "cloud_trainer", "export", str(tmp_path), "--formats", "tflite"],
        capture_output=True,
        text=True,
    )
    assert (
        r.returncode == 1 and "not a training run (no run.json)" in r.stderr and "Traceback" not in r.stderr
    )


def test_mobilenetv2_backbone_builds_without_weights() -> None:
    """The ImageNet path is Keras' own loader (weights="imagenet"); tests build the same graph
    with weights=None, since nothing may be downloaded here."""
    spec = ModelSpec(num_classes=2, img_size=96, backbone="mobilenetv2")
    assert spec.input_range == (-1.0, 1.0)  # what MobileNetV2 was trained on
    model, export = build(spec, batch_size=1)
    assert tuple(export.output.shape) == (1, 6, spec.num_cells)
    assert any(layer.name.startswith("block_13") for layer in model.layers)
    with pytest.raises(ValueError, match="needs --backbone mobilenetv2"):
        build(ModelSpec(num_classes=2, img_size=96), pretrained=True)
