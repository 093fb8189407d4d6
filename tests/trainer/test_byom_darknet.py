"""`cloud-trainer package --model` on darknet YOLO models (issue 10, point 1, the darknet kind):
the cfg and weights packaged as they are for OpenCV's darknet reader, decoder yolov2 for a
[region] layer and yolov3 for [yolo] layers, anchors and masks from the cfg.

The models are written here: a tiny cfg and its weights in darknet's binary format (header,
then each convolution's biases and weights), built so that the output is known (byom_kit: a
red or blue cell of the image is a detection whose box is that cell). The yolov3 model lists its
fine (4x4) head before its coarse (2x2) one, as YOLOv4's cfgs do, so the masks must be reordered
by grid size for the boxes to come out right.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import pytest

from tests.trainer.byom_kit import (
    artifacts_of,
    detects,
    has_note,
    input_of,
    manifest,
    package,
    refused,
)

NAMES = "red\nblue\n"
INPUT = 32

# Each head convolution reads the max-pooled RGB (0..1) of its cell and writes, per anchor,
# tx, ty, tw, th = 0 (the box is the anchor at the cell's centre), an objectness logit and two
# class logits. Objectness: +10 for its colour, -10 for black, lower for anything else.
OBJ = {"red": ([20.0, -20.0, -20.0], -10.0), "blue": ([-20.0, -20.0, 20.0], -10.0)}
CLASSES = ([10.0, 0.0, -10.0], [-10.0, 0.0, 10.0])  # red, blue logits from (r, g, b)


def head_conv(colours: Tuple[str, ...]) -> Tuple[np.ndarray, np.ndarray]:
    """(biases [F], weights [F, 3, 1, 1]) of a 1x1 head convolution on RGB, one anchor per entry
    of ``colours`` (the colour that anchor's objectness fires on)."""
    biases: List[float] = []
    weights: List[List[float]] = []
    for colour in colours:
        obj_w, obj_b = OBJ[colour]
        rows = [[0.0, 0.0, 0.0]] * 4 + [obj_w, *CLASSES]
        weights += rows
        biases += [0.0] * 4 + [obj_b, 0.0, 0.0]
    return np.asarray(biases, np.float32), np.asarray(weights, np.float32).reshape(-1, 3, 1, 1)


def write_weights(
    path: Path, convs: List[Tuple[np.ndarray, np.ndarray]], version: Tuple[int, int, int]
) -> Path:
    major, minor, revision = version
    seen = np.array([1000], "<i8" if major * 10 + minor >= 2 else "<i4")
    chunks = [np.array([major, minor, revision], "<i4").tobytes(), seen.tobytes()]
    for biases, weights in convs:  # no batch_normalize: biases, then the weights
        chunks += [biases.astype("<f4").tobytes(), weights.astype("<f4").tobytes()]
    path.write_bytes(b"".join(chunks))
    return path


def yolov3_cfg(net_extra: str = "", yolo_extra: str = "") -> str:
    """A 4x4 head (8-pixel cells, anchor 0: 8x8, red) listed before a 2x2 head (16-pixel cells,
    anchor 1: 16x16, blue)."""
    yolo = "[yolo]\nmask={mask}\nanchors=8,8, 16,16\nclasses=2\nnum=2\n" + yolo_extra
    return "\n".join(
        [
            f"[net]\nwidth={INPUT}\nheight={INPUT}\nchannels=3\n{net_extra}",
            "[maxpool]\nsize=8\nstride=8\npadding=0\n",
            "[convolutional]\nfilters=7\nsize=1\nstride=1\npad=1\nactivation=linear\n",
            yolo.format(mask=0),
            "[route]\nlayers=-3\n",
            "[maxpool]\nsize=2\nstride=2\n",
            "[convolutional]\nfilters=7\nsize=1\nstride=1\npad=1\nactivation=linear\n",
            yolo.format(mask=1),
        ]
    )


def region_cfg() -> str:
    """One 4x4 [region] head, one anchor of one cell."""
    return "\n".join(
        [
            f"[net]\nwidth={INPUT}\nheight={INPUT}\nchannels=3\n",
            "[maxpool]\nsize=8\nstride=8\npadding=0\n",
            "[convolutional]\nfilters=7\nsize=1\nstride=1\npad=1\nactivation=linear\n",
            "[region]\nanchors=1,1\nclasses=2\ncoords=4\nnum=1\nsoftmax=1\n",
        ]
    )


@pytest.fixture
def yolov3(tmp_path: Path) -> Dict[str, Path]:
    src = tmp_path / "src"
    src.mkdir()
    cfg = src / "tiny-yolo.cfg"
    cfg.write_text(yolov3_cfg())
    weights = write_weights(src / "tiny-yolo.weights", [head_conv(("red",)), head_conv(("blue",))], (0, 2, 0))
    (src / "colours.names").write_text(NAMES)
    return {"cfg": cfg, "weights": weights, "names": src / "colours.names"}


def test_yolo_layers_package_as_yolov3_with_masks_ordered_by_grid(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, yolov3: Dict[str, Path]
) -> None:
    out = tmp_path / "bundle"
    err = package(
        capsys, yolov3["cfg"], out, "--weights", str(yolov3["weights"]), "--labels", str(yolov3["names"])
    )
    doc = manifest(out)
    assert doc["name"] == "tiny-yolo" and doc["labels"] == ["red", "blue"]
    # The 2x2 head comes second in the cfg but first in the decoder's order.
    assert doc["decoder"] == {
        "type": "yolov3",
        "params": {"anchors": [[8.0, 8.0], [16.0, 16.0]], "masks": [[1], [0]]},
    }
    assert doc["input"] == input_of(INPUT, "rgb", "stretch", [0.0, 1.0])
    assert artifacts_of(doc) == [("opencv", "tiny-yolo.weights", "tiny-yolo.cfg", "fp32")]
    assert has_note(err, "decoder yolov3", "2x2 mask [1]", "4x4 mask [0]")
    assert has_note(err, "labels: 2 from", "colours.names")
    assert has_note(err, "input: 32x32", "[net] width, height")
    assert has_note(err, "resize stretch", "letter_box")
    assert has_note(err, "opencv: verified")
    # An 8-pixel red cell on the 4x4 grid and a 16-pixel blue cell on the 2x2 grid, in a frame
    # twice the input (stretched by the agent).
    detects(capsys, out, tmp_path / "cells.png", (64, 64), 4, {(1, 3): "red"})
    detects(capsys, out, tmp_path / "coarse.png", (64, 64), 2, {(1, 0): "blue"})


def test_a_region_layer_packages_as_yolov2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "regions.cfg"
    cfg.write_text(region_cfg())
    # Old header (version 0.1: a 4-byte "seen"), the weights found beside the cfg by name.
    write_weights(tmp_path / "regions.weights", [head_conv(("red",))], (0, 1, 0))
    (tmp_path / "voc.names").write_text(NAMES)
    out = tmp_path / "bundle"
    err = package(capsys, cfg, out, "--labels", str(tmp_path / "voc.names"))
    doc = manifest(out)
    assert doc["decoder"] == {"type": "yolov2", "params": {"anchors": [[1.0, 1.0]]}}
    assert has_note(err, "decoder yolov2", "[region]", "grid cells")
    # One anchor fires on red only: the blue cell is not a detection (its objectness is low).
    detects(
        capsys,
        out,
        tmp_path / "cells.png",
        (48, 48),
        4,
        {(0, 0): "red", (2, 3): "red", (3, 1): "blue"},
        expected={"red": [(0, 0), (2, 3)]},
    )


def test_letter_box_and_the_weights_given_as_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cfg = tmp_path / "boxed.cfg"
    cfg.write_text(yolov3_cfg(net_extra="letter_box=1\n"))
    weights = write_weights(
        tmp_path / "boxed.weights", [head_conv(("red",)), head_conv(("blue",))], (0, 2, 0)
    )
    (tmp_path / "c.names").write_text(NAMES)
    out = tmp_path / "bundle"
    err = package(capsys, weights, out, "--labels", str(tmp_path / "c.names"))  # the cfg beside it
    doc = manifest(out)
    assert (doc["input"]["resize"], doc["input"]["pad_value"]) == ("letterbox", 127)
    assert has_note(err, "resize letterbox", "letter_box=1")
    # A square frame letterboxes like it stretches: the same boxes.
    detects(capsys, out, tmp_path / "cells.png", (32, 32), 4, {(2, 2): "red"})


def test_refusals_name_the_file_and_what_settles_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, yolov3: Dict[str, Path]
) -> None:
    cfg, weights, names = yolov3["cfg"], yolov3["weights"], yolov3["names"]
    out = tmp_path / "bundle"
    line = refused(capsys, cfg, out, "--weights", str(weights))
    assert f"{cfg}: no labels" in line and "--labels" in line
    three = tmp_path / "three.names"
    three.write_text("red\nblue\ngreen\n")
    line = refused(capsys, cfg, out, "--weights", str(weights), "--labels", str(three))
    assert f"{three}: 3 labels" in line and "classes=2" in line
    short = tmp_path / "short.weights"
    short.write_bytes(weights.read_bytes()[:-4])
    line = refused(capsys, cfg, out, "--weights", str(short), "--labels", str(names))
    assert f"{short}: " in line and "bytes, but tiny-yolo.cfg needs" in line and "another cfg" in line
    line = refused(capsys, cfg, out, "--weights", str(weights), "--labels", str(names), "--decoder", "yolov2")
    assert "--decoder yolov2 does not fit" in line and "yolov3" in line
    scaled = tmp_path / "scaled.cfg"
    scaled.write_text(yolov3_cfg(yolo_extra="scale_x_y=1.05\n"))
    line = refused(capsys, scaled, out, "--weights", str(weights), "--labels", str(names))
    assert f"{scaled}:" in line and "scale_x_y" in line


def test_a_cfg_without_its_weights_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cfg = tmp_path / "alone.cfg"
    cfg.write_text(region_cfg())
    line = refused(capsys, cfg, tmp_path / "bundle")
    assert f"{cfg}: its weights {tmp_path / 'alone.weights'} are missing; give --weights FILE" in line
