"""Builds the small model files the runtime tests use; they are shipped, already built, in
``tests/fixtures/models/`` (see its README.md), so tests never train. TensorFlow, dev environment
only; rerun it only when the trainer's export or the bundle format changes, then commit the result.

* ``shapes/``: made by cloud_trainer (synth, train, export): the trainer's detector (yolov8
  decoder, normalised boxes) as int8 TFLite, ONNX (NCHW input) and OpenVINO IR FP16, plus
  ``reference.npz`` (ONNX and current OpenVINO outputs on fixed frames) for the OpenVINO 2022.3
  check (``scripts/check_ov2022.py``).
* ``shapes-fp32/``: the same trained network with a float TFLite artifact (and the same ONNX and
  IR files), on which every CPU runtime must give the same detections.
* ``ssd/``: a TFLite model ending in the real TFLite_Detection_PostProcess custom op. Its box
  encodings are zero (so each box is its anchor) and its class scores are the mean colour of
  each anchor's cell: a red patch in a cell is a known detection of class 0 at a known box.
* ``ovssd/``: the same idea as OpenVINO IR with a DetectionOutput op.

The shipped set was made, from the repository root after ``make venv``, by::

    .venv/bin/python -m tests.models.build tests/fixtures/models

It replaces those four directories and nothing else (the training works in a temporary
directory). The dataset and the seeds are fixed, but training is not bit-exact across machines
(TensorFlow's kernels differ between CPUs), which is why the result is shipped rather than
rebuilt: the tests compare runtimes on these exact files.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import List

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from cloud_trainer.package import artifact_entry, write_bundle
from edge_agent.preprocess import TensorSpec
from edge_agent.sources.synthetic import SceneGenerator

SHAPES_IMAGES = 800
SHAPES_EPOCHS = 40
SHAPES_IMG = 160


def build_shapes(out: Path, fp32_out: Path, work: Path) -> None:
    """The runtime tests' main bundle, made by cloud_trainer itself: a synthetic dataset, a
    short training at a small input size, and the trainer's export of int8 TFLite, OpenVINO
    IR FP16 and ONNX, each checked by its device runtime; then its float-TFLite twin in
    ``fp32_out``. ``work`` (dataset, checkpoints) is scratch space the caller removes."""
    from cloud_trainer.data import synthesize
    from cloud_trainer.pipeline import export_run
    from cloud_trainer.train import TrainConfig, train

    dataset = synthesize(work / "data", images=SHAPES_IMAGES, seed=11, fmt="yolo")
    cfg = TrainConfig(
        epochs=SHAPES_EPOCHS,
        img_size=SHAPES_IMG,
        batch=32,
        eval_every=SHAPES_EPOCHS,
        seed=1,
        deterministic=True,
    )
    train(dataset, work / "run", cfg, data_path=str(work / "data"))
    export_run(
        work / "run", ["tflite", "openvino", "onnx"], out=out, name="shapes", version="1.0.0", evaluate=False
    )
    # Reference outputs for the OpenVINO 2022.3 check (.ci/run): ONNX and current OpenVINO (f32)
    # on fixed frames, taken through the agent's own pre-processing.
    import onnxruntime as ort
    import openvino as ov

    from edge_agent.bundle import load_bundle
    from edge_agent.preprocess import Preprocessor

    bundle = load_bundle(out)
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    pre = Preprocessor(bundle.manifest.input, TensorSpec(inp.name, tuple(inp.shape), np.dtype(np.float32)))
    gen = SceneGenerator(width=640, height=480, seed=99)
    frames = np.concatenate([pre(gen.render(i)[0])[0] for i in range(4)])
    refs = [sess.run(None, {inp.name: frames[i : i + 1]})[0] for i in range(4)]
    compiled = ov.Core().compile_model(
        str(out / "model_fp16.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    ov_refs = [compiled(frames[i : i + 1])[0] for i in range(4)]
    np.savez_compressed(
        out / "reference.npz", inputs=frames, outputs=np.stack(refs), openvino=np.stack(ov_refs)
    )
    _float_tflite_variant(work / "run", out, fp32_out)


def _float_tflite_variant(run: Path, bundle: Path, out: Path) -> None:
    """The same trained network with a float TFLite artifact: the bundle on which every CPU
    runtime must give the same detections (int8 is compared separately, with its rounding)."""
    import json

    from cloud_trainer.export import tflite_fp32
    from cloud_trainer.train import load_model

    if out.exists():
        shutil.rmtree(out)
    out.mkdir()
    for name in ("model.onnx", "model_fp16.xml", "model_fp16.bin"):
        shutil.copyfile(bundle / name, out / name)
    _, _, export = load_model(run)
    tflite_fp32(export, out)
    doc = json.loads((bundle / "manifest.json").read_text())
    write_bundle(
        out,
        name="shapes-fp32",
        version=doc["version"],
        labels=doc["labels"],
        input=doc["input"],
        decoder=doc["decoder"],
        artifacts=[
            artifact_entry("tflite", "fp32", out / "model_fp32.tflite"),
            artifact_entry("openvino", "fp16", out / "model_fp16.xml", weights=out / "model_fp16.bin"),
            artifact_entry("onnx", "fp32", out / "model.onnx"),
        ],
        defaults=doc["defaults"],
    )


# --- SSD with TFLite_Detection_PostProcess ---------------------------------------------------
SSD_CELLS = 4
C = 3  # colour classes of the SSD models: red, green, blue
SSD_IMG = 64


def cell_anchors(cells: int) -> np.ndarray:
    """[cells*cells, 4] anchors (ycenter, xcenter, h, w), row-major over the grid."""
    out = []
    for r in range(cells):
        for c in range(cells):
            out.append(((r + 0.5) / cells, (c + 0.5) / cells, 1.0 / cells, 1.0 / cells))
    return np.asarray(out, np.float32)


def build_ssd(out: Path) -> None:
    import tensorflow as tf

    anchors = cell_anchors(SSD_CELLS)
    n = len(anchors)
    sig = " ".join(
        [
            'name: "TFLite_Detection_PostProcess"',
            'attr { key: "max_detections" value { i: 10 } }',
            'attr { key: "max_classes_per_detection" value { i: 1 } }',
            'attr { key: "detections_per_class" value { i: 100 } }',
            'attr { key: "use_regular_nms" value { b: false } }',
            'attr { key: "nms_score_threshold" value { f: 0.3 } }',
            'attr { key: "nms_iou_threshold" value { f: 0.5 } }',
            'attr { key: "y_scale" value { f: 10.0 } }',
            'attr { key: "x_scale" value { f: 10.0 } }',
            'attr { key: "h_scale" value { f: 5.0 } }',
            'attr { key: "w_scale" value { f: 5.0 } }',
            f'attr {{ key: "num_classes" value {{ i: {C} }} }}',
        ]
    )

    class SSD(tf.Module):
        @tf.function(experimental_implements=sig)
        def postprocess(self, boxes, scores, anchors_):  # type: ignore[no-untyped-def]
            # The converter replaces this body with the custom op; these are placeholders.
            return (
                tf.constant(0.0, name="boxes"),
                tf.constant(0.0, name="classes"),
                tf.constant(0.0, name="scores"),
                tf.constant(0.0, name="num_detections"),
            )

        @tf.function(input_signature=[tf.TensorSpec((1, SSD_IMG, SSD_IMG, 3), tf.float32, name="image")])
        def serve(self, x):  # type: ignore[no-untyped-def]
            k = SSD_IMG // SSD_CELLS
            mean = tf.nn.avg_pool2d(x, k, k, "VALID")  # [1, cells, cells, 3] mean colour per cell
            # A class is "this channel clearly dominates": background column first (SSD convention).
            dom = tf.nn.relu(mean - tf.reduce_mean(mean, -1, keepdims=True)) * 1.5
            scores = tf.reshape(dom, (1, n, C))
            scores = tf.concat([tf.zeros((1, n, 1)), scores], -1)
            boxes = tf.zeros((1, n, 4))
            return self.postprocess(boxes, scores, tf.constant(anchors))

    m = SSD()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([m.serve.get_concrete_function()], m)
    conv.allow_custom_ops = True
    out.mkdir(parents=True, exist_ok=True)
    (out / "ssd.tflite").write_bytes(conv.convert())
    write_bundle(
        out,
        name="colour-ssd",
        version="1.0.0",
        labels=["red", "green", "blue"],
        input={"width": SSD_IMG, "height": SSD_IMG, "color": "rgb", "resize": "stretch", "range": [0, 1]},
        # The op drops the background column itself: class 0 is the first label.
        decoder={"type": "ssd", "params": {"label_offset": 0}},
        artifacts=[artifact_entry("tflite", "fp32", out / "ssd.tflite")],
        defaults={"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 10},
    )


def build_openvino_ssd(out: Path) -> None:
    """DetectionOutput, built with OpenVINO's graph API from opset ops 2022.3 knows."""
    import openvino as ov
    import openvino.opset8 as ops

    n = SSD_CELLS * SSD_CELLS
    k = SSD_IMG // SSD_CELLS
    image = ops.parameter([1, 3, SSD_IMG, SSD_IMG], np.float32, name="image")
    mean = ops.avg_pool(image, [k, k], [0, 0], [0, 0], [k, k], exclude_pad=True)  # [1,3,c,c]
    dom = ops.relu(ops.subtract(mean, ops.reduce_mean(mean, np.array([1]), keep_dims=True)))
    dom = ops.multiply(dom, np.float32(1.5))
    per_anchor = ops.reshape(ops.transpose(dom, np.array([0, 2, 3, 1])), np.array([1, n * C]), False)
    # class_preds per anchor: background then the three colours
    bg = ops.constant(np.zeros((1, n, 1), np.float32))
    cls = ops.concat([bg, ops.reshape(per_anchor, np.array([1, n, C]), False)], 2)
    cls = ops.reshape(cls, np.array([1, n * (C + 1)]), False)
    box_logits = ops.constant(np.zeros((1, n * 4), np.float32))
    a = cell_anchors(SSD_CELLS)  # yc, xc, h, w -> xmin, ymin, xmax, ymax
    priors = np.stack(
        [a[:, 1] - a[:, 3] / 2, a[:, 0] - a[:, 2] / 2, a[:, 1] + a[:, 3] / 2, a[:, 0] + a[:, 2] / 2], -1
    )
    proposals = ops.constant(
        np.concatenate([priors.reshape(1, 1, -1), np.full((1, 1, n * 4), 0.1, np.float32)], 1)
    )
    attrs = {
        "keep_top_k": [10],
        "nms_threshold": 0.5,
        "background_label_id": 0,
        "top_k": 100,
        "code_type": "caffe.PriorBoxParameter.CENTER_SIZE",
        "share_location": True,
        "confidence_threshold": 0.3,
        "normalized": True,
        "variance_encoded_in_target": False,
    }
    det = ops.detection_output(box_logits, cls, proposals, attrs, name="detection_out")
    model = ov.Model([det.output(0)], [image], "colour_ssd")
    out.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(out / "ovssd.xml"), compress_to_fp16=False)
    write_bundle(
        out,
        name="colour-ovssd",
        version="1.0.0",
        labels=["red", "green", "blue"],
        input={"width": SSD_IMG, "height": SSD_IMG, "color": "rgb", "resize": "stretch", "range": [0, 1]},
        decoder={"type": "openvino-ssd", "params": {"label_offset": 1}},
        artifacts=[artifact_entry("openvino", "fp32", out / "ovssd.xml", weights=out / "ovssd.bin")],
        defaults={"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 10},
    )


BUNDLES = ("shapes", "shapes-fp32", "ssd", "ovssd")


def build_all(out: Path) -> List[str]:
    """Build every test bundle into ``out/<name>``, replacing those directories only. Everything
    is made in a temporary directory first and moved into place at the end, so an interrupted
    build leaves the previous set whole."""
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgewatch-test-models-") as tmp:
        staged = Path(tmp) / "out"
        build_ssd(staged / "ssd")
        build_openvino_ssd(staged / "ovssd")
        (staged / "shapes").mkdir()
        build_shapes(staged / "shapes", staged / "shapes-fp32", Path(tmp) / "work")
        for name in BUNDLES:
            if (out / name).exists():
                shutil.rmtree(out / name)
            shutil.copytree(staged / name, out / name)
    return list(BUNDLES)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.models.build OUT_DIR   (the shipped set: tests/fixtures/models)")
    target = Path(sys.argv[1])
    print("built", build_all(target), "in", target)
