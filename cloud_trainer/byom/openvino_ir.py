"""OpenVINO IR detectors whose one output is a DetectionOutput ``[1, 1, N, 7]`` (the Open Model
Zoo's person / vehicle / face detectors, any SSD converted by the Model Optimizer), packaged with
the ``openvino-ssd`` decoder. The .bin is the one beside the .xml unless ``--weights`` names it.
An Ultralytics ``*_openvino_model/`` (a folder, output ``[1, 4+C, N]``) is the ultralytics kind's.

Read from the IR (through OpenVINO's own reader): the input size and layout, the precision (FP16
or INT8 weights), the DetectionOutput op's background_label_id, class count (its num_classes,
or its inputs' shapes) and keep_top_k, and the rt_info ``model_info`` that OpenVINO's Model API,
OTX and DL Streamer use: labels, mean_values / scale_values, reverse_input_channels,
resize_type, pad_value.

Where the IR says nothing, the Open Model Zoo's convention is assumed and said: BGR pixels 0..255
("Expected color order is BGR", no normalisation outside the IR) and a stretched frame.

Class numbers: DetectionOutput's rows carry the class index among num_classes, the background
included (class 0 in every OMZ detector: person-detection-retail-0013 outputs 1 for a person).
Labels are given without the background, so label_offset is 1; see common.detection_output_labels
for the other cases (no background, the background last, a label file that lists it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from edge_agent.decoders import openvino_ssd
from edge_agent.errors import BackendError, BackendUnavailable
from edge_agent.preprocess import TensorSpec

from ..errors import PackageError
from .base import ArtifactFiles, Inferred, ModelFiles
from .common import (
    check_decoder,
    detection_output_labels,
    given_labels,
    input_section,
    normalisation_range,
    top_k_defaults,
)

OP = "DetectionOutput"
OUTPUT = "one DetectionOutput [1, 1, N, 7]"
# Model API resize_type -> manifest input.resize (the other types pad or crop in ways a bundle
# cannot say).
RESIZE_TYPES = {"standard": "stretch", "fit_to_window_letterbox": "letterbox"}
TRUE = ("true", "yes", "1")


class OpenVinoIrKind:
    name = "openvino-ssd"

    def claims(self, files: ModelFiles) -> bool:
        path = files.model
        try:
            if not path.is_file() or path.suffix.lower() != ".xml":
                return False
            text = path.read_bytes()
        except OSError:
            return False
        return b"<net" in text[:4096] and (
            f'type="{OP}"'.encode() in text or files.decoder == openvino_ssd.TYPE
        )

    def inspect(self, files: ModelFiles) -> Inferred:
        check_decoder(files, openvino_ssd.TYPE, OUTPUT)
        xml = files.model
        weights = files.weights or xml.with_suffix(".bin")
        if not weights.is_file():
            raise PackageError(
                f"{xml}: its weights {weights} are missing; give --weights FILE (the IR's .bin)"
            )
        model = _read(xml, weights)
        notes: List[str] = []
        width, height = _input_size(xml, model, notes)
        _check_output(xml, model)
        info = _model_info(model)
        op, num_classes, background, keep_top_k, decreased = _detection_output(xml, model)
        if files.labels is None and info.get("labels"):
            labels, source = info["labels"].split(), f"{xml.name} rt_info model_info/labels"
        else:
            labels, source = given_labels(files, "no labels: the IR carries none (rt_info model_info/labels)")
        labels, offset = detection_output_labels(labels, source, num_classes, background, xml, op, notes)
        if decreased:  # MXNet-style: the op already takes 1 off every class number
            offset -= 1
            notes.append(f"label_offset {offset}: the op's decrease_label_id takes 1 off class numbers")
        inp = _input(xml, info, width, height, notes)
        defaults = None
        if keep_top_k > 0:
            defaults = top_k_defaults(keep_top_k)
            notes.append(f"max_detections {keep_top_k} ({op} keep_top_k)")
        precision = _precision(model)
        notes.append(f"precision {precision}: the IR's weights")
        return Inferred(
            kind=self.name,
            labels=labels,
            input=inp,
            decoder={"type": openvino_ssd.TYPE, "params": {"label_offset": offset}},
            artifacts=[ArtifactFiles("openvino", precision, xml, weights=weights)],
            notes=notes,
            name=xml.stem,
            defaults=defaults,
        )


KIND = OpenVinoIrKind()


def _read(xml: Path, weights: Path) -> Any:
    from edge_agent.backends.openvino import import_openvino

    try:
        core_cls, version = import_openvino()
    except BackendUnavailable as e:
        raise PackageError(f"{xml}: reading an OpenVINO IR needs OpenVINO: {e}") from e
    try:
        return core_cls().read_model(str(xml), str(weights))
    except RuntimeError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise PackageError(f"{xml}: OpenVINO {version} cannot read it: {lines[-1] if lines else e}") from e


def _input_size(xml: Path, model: Any, notes: List[str]) -> Tuple[int, int]:
    if len(model.inputs) != 1:
        raise PackageError(f"{xml}: {len(model.inputs)} inputs; a detector bundle takes one image input")
    port = model.inputs[0]
    shape = port.get_partial_shape()
    if not shape.is_static:
        raise PackageError(
            f"{xml}: input shape {shape} is dynamic; reshape the IR to the size it was trained at "
            "(ovc --input NAME[1,3,H,W]) and package that"
        )
    dims = tuple(int(d) for d in port.get_shape())
    spec = TensorSpec(port.get_any_name() if port.get_names() else "input", dims, np.dtype(np.float32))
    try:
        height, width = spec.hw
        channels, layout = spec.channels, spec.layout
    except BackendError as e:
        raise PackageError(f"{xml}: {e}") from e
    if channels != 3:
        raise PackageError(f"{xml}: input {list(dims)} has {channels} channels; bundles take colour images")
    notes.append(f"input: {width}x{height} from the IR's input {list(dims)} ({layout})")
    return width, height


def _check_output(xml: Path, model: Any) -> None:
    shapes = [str(p.get_partial_shape()) for p in model.outputs]
    ok = len(model.outputs) == 1 and model.outputs[0].get_partial_shape().is_static
    if ok:
        dims = [int(d) for d in model.outputs[0].get_shape()]
        ok = len(dims) == 4 and dims[:2] == [1, 1] and dims[3] == 7
    if not ok:
        raise PackageError(f"{xml}: outputs {', '.join(shapes)}; the openvino-ssd decoder takes {OUTPUT}")


def _detection_output(xml: Path, model: Any) -> Tuple[str, Optional[int], int, int, bool]:
    """(op description, num_classes with the background, background_label_id, keep_top_k,
    decrease_label_id) of the IR's one DetectionOutput op."""
    ops = [op for op in model.get_ordered_ops() if op.get_type_name() == OP]
    if len(ops) != 1:
        raise PackageError(
            f"{xml}: {len(ops)} {OP} ops; the openvino-ssd decoder reads the rows of exactly one"
        )
    op = ops[0]
    attrs = op.get_attributes()
    num_classes = attrs.get("num_classes")
    if num_classes is None:  # opset8 dropped the attribute: class scores are num_priors * classes
        conf, proposals = op.input(1).get_partial_shape(), op.input(2).get_partial_shape()
        if conf.is_static and proposals.is_static:
            per_prior = 4 if attrs.get("normalized", True) else 5
            priors = int(proposals[2].get_length()) // per_prior
            num_classes = int(conf[1].get_length()) // priors if priors else None
    keep = attrs.get("keep_top_k", [-1])
    keep_top_k = int(keep[0] if isinstance(keep, (list, tuple)) and keep else keep)
    name = f"{OP} {op.get_friendly_name()!r}"
    background = int(attrs.get("background_label_id", 0))
    return name, num_classes, background, keep_top_k, bool(attrs.get("decrease_label_id", False))


