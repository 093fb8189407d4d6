"""Exports of a trained run, one function per format, all from the same Keras export model
(output ``[1, 4+C, N]``, normalised boxes):

* ``tflite`` full-integer int8 (uint8 in and out; representative data from training images),
  for the CPU and as the EdgeTPU compiler's input; ``tflite_fp32`` for comparison;
* ``onnx`` via tf2onnx with an NCHW input;
* ``openvino`` IR FP16 converted from that ONNX file, static shape, ops OpenVINO 2022.3 reads;
* ``edgetpu`` with ``edgetpu_compiler`` when it is on PATH.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, TypeVar

import cv2
import numpy as np

from .augment import prepare
from .errors import TrainerError

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMATS = ("tflite", "edgetpu", "openvino", "onnx", "tflite_fp32")
FILES = {
    "tflite": "model_int8.tflite",
    "tflite_fp32": "model_fp32.tflite",
    "edgetpu": "model_int8_edgetpu.tflite",
    "onnx": "model.onnx",
    "openvino": "model_fp16.xml",
}


def representative(
    images: List[Path], size: int, input_range: tuple, count: int = 200, resize: str = "letterbox"
) -> Callable[[], Iterator[List[np.ndarray]]]:
    """Calibration data for int8: training images letterboxed (or stretched, as the manifest's
    ``input.resize`` says) exactly as the device does it."""
    lo, hi = input_range
    lut = (lo + np.arange(256, dtype=np.float32) * (hi - lo) / 255.0).astype(np.float32)
    chosen = images[:: max(1, len(images) // count)][:count]

    def gen() -> Iterator[List[np.ndarray]]:
        for p in chosen:
            image = cv2.imread(str(p), cv2.IMREAD_COLOR)
            if image is None:
                continue
            if resize == "stretch":
                canvas = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
            else:
                canvas, _ = prepare(image, np.zeros((0, 5), np.float32), size)
            yield [lut[canvas[..., ::-1]][None]]

    return gen


def _converter(export_model: Any) -> Any:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(export_model)


def tflite_int8(export_model: Any, rep: Callable[[], Iterator[List[np.ndarray]]], out: Path) -> Path:
    import tensorflow as tf

    conv = _converter(export_model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = rep
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    conv.inference_input_type = tf.uint8
    conv.inference_output_type = tf.uint8
    path = out / FILES["tflite"]
    path.write_bytes(conv.convert())
    return path


def tflite_fp32(export_model: Any, out: Path) -> Path:
    path = out / FILES["tflite_fp32"]
    path.write_bytes(_converter(export_model).convert())
    return path


def onnx(export_model: Any, size: int, out: Path, opset: int = 13) -> Path:
    import tensorflow as tf
    import tf2onnx

    spec = (tf.TensorSpec((1, size, size, 3), tf.float32, name="images"),)

    @tf.function(input_signature=spec)
    def serve(x: Any) -> Any:
        out = export_model(x)  # one output, or one per head (an imported darknet YOLOv3)
        return {f"output{i}": o for i, o in enumerate(out if isinstance(out, (list, tuple)) else [out])}

    path = out / FILES["onnx"]
    # NCHW input: what OpenVINO and cv2.dnn take natively, and the common ONNX convention.
    tf2onnx.convert.from_function(
        serve, input_signature=spec, opset=opset, output_path=str(path), inputs_as_nchw=["images"]
    )
    return path


def openvino(onnx_path: Path, out: Path) -> Path:
    import openvino as ov

    model = ov.convert_model(str(onnx_path))
    path = out / FILES["openvino"]
    ov.save_model(model, str(path), compress_to_fp16=True)
    return path


def edgetpu(int8_path: Path, out: Path) -> Optional[Path]:
    """Compile with edgetpu_compiler when it is on PATH; None (and a plain message) when not."""
    compiler = shutil.which("edgetpu_compiler")
    if compiler is None:
        log.warning(
            "edgetpu_compiler is not on PATH: no EdgeTPU artifact made. It runs on x86-64 Debian/Ubuntu "
            "(apt install edgetpu-compiler from the Coral package repository)."
        )
        return None
    result = subprocess.run(
        [compiler, "--out_dir", str(out), "--show_operations", str(int8_path)],
        capture_output=True,
        text=True,
        env={**os.environ},
    )
    produced = out / (int8_path.stem + "_edgetpu.tflite")
    if result.returncode != 0 or not produced.is_file():
        # The whole output goes to the log; the error keeps the one line a CLI error is.
        output = (result.stderr.strip() or result.stdout.strip()).splitlines()
        log.error("edgetpu_compiler (exit %d):\n%s", result.returncode, "\n".join(output))
        last = output[-1] if output else f"exit status {result.returncode}"
        raise TrainerError(f"edgetpu_compiler failed on {int8_path}: {last}")
    log.info("edgetpu_compiler:\n%s", result.stdout)
    return produced


def _chatter_to_stderr(fn: Callable[..., T]) -> Callable[..., T]:
    """The converters print as they go ("Saved artifact at …"): to stderr (whichever it is when
    called), so that a command's stdout stays the one JSON line a script reads."""

    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> T:
        with contextlib.redirect_stdout(sys.stderr):
            return fn(*args, **kwargs)

    return wrapped


@_chatter_to_stderr
def export_all(
    export_model: Any,
    size: int,
    input_range: tuple,
    train_images: List[Path],
    out: Path,
    formats: List[str],
    resize: str = "letterbox",
) -> Dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    made: Dict[str, Path] = {}
    need_int8 = "tflite" in formats or "edgetpu" in formats
    if need_int8:
        rep = representative(train_images, size, input_range, resize=resize)
        made["tflite"] = tflite_int8(export_model, rep, out)
    if "tflite_fp32" in formats:
        made["tflite_fp32"] = tflite_fp32(export_model, out)
    if "onnx" in formats or "openvino" in formats:
        made["onnx"] = onnx(export_model, size, out)
    if "openvino" in formats:
        made["openvino"] = openvino(made["onnx"], out)
    if "edgetpu" in formats:
        compiled = edgetpu(made["tflite"], out)
        if compiled is not None:
            made["edgetpu"] = compiled
    return made
