"""`cloud-trainer package --model` on OpenVINO IR detectors whose output is DetectionOutput
[1, 1, N, 7] (issue 10, point 1, the openvino_ir kind): Open Model Zoo style (BGR pixels 0..255,
nothing in rt_info, labels given without the background) and Model API style (rt_info
model_info with labels, mean/scale and reverse_input_channels).

The IRs are built here with OpenVINO's opset (a DetectionOutput over one prior per grid cell,
zero box regression, class scores from each cell's colour: byom_kit), saved with
ov.save_model, so that the right detections are known: a wrong colour order finds blue where red
is, a wrong range finds nothing, a wrong label offset names the wrong class.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest

from cloud_trainer.byom import ModelFiles, package_model
from cloud_trainer.errors import PackageError
from tests.trainer.byom_kit import (
    artifacts_of,
    detects,
    has_note,
    input_of,
    manifest,
    package,
    refused,
)

ov = pytest.importorskip("openvino")
ops = pytest.importorskip("openvino.opset8")

SIZE, CELLS = 32, 4


def cell_priors(cells: int) -> np.ndarray:
    """[cells*cells, 4] priors (xmin, ymin, xmax, ymax), one per grid cell, row-major."""
    out = [
        (c / cells, r / cells, (c + 1) / cells, (r + 1) / cells) for r in range(cells) for c in range(cells)
    ]
    return np.asarray(out, np.float32)


def build_ir(
    path: Path,
    *,
    order: str = "bgr",
    scale: float = 255.0,
    background: int = 0,
    model_info: Optional[Dict[str, str]] = None,
    fp16: bool = False,
) -> Path:
    """An IR taking ``order`` pixels divided by ``scale`` in NCHW, whose DetectionOutput finds
    pure red (class "red") and pure blue ("blue") cells; ``background`` is the op's
    background_label_id (0: classes are [background, red, blue]; -1: [red, blue])."""
    n = CELLS * CELLS
    image = ops.parameter([1, 3, SIZE, SIZE], np.float32, name="image")
    k = SIZE // CELLS
    p = ops.multiply(
        ops.avg_pool(image, [k, k], [0, 0], [0, 0], [k, k], exclude_pad=True), np.float32(1 / scale)
    )
    r, g, b = (ops.gather(p, np.array([order.index(c)]), np.array(1)) for c in "rgb")
    one = np.float32(1.0)
    red = ops.multiply(ops.multiply(r, ops.subtract(one, g)), ops.subtract(one, b))
    blue = ops.multiply(ops.multiply(b, ops.subtract(one, g)), ops.subtract(one, r))
    scores = [red, blue] if background < 0 else [ops.multiply(red, np.float32(0.0)), red, blue]
    classes = len(scores)
    per_cell = ops.transpose(ops.concat(scores, 1), np.array([0, 2, 3, 1]))  # [1, c, c, classes]
    conf = ops.reshape(per_cell, np.array([1, n * classes]), False)
    priors = cell_priors(CELLS).reshape(1, 1, -1)
    proposals = ops.constant(np.concatenate([priors, np.full_like(priors, 0.1)], 1))
    attrs = {
        "keep_top_k": [10],
        "nms_threshold": 0.5,
        "background_label_id": background,
        "top_k": 100,
        "code_type": "caffe.PriorBoxParameter.CENTER_SIZE",
        "share_location": True,
        "confidence_threshold": 0.3,
        "normalized": True,
        "variance_encoded_in_target": False,
    }
    box_logits = ops.constant(np.zeros((1, n * 4), np.float32))
    det = ops.detection_output(box_logits, conf, proposals, attrs, name="detection_out")
    model = ov.Model([det.output(0)], [image], "cells")
    for key, value in (model_info or {}).items():
        model.set_rt_info(value, ["model_info", key])
    path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(path), compress_to_fp16=fp16)
    return path


def test_an_open_model_zoo_style_ir(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    xml = build_ir(tmp_path / "src" / "cell-detection-0001.xml")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n")
    out = tmp_path / "bundle"
    err = package(capsys, xml, out, "--labels", str(labels))
    doc = manifest(out)
    assert doc["name"] == "cell-detection-0001" and doc["labels"] == ["red", "blue"]
    assert doc["decoder"] == {"type": "openvino-ssd", "params": {"label_offset": 1}}
    assert doc["input"] == input_of(SIZE, "bgr", "stretch", [0.0, 255.0])
    assert doc["defaults"]["max_detections"] == 10
    assert artifacts_of(doc) == [("openvino", "cell-detection-0001.xml", "cell-detection-0001.bin", "fp32")]
    assert has_note(err, "input: 32x32", "[1, 3, 32, 32] (NCHW)")
    assert has_note(err, "range [0, 255], color bgr: assumed", "Open Model Zoo")
    assert has_note(err, "label_offset 1", "background_label_id 0")
    assert has_note(err, "max_detections 10", "keep_top_k")
    assert has_note(err, "openvino: verified")
    detects(
        capsys, out, tmp_path / "cells.png", (64, 48), CELLS, {(0, 3): "red", (2, 0): "blue", (3, 3): "white"}
    )


def test_model_api_rt_info_says_labels_range_colour_and_resize(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    info = {
        "labels": "red blue",
        "mean_values": "0",
        "scale_values": "255",
        "reverse_input_channels": "True",
        "resize_type": "standard",
    }
    xml = build_ir(tmp_path / "api.xml", order="rgb", scale=1.0, background=-1, model_info=info, fp16=True)
    out = tmp_path / "bundle"
    err = package(capsys, xml, out)  # no --labels: the IR says them
    doc = manifest(out)
    assert doc["labels"] == ["red", "blue"]
    assert doc["decoder"]["params"] == {"label_offset": 0}  # no background class
    assert (doc["input"]["color"], doc["input"]["range"], doc["input"]["resize"]) == (
        "rgb",
        [0.0, 1.0],
        "stretch",
    )
    assert doc["artifacts"][0]["precision"] == "fp16"
    assert has_note(err, "labels: 2 from api.xml rt_info model_info/labels")
    assert has_note(err, "range [0.0, 1.0]", "mean_values [0.0], scale_values [255.0]")
    assert has_note(err, "color rgb", "reverse_input_channels True")
    assert has_note(err, "label_offset 0", "background_label_id -1")
    assert has_note(err, "precision fp16")
    detects(capsys, out, tmp_path / "cells.png", (32, 32), CELLS, {(1, 1): "red", (3, 2): "blue"})


@pytest.mark.parametrize(
    "text, suffix",
    [
        ("background\nred\nblue\n", ".txt"),  # the background listed first: left out
        ("item { id: 1 name: 'red' }\nitem { id: 2 name: 'blue' }\n", ".pbtxt"),  # ids from 1
        ("0 background\n1 red\n2 blue\n", ".txt"),  # indexed, the background at 0
    ],
)
def test_label_files_that_number_the_background(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, text: str, suffix: str
) -> None:
    xml = build_ir(tmp_path / "m.xml")
    labels = tmp_path / f"labels{suffix}"
    labels.write_text(text)
    out = tmp_path / "bundle"
    package(capsys, xml, out, "--labels", str(labels))
    doc = manifest(out)
    assert doc["labels"] == ["red", "blue"] and doc["decoder"]["params"] == {"label_offset": 1}
    detects(capsys, out, tmp_path / "cells.png", (32, 32), CELLS, {(0, 0): "red"})


def test_refusals_name_the_file_and_what_settles_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    xml = build_ir(tmp_path / "src" / "m.xml")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n")
    out = tmp_path / "bundle"
    line = refused(capsys, xml, out)
    assert f"{xml}: no labels: the IR carries none (rt_info model_info/labels); give --labels FILE" in line
    three = tmp_path / "three.txt"
    three.write_text("red\nblue\ngreen\n")
    line = refused(capsys, xml, out, "--labels", str(three))
    assert f"{three}: 3 labels, but m.xml's DetectionOutput 'detection_out' detects 2 classes" in line
    line = refused(capsys, xml, out, "--labels", str(labels), "--decoder", "ssd")
    assert f"{xml}: --decoder ssd does not fit" in line and "its decoder is openvino-ssd" in line
    moved = tmp_path / "moved"
    moved.mkdir()
    shutil.copy(xml, moved / "m.xml")  # the .bin stays behind
    line = refused(capsys, moved / "m.xml", out, "--labels", str(labels))
    assert f"its weights {moved / 'm.bin'} are missing; give --weights FILE" in line
    # ... which --weights settles:
    package(capsys, moved / "m.xml", out, "--labels", str(labels), "--weights", str(xml.with_suffix(".bin")))
    assert manifest(out)["artifacts"][0]["weights"] == "m.bin"


def test_an_ir_with_another_output_is_refused_even_with_the_decoder_forced(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    image = ops.parameter([1, 3, 16, 16], np.float32, name="image")
    pooled = ops.avg_pool(image, [4, 4], [0, 0], [0, 0], [4, 4], exclude_pad=True)  # [1, 3, 4, 4]
    out_3d = ops.reshape(pooled, np.array([1, 6, 8]), False)  # the [1, 4+C, N] of a YOLOv8
    xml = tmp_path / "yolo.xml"
    ov.save_model(ov.Model([out_3d.output(0)], [image], "yolo"), str(xml))
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\n")
    line = refused(capsys, xml, tmp_path / "bundle", "--labels", str(labels), "--decoder", "openvino-ssd")
    assert f"{xml}: outputs [1,6,8]; the openvino-ssd decoder takes one DetectionOutput [1, 1, N, 7]" in line


def test_a_bundle_that_fails_verification_is_removed(tmp_path: Path) -> None:
    xml = build_ir(tmp_path / "m.xml")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n")

    def fails(bundle: Path) -> Dict[str, str]:
        assert (bundle / "manifest.json").is_file() and (bundle / "m.bin").is_file()
        raise PackageError(f"{bundle / 'm.xml'}: does not run as described: (a test)")

    for out in (tmp_path / "new", tmp_path / "empty"):
        (tmp_path / "empty").mkdir(exist_ok=True)
        with pytest.raises(PackageError, match="does not run as described"):
            package_model(ModelFiles(xml, labels=labels), out, echo=lambda line: None, verify=fails)
        if out.name == "empty":  # a directory that was there stays, emptied again
            assert out.is_dir() and not any(out.iterdir())
        else:
            assert not out.exists()
