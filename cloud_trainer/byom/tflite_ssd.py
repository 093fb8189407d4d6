"""TFLite SSD detectors that end in TFLite_Detection_PostProcess (the TF Object Detection API's
``export_tflite_graph`` + converter, Coral's SSD MobileNet / MobileDet models), float or
quantized, with their EdgeTPU-compiled twin where it lies beside them (``X.tflite`` and
``X_edgetpu.tflite``; either one may be given as ``--model``). Packaged with the ``ssd`` decoder.

Read from the file: the input size, type and quantization (the flatbuffer itself, so that an
EdgeTPU-only model reads too; the CPU model's outputs are also checked through the device's
TFLite interpreter), the op's num_classes and max_detections, and the TFLite metadata that
tflite_support writers add: input normalisation, colour space, and the label file packed in the
zip archive appended to the model.

Class numbers: the op takes class scores whose column 0 is the background and outputs class
``c`` for column ``c + 1``, so its classes count from 0 without the background. Coral's label
files number them that way (``0  person``); a TF label map's id N (ids from 1) is class N - 1,
which is the index labels.read_labels gives it; so label_offset is 0 for both. A plain label file
that lists the background first (the old TFLite examples' ``???``) loses that line.

Assumed where the file is silent: RGB (TensorFlow models are trained on RGB), stretch (the
Object Detection API's fixed_shape_resizer stretches, no letterbox), and, for a float input
without normalisation metadata, the Object Detection API's SSD range [-1, 1]
((x - 127.5) / 127.5). A quantized input without metadata takes the pixel bytes unchanged: its
range is the interval its own scale and zero point give the values 0..255 (SPEC §2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge_agent.decoders import ssd
from edge_agent.errors import BackendError, BackendUnavailable, DecoderError
from edge_agent.preprocess import TensorSpec

from ..errors import PackageError
from .base import ArtifactFiles, Inferred, ModelFiles
from .common import (
    LABEL_FILES,
    background_first,
    check_decoder,
    input_section,
    normalisation_range,
    top_k_defaults,
)
from .labels import parse_labels, read_labels
from .tflite_file import TfliteInfo, read_tflite

OP = "TFLite_Detection_PostProcess"
TWIN = "_edgetpu"
# A float SSD without normalisation metadata: the TF Object Detection API's (x - 127.5) / 127.5.
SSD_RANGE = [-1.0, 1.0]
# The real values an integer input's own quantization gives to stored values (the pixel bytes).
STORED = {"uint8": (0, 255), "int8": (-128, 127)}


class TfliteSsdKind:
    name = "tflite-ssd"

    def claims(self, files: ModelFiles) -> bool:
        try:
            return files.model.is_file() and files.model.suffix.lower() == ".tflite" and _has_op(files.model)
        except OSError:
            return False

    def inspect(self, files: ModelFiles) -> Inferred:
        if files.weights is not None:
            raise PackageError(
                f"{files.weights}: a TFLite model keeps its weights inside; leave --weights out"
            )
        check_decoder(files, ssd.TYPE, f"those of {OP}")
        cpu, tpu = _twins(files.model)
        main = cpu or tpu
        assert main is not None
        notes: List[str] = []
        if cpu and tpu:
            notes.append(f"artifacts: tflite {cpu.path.name} and its EdgeTPU-compiled twin {tpu.path.name}")
        elif tpu:
            notes.append(
                f"artifacts: edgetpu {tpu.path.name} only (no CPU twin {_cpu_name(tpu.path)} beside it: "
                "the bundle runs on a Coral only)"
            )
        options = _op_options(main)
        num_classes = int(options["num_classes"]) if "num_classes" in options else None
        if num_classes is not None:
            notes.append(f"classes: {num_classes} ({OP} num_classes)")
        labels = _labels(files, main, num_classes, notes)
        notes.append(
            "label_offset 0: the op numbers classes from 0 without the background "
            "(a label map's id N is class N-1)"
        )
        inp = _input(main, notes)
        if cpu is not None:
            _check_outputs(cpu.path, len(labels), notes)
        defaults = None
        if int(options.get("max_detections", 0)) > 0:
            defaults = top_k_defaults(options["max_detections"])
            notes.append(f"max_detections {defaults['max_detections']} ({OP} max_detections)")
        artifacts = []
        if cpu is not None:
            artifacts.append(ArtifactFiles("tflite", cpu.precision, cpu.path))
        if tpu is not None:
            artifacts.append(ArtifactFiles("edgetpu", tpu.precision, tpu.path))
        return Inferred(
            kind=self.name,
            labels=labels,
            input=inp,
            decoder={"type": ssd.TYPE, "params": {"label_offset": 0}},
            artifacts=artifacts,
            notes=notes,
            name=main.path.stem.removesuffix(TWIN),
            defaults=defaults,
        )


KIND = TfliteSsdKind()


def _has_op(path: Path) -> bool:
    return OP.encode() in path.read_bytes()


def _cpu_name(path: Path) -> str:
    return path.stem.removesuffix(TWIN) + path.suffix


def _twins(model: Path) -> Tuple[Optional[TfliteInfo], Optional[TfliteInfo]]:
    """(CPU model, EdgeTPU model): the one given, and its twin beside it by Coral's naming. Which
    is which is read from the files (the compiled one holds edgetpu-custom-op), not the names."""
    given = read_tflite(model)
    if given.edgetpu:
        other = model.with_name(_cpu_name(model))
        if other == model or not other.is_file():
            return None, given
        twin = read_tflite(other)
        if twin.edgetpu:
            raise PackageError(f"{other}: the CPU twin of {model.name} is EdgeTPU-compiled as well")
        cpu, tpu = twin, given
    else:
        other = model.with_name(model.stem + TWIN + model.suffix)
        if not other.is_file():
            return given, None
        twin = read_tflite(other)
        if not twin.edgetpu:
            raise PackageError(
                f"{other}: beside {model.name} but not EdgeTPU-compiled (no edgetpu-custom-op); "
                "rename or remove it"
            )
        cpu, tpu = given, twin
    if (cpu.input.shape, cpu.input.dtype) != (tpu.input.shape, tpu.input.dtype):
        raise PackageError(
            f"{tpu.path}: input {list(tpu.input.shape)} {tpu.input.dtype} differs from its CPU twin "
            f"{cpu.path.name}'s {list(cpu.input.shape)} {cpu.input.dtype}: not compiled from it"
        )
    return cpu, tpu


def _op_options(info: TfliteInfo) -> Dict[str, Any]:
    uses = info.custom_ops.get(OP, [])
    if len(uses) != 1:
        raise PackageError(f"{info.path}: {len(uses)} {OP} ops; an SSD bundle needs exactly one")
    return uses[0]


def _labels(files: ModelFiles, info: TfliteInfo, num_classes: Optional[int], notes: List[str]) -> List[str]:
    if files.labels is not None:
        raw, source = read_labels(files.labels), str(files.labels)
    else:
        raw, source = _packed_labels(info)
    labels = background_first(raw, num_classes, source, notes)
    if num_classes is not None and len(labels) != num_classes:
        raise PackageError(
            f"{source}: {len(labels)} labels, but {info.path.name}'s {OP} has num_classes {num_classes}; "
            f"give --labels FILE with {num_classes} labels, class 0 first"
        )
    notes.append(f"labels: {len(labels)} from {source}")
    return labels


def _packed_labels(info: TfliteInfo) -> Tuple[List[str], str]:
    """The label file the TFLite metadata names, from the zip appended to the model; else the
    zip's only .txt file."""
    named = [n for n in info.label_files if n in info.packed]
    texts = named[:1] or [n for n in info.packed if n.lower().endswith((".txt", ".pbtxt"))]
    if len(texts) != 1:
        found = f" (it packs {', '.join(sorted(info.packed))})" if info.packed else ""
        raise PackageError(
            f"{info.path}: no labels: its TFLite metadata names no label file{found}; give {LABEL_FILES}"
        )
    name = texts[0]
    where = f"{info.path}:{name}"
    try:
        text = info.packed[name].decode("utf-8")
    except UnicodeDecodeError as e:
        raise PackageError(f"{where}: the packed label file is not UTF-8 text") from e
    how = "named by its TFLite metadata" if named else "the only label file packed in it"
    return parse_labels(text, where, Path(name).suffix), f"{where} ({how})"