def _model_info(model: Any) -> Dict[str, str]:
    """rt_info ``model_info`` as strings ({} when the IR has none)."""
    if not model.has_rt_info(["model_info"]):
        return {}
    out = {}
    for key, value in dict(model.get_rt_info()["model_info"]).items():
        out[str(key)] = str(value.astype(str) if hasattr(value, "astype") else value)
    return out


def _floats(info: Dict[str, str], key: str, xml: Path) -> Optional[List[float]]:
    if key not in info:
        return None
    try:
        return [float(v) for v in info[key].replace(",", " ").split()]
    except ValueError as e:
        raise PackageError(f"{xml}: rt_info model_info/{key} {info[key]!r} is not a list of numbers") from e


def _input(xml: Path, info: Dict[str, str], width: int, height: int, notes: List[str]) -> Dict[str, Any]:
    where = f"{xml.name} rt_info model_info"
    mean, scale = _floats(info, "mean_values", xml), _floats(info, "scale_values", xml)
    embedded = info.get("embedded_processing", "").lower() in TRUE
    if embedded:
        value_range, color = [0.0, 255.0], "bgr"
        notes.append(
            f"range [0, 255], color bgr: {where}/embedded_processing, the IR normalises its own input"
        )
    elif mean is None and scale is None and "reverse_input_channels" not in info:
        value_range, color = [0.0, 255.0], "bgr"
        notes.append(
            "range [0, 255], color bgr: assumed, the Open Model Zoo's convention (BGR pixels 0..255); "
            "the IR has no rt_info model_info to say otherwise"
        )
    else:
        value_range = normalisation_range(mean or [0.0], scale or [1.0], f"{xml}: rt_info model_info")
        reverse = info.get("reverse_input_channels", "false").lower() in TRUE
        color = "rgb" if reverse else "bgr"
        notes.append(
            f"range {value_range}: {where} mean_values {mean or [0.0]}, scale_values {scale or [1.0]}"
        )
        notes.append(f"color {color}: {where}/reverse_input_channels {reverse} (frames are BGR)")
    resize_type = info.get("resize_type")
    if resize_type is None:
        resize = "stretch"
        notes.append("resize stretch: assumed (Open Model Zoo detectors take the whole frame resized)")
    elif resize_type in RESIZE_TYPES:
        resize = RESIZE_TYPES[resize_type]
        notes.append(f"resize {resize}: {where}/resize_type {resize_type}")
    else:
        raise PackageError(
            f"{xml}: rt_info model_info/resize_type {resize_type!r}: a bundle resizes by "
            f"{' or '.join(RESIZE_TYPES)} only"
        )
    pad_value = 114
    if "pad_value" in info:
        try:
            pad_value = int(float(info["pad_value"]))
        except ValueError as e:
            raise PackageError(
                f"{xml}: rt_info model_info/pad_value {info['pad_value']!r} is not a number"
            ) from e
    return input_section(width, height, color, resize, value_range, pad_value)


def _precision(model: Any) -> str:
    """int8 for a quantized IR (FakeQuantize, or integer weights), fp16 for FP16 weights."""
    types = set()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "FakeQuantize":
            return "int8"
        if kind == "Constant":
            types.add(op.get_output_element_type(0).get_type_name())
    if types & {"i8", "u8"}:
        return "int8"
    return "fp16" if "f16" in types else "fp32"
