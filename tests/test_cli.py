"""`edge-agent detect | devices | bench` as a user runs them: a real process, real files."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import cv2
import pytest

from edge_agent.detection import Box
from edge_agent.sources.synthetic import SceneGenerator


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "edge_agent", *args], capture_output=True, text=True, timeout=300
    )


def write_frames(directory: Path, seed: int, n: int) -> List[str]:
    gen = SceneGenerator(width=640, height=480, seed=seed)
    paths = []
    for i in range(n):
        p = directory / f"frame{i}.png"
        cv2.imwrite(str(p), gen.render(i)[0])  # PNG: the pixels the backends see are the frame's
        paths.append(str(p))
    return paths


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> List[str]:
    return write_frames(tmp_path_factory.mktemp("frames"), seed=5, n=3)


def detect(bundle: Path, backend: str, files: List[str], *extra: str) -> List[List[Dict[str, Any]]]:
    r = run("detect", "--bundle", str(bundle), "--backend", backend, *extra, *files)
    assert r.returncode == 0, r.stderr
    return [json.loads(line)["detections"] for line in r.stdout.splitlines()]


def _box(d: Dict[str, Any]) -> Box:
    return Box(**d["box"])


def _match(reference: List[Dict[str, Any]], other: List[Dict[str, Any]], min_side: float = 0.0) -> int:
    """Every confident detection of ``reference`` (score well above the threshold, so rounding
    cannot push it under) whose sides are at least ``min_side`` of the frame has one in
    ``other`` with the same label and IoU >= 0.9. Returns how many were compared."""
    compared = 0
    for d in reference:
        a = _box(d)
        if d["score"] < 0.55 or min(a.xmax - a.xmin, a.ymax - a.ymin) < min_side:
            continue
        ious = [a.iou(_box(o)) for o in other if o["label"] == d["label"]]
        assert ious and max(ious) >= 0.9, f"{d} has no match (IoUs {ious})"
        compared += 1
    return compared


@pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="no openvino")
@pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None, reason="no onnxruntime")
def test_detect_agrees_across_tflite_openvino_onnx(shapes_bundle: Path, tmp_path: Path) -> None:
    """One bundle through every CPU runtime on synthetic frames: the same detections.

    The float runtimes (ONNX, OpenVINO FP16, OpenCV) must agree on every confident box. The
    int8 TFLite model writes each normalised coordinate in steps of 1/255, so on a box narrower
    than a tenth of the frame one step alone can cost more than 5% IoU; for it the IoU >= 0.9
    rule applies to boxes whose sides are at least 15% of the frame, and labels must agree on all.
    """
    files = write_frames(tmp_path, seed=2024, n=8)
    onnx = detect(shapes_bundle, "onnx", files)
    assert sum(len(r) for r in onnx) >= 8, "the test model should find objects on synthetic frames"
    for other in (
        detect(shapes_bundle, "openvino", files, "--device", "CPU"),
        detect(shapes_bundle, "opencv", files),
    ):
        for ref, got in zip(onnx, other):
            _match(ref, got)
            _match(got, ref)
    compared = 0
    for ref, got in zip(onnx, detect(shapes_bundle, "tflite", files)):
        compared += _match(ref, got, min_side=0.15)
        _match(got, ref, min_side=0.15)
        assert {d["label"] for d in ref if d["score"] >= 0.55} <= {d["label"] for d in got}
    assert compared >= 5


def test_detect_prints_one_message_per_image(shapes_bundle: Path, images: List[str]) -> None:
    r = run("detect", "--bundle", str(shapes_bundle), "--backend", "tflite", *images)
    assert r.returncode == 0, r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [m["file"] for m in lines] == images
    for m in lines:
        assert set(m) == {"file", "model", "backend", "image", "latency_ms", "detections"}
        assert m["model"] == {"name": "shapes", "version": "1.0.0"} and m["backend"] == "tflite"
        assert m["image"] == {"width": 640, "height": 480}
        assert m["latency_ms"]["total"] >= m["latency_ms"]["inference"] > 0
        for d in m["detections"]:
            assert d["label"] in ("circle", "square", "triangle")
            assert d["class_id"] == ["circle", "square", "triangle"].index(d["label"])
            b = d["box"]
            assert 0 <= b["xmin"] < b["xmax"] <= 1 and 0 <= b["ymin"] < b["ymax"] <= 1
    assert sum(len(m["detections"]) for m in lines) >= 3


def test_detect_boxes_match_the_scene(shapes_bundle: Path, tmp_path: Path) -> None:
    """The ground truth of the synthetic frames is found (IoU >= 0.5) for most objects."""
    files = write_frames(tmp_path, seed=5, n=10)
    r = run("detect", "--bundle", str(shapes_bundle), "--backend", "tflite", *files)
    gen = SceneGenerator(width=640, height=480, seed=5)
    found = total = 0
    for i, line in enumerate(r.stdout.splitlines()):
        dets = json.loads(line)["detections"]
        for t in gen.render(i)[1]:
            total += 1
            g = Box(t.box[0] / 640, t.box[1] / 480, t.box[2] / 640, t.box[3] / 480)
            if any(d["label"] == t.label and g.iou(Box(**d["box"])) >= 0.5 for d in dets):
                found += 1
    assert total and found / total >= 0.7


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bundle", "/nonexistent"], "edge-agent: /nonexistent: not a bundle directory"),
        (["--backend", "tpu"], "edge-agent: unknown backend 'tpu'"),
        pytest.param(
            ["--backend", "openvino", "--device", "MYRIAD"],
            "device MYRIAD not found",
            marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="no openvino"),
        ),
    ],
)
def test_detect_errors_are_one_line(
    shapes_bundle: Path, images: List[str], args: List[str], message: str
) -> None:
    full = ["detect", "--bundle", str(shapes_bundle), *args, images[0]]
    if args[0] == "--bundle":
        full = ["detect", *args, images[0]]
    r = run(*full)
    assert r.returncode == 1
    assert message in r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_detect_bad_image_is_reported_and_others_still_run(
    shapes_bundle: Path, images: List[str], tmp_path: Path
) -> None:
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not a jpeg")
    r = run(
        "detect", "--bundle", str(shapes_bundle), "--backend", "onnx", str(junk), images[0], "/no/such.png"
    )
    assert r.returncode == 1
    assert f"edge-agent: {junk}: not an image OpenCV can read" in r.stderr
    assert "edge-agent: /no/such.png: no such file" in r.stderr
    assert len(r.stdout.splitlines()) == 1 and "Traceback" not in r.stderr


def test_devices_reports_backends_and_auto(shapes_bundle: Path) -> None:
    r = run("devices", "--bundle", str(shapes_bundle))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    names = {b["backend"]: b for b in out["backends"]}
    assert {"tflite", "coral", "openvino", "onnx", "opencv"} <= set(names)
    assert names["tflite"]["available"] is True
    assert out["auto"]["backend"] == "tflite"
    assert any(s.startswith("coral: the bundle has no edgetpu artifact") for s in out["auto"]["skipped"])


def test_bench_prints_figures(shapes_bundle: Path) -> None:
    r = run("bench", "--bundle", str(shapes_bundle), "--backend", "tflite", "--seconds", "1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["backend"] == "tflite" and out["artifact"]["precision"] == "int8"
    assert out["throughput_fps"] > 0 and out["throughput_inferences"] >= 1
    lat = out["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert out["input"] == {"shape": [1, 160, 160, 3], "dtype": "uint8"}
