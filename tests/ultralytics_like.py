"""Ultralytics-style exports of a tiny detector whose outputs are known, for the "bring your own
model" tests: the files are laid out, named and annotated the way ultralytics' exporter does it
(ultralytics/engine/exporter.py), without ultralytics or torch.

The detector (one TF function, so every export is the same model): a 64x64 RGB input in [0, 1]
split into a 4x4 grid of 16-pixel cells, one anchor per cell (N = 16). Each anchor's box is its
cell (cx, cy, w, h), in input pixels for ONNX and OpenVINO and divided by 64 for TFLite, as
Ultralytics' Detect head exports them. Its class scores are the cell's mean colour: class c
scores ``mean(channel c) - (mean of the two others) / 2``, clipped to [0, 1], so a pure red,
green or blue patch filling a cell scores 1 for its class and a grey one 0. Output
``[1, 4+3, 16]``.

``scene()`` draws patches that, once the frame is letterboxed into the input as Ultralytics does
(pad 114), fill exactly one cell each: the detections they must give are ``EXPECTED``. With a
stretch instead of a letterbox, or pixel and normalised boxes confused, they come out elsewhere.
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2
import numpy as np
import yaml

SIZE = 64  # model input, square like Ultralytics' default imgsz
CELL = 16
GRID = SIZE // CELL
N = GRID * GRID
NAMES = {0: "red", 1: "green light", 2: "blue"}  # a space, as in COCO's "traffic light"
STEM = "yolov8t"  # what `yolo export model=yolov8t.pt` names its files

# The test frame: 128x96 (4:3), letterboxed into 64x64 at scale 0.5 with 8 rows of padding at
# the top and bottom. Patches in frame pixels (x0, y0, x1, y1) -> the cell each fills.
FRAME_W, FRAME_H = 128, 96
BACKGROUND = (40, 40, 40)
PATCHES = {  # label: (BGR colour, frame box in pixels)
    "red": ((0, 0, 255), (64, 16, 96, 48)),  # input x 32..48, y 16..32: cell row 1, col 2
    "green light": ((0, 255, 0), (0, 48, 32, 80)),  # input x 0..16, y 32..48: row 2, col 0
    "blue": ((255, 0, 0), (32, 16, 64, 48)),  # input x 16..32, y 16..32: row 1, col 1
}
# The detections (label -> box normalised to the frame: xmin, ymin, xmax, ymax) the scene gives.
EXPECTED = {
    label: (x0 / FRAME_W, y0 / FRAME_H, x1 / FRAME_W, y1 / FRAME_H)
    for label, (_, (x0, y0, x1, y1)) in PATCHES.items()
}


def metadata(args: Dict[str, Any]) -> Dict[str, Any]:
    """``Exporter.metadata`` as recent ultralytics builds it (``args``: the export arguments
    the format takes)."""
    return {
        "description": "Ultralytics YOLOv8t model trained on colours.yaml",
        "author": "Ultralytics",
        "date": "2026-11-02T10:00:00.000000",
        "version": "8.3.40",
        "license": "AGPL-3.0 License (https://ultralytics.com/license)",
        "docs": "https://docs.ultralytics.com",
        "stride": CELL,
        "task": "detect",
        "batch": 1,
        "imgsz": [SIZE, SIZE],
        "names": dict(NAMES),
        "args": args,
        "channels": 3,
        "end2end": False,
    }


def cell_boxes() -> np.ndarray:
    """[N, 4] cx, cy, w, h in input pixels, anchors in row-major order."""
    centres = (np.arange(GRID) + 0.5) * CELL
    return np.array(
        [[centres[c], centres[r], CELL, CELL] for r in range(GRID) for c in range(GRID)], np.float32
    )


def detector(normalized: bool) -> Any:
    """The detector as a TF function taking NHWC [1, 64, 64, 3] and returning
    ``{"output0": [1, 7, 16]}``."""
    import tensorflow as tf

    boxes = cell_boxes()[None] / (SIZE if normalized else 1.0)
    mix = np.full((3, 3), -0.5, np.float32)
    np.fill_diagonal(mix, 1.0)

    @tf.function(input_signature=[tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32, name="images")])
    def serve(x: Any) -> Any:
        # The constants are made inside the function: captured ones would become ONNX inputs.
        cells = tf.nn.avg_pool2d(x, CELL, CELL, "VALID")
        scores = tf.clip_by_value(
            tf.nn.conv2d(cells, tf.constant(mix.reshape(1, 1, 3, 3)), 1, "VALID"), 0.0, 1.0
        )
        rows = tf.concat([tf.constant(boxes), tf.reshape(scores, (1, N, 3))], axis=2)
        return {"output0": tf.transpose(rows, (0, 2, 1))}

    return serve


def calibration() -> Iterator[List[np.ndarray]]:
    """int8 calibration frames: cells of pure and mixed colours, so every score from 0 to 1 is seen."""
    rng = np.random.default_rng(0)
    palette = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.45, 0.45, 0.45], [0.1, 0.1, 0.1]], np.float32)
    for _ in range(32):
        cells = palette[rng.integers(0, len(palette), (GRID, GRID))]
        yield [np.kron(cells, np.ones((CELL, CELL, 1), np.float32))[None]]


def add_tflite_metadata(path: Path, meta: Dict[str, Any], legacy: bool = False) -> None:
    """What ``Exporter._add_tflite_metadata`` does: a zip appended to the .tflite holding
    ``metadata.json``. ``legacy``: what versions using tflite_support left there instead, the
    associated file ``temp_meta.txt`` holding ``str(metadata)``."""
    with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
        if legacy:
            zf.writestr("temp_meta.txt", str(meta))
        else:
            zf.writestr("metadata.json", json.dumps(meta, indent=2))


def export_onnx(out: Path, with_metadata: bool = True) -> Path:
    """``yolo export format=onnx``: NCHW input "images", output "output0", pixel boxes, and
    every metadata key in ``metadata_props`` as ``str(value)``."""
    import onnx
    import tf2onnx

    serve = detector(normalized=False)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{STEM}.onnx"
    model, _ = tf2onnx.convert.from_function(
        serve, input_signature=serve.input_signature, opset=13, inputs_as_nchw=["images"]
    )
    if with_metadata:
        meta = metadata(
            {"batch": 1, "dynamic": False, "half": False, "opset": None, "simplify": True, "nms": False}
        )
        for key, value in meta.items():
            prop = model.metadata_props.add()
            prop.key, prop.value = key, str(value)
    onnx.save(model, str(path))
    return path


def export_openvino(out: Path, half: bool = False, yaml_file: bool = True) -> Path:
    """``yolo export format=openvino``: ``STEM_openvino_model/`` with the IR (rt_info
    ``model_info`` as the exporter sets it) and ``metadata.yaml``. Ultralytics converts from
    torch; here the IR comes from an ONNX export without metadata_props, since the converter
    would carry those into rt_info ``framework``, where Ultralytics' own IR has nothing."""
    import openvino as ov

    plain = export_onnx(out / "plain-onnx", with_metadata=False)
    folder = out / f"{STEM}_openvino_model"
    folder.mkdir(parents=True)
    model = ov.convert_model(str(plain))
    model.set_rt_info("YOLO", ["model_info", "model_type"])
    model.set_rt_info(True, ["model_info", "reverse_input_channels"])
    model.set_rt_info(114, ["model_info", "pad_value"])
    model.set_rt_info([255.0], ["model_info", "scale_values"])
    model.set_rt_info(0.7, ["model_info", "iou_threshold"])
    model.set_rt_info([v.replace(" ", "_") for v in NAMES.values()], ["model_info", "labels"])
    model.set_rt_info("fit_to_window_letterbox", ["model_info", "resize_type"])
    ov.save_model(model, str(folder / f"{STEM}.xml"), compress_to_fp16=half)
    if yaml_file:
        meta = metadata({"batch": 1, "dynamic": False, "half": half, "int8": False, "nms": False})
        with open(folder / "metadata.yaml", "w", encoding="utf-8") as f:
            yaml.safe_dump(meta, f, sort_keys=False, allow_unicode=True)
    return folder


