"""Builds the real model files the runtime tests use (TensorFlow, dev environment only).

Until cloud_trainer makes them, these stand in for trainer output:

* ``shapes/``: a tiny anchor-free detector (yolov8 decoder, normalised boxes) trained for a
  minute on the synthetic scene, exported to int8 TFLite, ONNX (NCHW input) and OpenVINO IR
  FP16 (converted from the ONNX file, the path the trainer takes).
* ``ssd/``: a TFLite model ending in the real TFLite_Detection_PostProcess custom op. Its box
  encodings are zero (so each box is its anchor) and its class scores are the mean colour of
  each anchor's cell: a red patch in a cell is a known detection of class 0 at a known box.
* ``ovssd/``: the same idea as OpenVINO IR with a DetectionOutput op.

Run: ``python -m tests.models.build OUT_DIR``. Everything is seeded; the output directory also
gets ``reference.npz`` (ONNX outputs on fixed frames) for the OpenVINO 2022.3 check.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Tuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

from cloud_trainer.package import artifact_entry, write_bundle
from edge_agent.bundle.manifest import InputSpec
from edge_agent.detection import Box
from edge_agent.preprocess import TensorSpec, place, value_lut
from edge_agent.sources.synthetic import SHAPE_LABELS, SceneGenerator

IMG = 160
GRID = IMG // 8
LABELS = list(SHAPE_LABELS)
C = len(LABELS)
INPUT = {
    "width": IMG,
    "height": IMG,
    "color": "rgb",
    "resize": "letterbox",
    "pad_value": 114,
    "range": [0, 1],
}


def scene_data(n: int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """Letterboxed RGB float images and per-cell targets [n, GRID*GRID, 4 + C + 1]."""
    gen = SceneGenerator(width=640, height=480, seed=seed)
    spec = InputSpec(**INPUT)  # type: ignore[arg-type]
    lut = value_lut(spec, TensorSpec("x", (1, IMG, IMG, 3), np.dtype(np.float32)))
    xs = np.zeros((n, IMG, IMG, 3), np.float32)
    ys = np.zeros((n, GRID * GRID, 4 + C + 1), np.float32)
    for i in range(n):
        image, truths = gen.render(i)
        placed, tf_ = place(image, IMG, IMG, "letterbox", 114)
        xs[i] = lut[placed[..., ::-1]]
        for t in truths:
            x0, y0, x1, y1 = t.box
            b = tf_.to_input(
                Box(x0 / image.shape[1], y0 / image.shape[0], x1 / image.shape[1], y1 / image.shape[0])
            )
            cx, cy, w, h = (b.xmin + b.xmax) / 2, (b.ymin + b.ymax) / 2, b.xmax - b.xmin, b.ymax - b.ymin
            cell = int(min(GRID - 1, cy * GRID)) * GRID + int(min(GRID - 1, cx * GRID))
            ys[i, cell, :4] = (cx, cy, w, h)
            ys[i, cell, 4 : 4 + C] = 0
            ys[i, cell, 4 + t.class_id] = 1
            ys[i, cell, -1] = 1
    return xs, ys


def tiny_detector():  # type: ignore[no-untyped-def]
    import tensorflow as tf

    L = tf.keras.layers
    inp = tf.keras.Input((IMG, IMG, 3), batch_size=None, name="images")

    def conv(x, f, s=1, k=3):  # type: ignore[no-untyped-def]
        return L.ReLU(6.0)(L.Conv2D(f, k, strides=s, padding="same")(x))

    x = conv(inp, 16, 2)  # 80
    x = conv(x, 24, 2)  # 40
    x = conv(x, 32, 2)  # 20
    x = conv(x, 48)
    x = L.DepthwiseConv2D(3, padding="same")(x)
    x = conv(x, 64, k=1)
    x = conv(x, 48)
    # Separate box and class convolutions: confident class logits span a far wider range than
    # box logits, and sharing one int8 tensor would coarsen the boxes to the classes' scale.
    box = L.Activation("sigmoid")(L.Conv2D(4, 1, padding="same")(x))
    cls = L.Activation("sigmoid")(L.Conv2D(C, 1, padding="same")(x))
    gy, gx = np.meshgrid(np.arange(GRID), np.arange(GRID), indexing="ij")
    grid = np.stack([gx, gy], -1).reshape(1, GRID, GRID, 2).astype(np.float32)
    # Box centre = (cell + sigmoid) / S; size = sigmoid (normalised): only Add/Mul/Logistic,
    # and every output in 0..1 so one int8 scale fits boxes and scores alike.
    xy = L.Lambda(lambda t: (t[..., :2] + grid) / GRID)(box)
    wh = L.Lambda(lambda t: t[..., 2:4])(box)
    out = L.Concatenate(-1)([xy, wh, cls])
    out = L.Reshape((GRID * GRID, 4 + C))(out)
    train_model = tf.keras.Model(inp, out)
    export = tf.keras.Model(inp, L.Permute((2, 1))(out))  # [1, 4+C, N] as yolov8 exports
    return train_model, export


def detection_loss(y_true, y_pred):  # type: ignore[no-untyped-def]
    import tensorflow as tf

    pos = y_true[..., -1]
    tcls = y_true[..., 4:-1]
    pcls = tf.clip_by_value(y_pred[..., 4:], 1e-6, 1 - 1e-6)
    bce = -(tcls * tf.math.log(pcls) + (1 - tcls) * tf.math.log(1 - pcls))
    weight = 1.0 + 30.0 * pos[..., None]
    cls_loss = tf.reduce_sum(bce * weight) / tf.cast(tf.shape(y_true)[0], tf.float32) / 20.0
    box_err = tf.reduce_sum(tf.abs(y_true[..., :4] - y_pred[..., :4]), -1)
    box_loss = tf.reduce_sum(box_err * pos) / tf.maximum(tf.reduce_sum(pos), 1.0)
    return cls_loss + 20.0 * box_loss


def build_shapes(out: Path, epochs: int = 60, images: int = 768) -> None:
    import tensorflow as tf
    import tf2onnx

    tf.keras.utils.set_random_seed(1)
    xs, ys = scene_data(images, seed=11)
    train_model, export = tiny_detector()
    train_model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss=detection_loss)
    flip = xs[:, :, ::-1, :]
    ys_flip = ys.reshape(-1, GRID, GRID, 4 + C + 1)[:, :, ::-1, :].reshape(ys.shape).copy()
    ys_flip[..., 0] = np.where(ys_flip[..., -1] > 0, 1 - ys_flip[..., 0], 0)
    x_all, y_all = np.concatenate([xs, flip]), np.concatenate([ys, ys_flip])
    train_model.fit(x_all, y_all, batch_size=32, epochs=epochs, verbose=0, shuffle=True)

    out.mkdir(parents=True, exist_ok=True)

    def rep():  # type: ignore[no-untyped-def]
        for i in range(0, 200):
            yield [xs[i : i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(export)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    (out / "model_int8.tflite").write_bytes(conv.convert())

    spec = (tf.TensorSpec((1, IMG, IMG, 3), tf.float32, name="images"),)

    @tf.function(input_signature=spec)
    def serve(x):  # type: ignore[no-untyped-def]
        return {"output0": export(x)}

    tf2onnx.convert.from_function(
        serve, input_signature=spec, opset=13, output_path=str(out / "model.onnx"), inputs_as_nchw=["images"]
    )
    import openvino as ov

    ov.save_model(
        ov.convert_model(str(out / "model.onnx")), str(out / "model_fp16.xml"), compress_to_fp16=True
    )
    write_bundle(
        out,
        name="shapes",
        version="1.0.0",
        labels=LABELS,
        input=INPUT,
        decoder={"type": "yolov8", "params": {"boxes": "normalized"}},
        artifacts=[
            artifact_entry("tflite", "int8", out / "model_int8.tflite"),
            artifact_entry("openvino", "fp16", out / "model_fp16.xml", weights=out / "model_fp16.bin"),
            artifact_entry("onnx", "fp32", out / "model.onnx"),
        ],
        defaults={"score_threshold": 0.4, "iou_threshold": 0.5, "max_detections": 50},
    )
    # Reference outputs for the OpenVINO 2022.3 check (.ci/run): ONNX on fixed frames.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    frames = np.ascontiguousarray(xs[:4].transpose(0, 3, 1, 2))
    refs = [sess.run(None, {"images": frames[i : i + 1]})[0] for i in range(4)]
    compiled = ov.Core().compile_model(
        str(out / "model_fp16.xml"), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )
    ov_refs = [compiled(frames[i : i + 1])[0] for i in range(4)]
    np.savez(out / "reference.npz", inputs=frames, outputs=np.stack(refs), openvino=np.stack(ov_refs))


# --- SSD with TFLite_Detection_PostProcess ---------------------------------------------------
SSD_CELLS = 4
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


def build_all(out: Path) -> List[str]:
    build_ssd(out / "ssd")
    build_openvino_ssd(out / "ovssd")
    build_shapes(out / "shapes")
    return ["shapes", "ssd", "ovssd"]


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else ".cache/test-models")
    print("built", build_all(target), "in", target)