def _input(info: TfliteInfo, notes: List[str]) -> Dict[str, Any]:
    t = info.input
    if t.dtype not in STORED and not t.dtype.startswith("float"):
        raise PackageError(f"{info.path}: input type {t.dtype}: an image input is float, uint8 or int8")
    spec = TensorSpec(t.name, t.shape, np.dtype(t.dtype), t.scale, t.zero_point)
    try:
        height, width = spec.hw
        channels = spec.channels
    except BackendError as e:
        raise PackageError(f"{info.path}: {e}") from e
    if info.inputs != 1 or channels != 3 or spec.layout != "NHWC":
        raise PackageError(
            f"{info.path}: input {list(t.shape)} ({info.inputs} inputs): an SSD takes one NHWC colour image"
        )
    quant = f" (scale {t.scale:.6g}, zero point {t.zero_point})" if spec.quantized else ""
    notes.append(f"input: {width}x{height} {t.dtype}{quant} from the model's input tensor")
    if info.normalisation is not None:
        mean, std = info.normalisation
        value_range = normalisation_range(mean, std, f"{info.path}: TFLite metadata")
        notes.append(f"range {value_range}: the TFLite metadata's normalisation (mean {mean}, std {std})")
    elif t.dtype in STORED and spec.quantized:
        assert t.scale is not None
        lo, hi = STORED[t.dtype]
        value_range = [(lo - t.zero_point) * t.scale, (hi - t.zero_point) * t.scale]
        notes.append(
            f"range [{value_range[0]:.6g}, {value_range[1]:.6g}]: the {t.dtype} input's own scale and "
            "zero point, so pixel values reach the model unchanged (no normalisation metadata)"
        )
    elif t.dtype in STORED:
        value_range = [0.0, 255.0]
        notes.append(
            f"range [0, 255]: the {t.dtype} input has no quantization, pixel values go in as they are"
        )
    else:
        value_range = SSD_RANGE
        notes.append(
            "range [-1, 1]: assumed, the TF Object Detection API's SSD normalisation (x-127.5)/127.5; "
            "the model has no normalisation metadata (for another range, edit input.range in the "
            "bundle's manifest.json and run: cloud-trainer package BUNDLE_DIR)"
        )
    if info.color_space == "grayscale":
        raise PackageError(
            f"{info.path}: its TFLite metadata says the input is grayscale; bundles take colour"
        )
    if info.color_space == "rgb":
        notes.append("color rgb: the TFLite metadata's colour space")
    else:
        notes.append("color rgb: assumed (TensorFlow models are trained on RGB; no colour space metadata)")
    notes.append("resize stretch: SSD models are trained on stretched, not letterboxed, images")
    return input_section(width, height, "rgb", "stretch", value_range)


def _check_outputs(path: Path, num_labels: int, notes: List[str]) -> None:
    """The four outputs of the op, found the way the agent's decoder will find them."""
    from edge_agent.backends import litert

    try:
        interpreter = litert.make_interpreter(str(path), threads=None, xnnpack=False)
        interpreter.allocate_tensors()  # the op's output shapes are set here
    except BackendUnavailable as e:
        notes.append(f"outputs: not checked here ({e})")
        return
    except (ValueError, RuntimeError) as e:
        raise PackageError(f"{path}: the TFLite interpreter cannot load it: {e}") from e
    shapes = [(str(d["name"]), tuple(int(x) for x in d["shape"])) for d in interpreter.get_output_details()]
    try:
        ssd.check(shapes, ssd.SsdParams(), num_labels)
    except DecoderError as e:
        raise PackageError(f"{path}: {e}") from e
    notes.append(f"decoder ssd: outputs {', '.join(str(list(s)) for _, s in shapes)}")