TFLITE_KINDS = ("float32", "float16", "int8", "full_integer_quant")


def export_tflite(out: Path, kind: str, legacy_metadata: bool = False) -> Path:
    """One of the .tflite files ``yolo export format=tflite`` leaves in ``STEM_saved_model/``,
    normalised boxes, metadata zipped on: ``float32``, ``float16`` (float16 weights), ``int8``
    (int8 inside, float32 in and out) or ``full_integer_quant`` (int8 in and out)."""
    import tensorflow as tf

    folder = out / f"{STEM}_saved_model"
    folder.mkdir(parents=True, exist_ok=True)
    serve = detector(normalized=True)
    conv = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], serve)
    if kind == "float16":
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.target_spec.supported_types = [tf.float16]
    elif kind in ("int8", "full_integer_quant"):
        conv.optimizations = [tf.lite.Optimize.DEFAULT]
        conv.representative_dataset = calibration
        if kind == "full_integer_quant":
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            conv.inference_input_type = tf.int8
            conv.inference_output_type = tf.int8
    path = folder / f"{STEM}_{kind}.tflite"
    path.write_bytes(conv.convert())
    args = {"batch": 1, "half": kind == "float16", "int8": "int" in kind, "nms": False}
    add_tflite_metadata(path, metadata(args), legacy=legacy_metadata)
    # export_saved_model leaves the metadata beside the files too
    with open(folder / "metadata.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(metadata(args), f, sort_keys=False, allow_unicode=True)
    return path


@dataclass(frozen=True)
class Exports:
    onnx: Path
    openvino: Path  # the *_openvino_model/ folder
    tflite: Dict[str, Path]  # TFLITE_KINDS -> file


def build(out: Path) -> Exports:
    """Every export of the detector, in ``out`` (a few seconds, most of it importing TF)."""
    return Exports(
        onnx=export_onnx(out),
        openvino=export_openvino(out),
        tflite={kind: export_tflite(out, kind) for kind in TFLITE_KINDS},
    )


def scene(path: Path) -> Path:
    """The test frame (PNG, so the pixels are exactly these) with its three patches."""
    frame = np.full((FRAME_H, FRAME_W, 3), BACKGROUND, np.uint8)
    for colour, (x0, y0, x1, y1) in PATCHES.values():
        frame[y0:y1, x0:x1] = colour
    cv2.imwrite(str(path), frame)
    return path


def empty_scene(path: Path) -> Path:
    cv2.imwrite(str(path), np.full((FRAME_H, FRAME_W, 3), BACKGROUND, np.uint8))
    return path


def boxes_by_label(detections: List[Dict[str, Any]]) -> Dict[str, Tuple[float, ...]]:
    """A detection message's detections as label -> (xmin, ymin, xmax, ymax)."""
    out = {}
    for d in detections:
        b = d["box"]
        out[d["label"]] = (b["xmin"], b["ymin"], b["xmax"], b["ymax"])
    return out
