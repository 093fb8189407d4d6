"""Ultralytics YOLOv8 / YOLO11 detection exports, packaged with the ``yolov8`` decoder:

- ONNX: ``yolov8n.onnx``;
- OpenVINO IR: the ``yolov8n_openvino_model/`` folder (``yolov8n.xml``, ``.bin``,
  ``metadata.yaml``), or its .xml;
- TFLite: ``yolov8n_saved_model/yolov8n_float32.tflite`` (``_float16``, ``_int8``,
  ``_full_integer_quant``…), or that folder when it holds one .tflite.

What Ultralytics writes into the files (ultralytics/engine/exporter.py: ``Exporter.__call__``
builds ``self.metadata``; ``AutoBackend`` in ultralytics/nn/autobackend.py reads it back):

- the metadata: description, author ("Ultralytics"), date, version (of the ultralytics package),
  license, docs, stride, task, batch, imgsz (``[h, w]``), names (``{index: name}``), args (the
  export arguments: half, int8, nms, dynamic…), channels, and lately end2end;
- ONNX (``export_onnx``): one ``metadata_props`` entry per key holding ``str(value)``, so names
  reads ``"{0: 'person', 1: 'bicycle'}"`` and imgsz ``"[640, 640]"``: Python literals, read
  with ``ast.literal_eval`` (never ``eval``, as AutoBackend does);
- OpenVINO (``export_openvino``): ``metadata.yaml`` beside the .xml (``yaml.safe_dump``, names an
  int-keyed map), and rt_info ``model_info`` in the .xml (``labels`` with spaces turned into
  "_", ``pad_value`` 114, ``resize_type`` "fit_to_window_letterbox"), read where metadata.yaml
  is missing;
- TFLite (``_add_tflite_metadata``): a zip appended to the .tflite holding ``metadata.json``
  (``json.dumps``, so names' keys are strings). Versions before that used tflite_support's
  MetadataPopulator with an associated file ``temp_meta.txt`` holding ``str(metadata)``, which
  the populator also stores as a zip appended to the model; AutoBackend reads either as the
  zip's first entry. The ``*_saved_model/`` folder holds a ``metadata.yaml`` as well.

What the format does without saying it: the input is RGB, letterboxed with pad 114 and scaled to
[0, 1] (ultralytics' ``LetterBox`` and predictor ``preprocess``); the output is ``[1, 4+C, N]``:
cx, cy, w, h, then C class scores after the sigmoid, no objectness. Boxes are pixels of the model
input in ONNX and OpenVINO; in TFLite they are divided by the input size (the Detect head
normalises them for ``format in {"tflite", "edgetpu"}`` to keep int8 precision, and AutoBackend
multiplies them back). Exports of other versions and tools differ (Ultralytics before its PR
1695 wrote pixels in TFLite too; this project's own ONNX is normalised), so that convention is
checked against the model's outputs on a grey frame wherever the runtime is installed.
"""

from __future__ import annotations

import ast
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import yaml

from edge_agent.bundle.manifest import InputSpec
from edge_agent.decoders.base import OutputTensor
from edge_agent.errors import BackendError, BackendUnavailable
from edge_agent.preprocess import TensorSpec, value_lut

from ..errors import PackageError
from .base import ArtifactFiles, Inferred, ModelFiles
from .labels import names_to_list, read_labels

DECODER = "yolov8"
# Ultralytics' preprocessing (LetterBox(auto=False) with its default padding colour, /255, RGB).
INPUT = {"color": "rgb", "resize": "letterbox", "pad_value": 114, "range": [0, 1]}
# Ultralytics' predict defaults (conf 0.25, iou 0.7, max_det 300), so the bundle starts out
# detecting what `yolo predict` detects with the same file.
DEFAULTS = {"score_threshold": 0.25, "iou_threshold": 0.7, "max_detections": 300}
# Keys whose values Ultralytics writes as Python objects (a str() of them in ONNX).
LITERAL_KEYS = ("names", "imgsz", "stride", "batch", "channels", "args", "end2end", "kpt_shape")
# The grey frame the box convention is checked on: Ultralytics' own padding colour.
GREY = 114
# Box coordinates on a grey frame: a normalised box never reaches 2 (a box twice the input),
# while pixel anchors spread over the whole input (up to about its size). Between 1.5 and 2, or
# everything near 0, the outputs say nothing and the format's convention decides.
PIXELS_ABOVE = 2.0
NORMALIZED_UP_TO = 1.5
NOTHING_BELOW = 0.05
# File-name endings the exporter adds (yolov8n_openvino_model/, yolov8n_saved_model/,
# yolov8n_float32.tflite…): stripped for the bundle name.
EXPORT_SUFFIX_RE = re.compile(
    r"(_int8)?_openvino_model$|_saved_model$"
    r"|_(float32|float16|int8|full_integer_quant|integer_quant|dynamic_range_quant)(_edgetpu)?$"
)


@dataclass
class _Export:
    """One export as read from its files, before its labels and boxes are settled."""

    fmt: str  # "ONNX" | "OpenVINO" | "TFLite", for the notes
    artifact: ArtifactFiles
    input: TensorSpec
    outputs: List[TensorSpec]
    metadata: Dict[str, Any]  # Ultralytics' metadata, parsed ({} when the files carry none)
    metadata_from: str  # where it was read, for the notes
    boxes: str  # what the format's convention says: "pixels" | "normalized"
    boxes_why: str
    # The first output (float) for one input tensor; None when this machine lacks the runtime.
    run: Optional[Callable[[np.ndarray], np.ndarray]]
    not_run: str = ""  # why ``run`` is None
    labels_fallback: Optional[List[str]] = None  # OpenVINO rt_info labels (spaces as "_")
    notes: List[str] = field(default_factory=list)


class UltralyticsKind:
    name = "ultralytics"

    def claims(self, files: ModelFiles) -> bool:
        if files.decoder not in (None, DECODER):
            return False
        try:
            return _claims(files)
        except Exception:  # claims never raises: a file it cannot read is simply not its kind
            return False

    def inspect(self, files: ModelFiles) -> Inferred:
        export = _read(files)
        return _describe(files, export)


KIND = UltralyticsKind()


# -- which files -------------------------------------------------------------------------------


def _claims(files: ModelFiles) -> bool:
    """Ultralytics metadata, ``--decoder yolov8``, or a model with one 3-D output (the layout
    no other kind here reads: an SSD has four outputs, DetectionOutput is 4-D)."""
    path = files.model
    forced = files.decoder == DECODER
    if path.is_dir():
        meta, _ = _yaml_metadata(path / "metadata.yaml")
        xmls = sorted(path.glob("*.xml"))
        if xmls:
            # Several .xml files: claimed when it says Ultralytics, so that inspect names them.
            ours = forced or bool(meta) or path.name.endswith("_openvino_model")
            return ours or (len(xmls) == 1 and _ov_single_3d(xmls[0]))
        return bool(meta) and any(path.glob("*.tflite"))
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        try:
            model = _onnx_proto(path)
        except PackageError:
            return path.is_file()  # no other kind reads ONNX: inspect says what is wrong with it
        # The keys alone: a value that does not parse is for inspect to name, not a reason to pass.
        return forced or _is_ultralytics(_onnx_props(model)) or _onnx_single_3d(model)
    if suffix == ".xml":
        meta, _ = _yaml_metadata(path.parent / "metadata.yaml")
        return forced or bool(meta) or _ov_single_3d(path)
    if suffix == ".tflite":
        meta, _ = _tflite_metadata(path)
        return forced or bool(meta) or _tflite_single_3d(path)
    return False


def _read(files: ModelFiles) -> _Export:
    path = files.model
    if path.is_dir():
        xml = _one(path, "*.xml")
        if xml is not None:
            return _read_openvino(xml, files.weights)
        tflites = sorted(path.glob("*.tflite"))
        if len(tflites) != 1:
            choices = ", ".join(p.name for p in tflites) or "none"
            raise PackageError(
                f"{path}: give one model file of this folder as --model (its .tflite files: {choices})"
            )
        path = tflites[0]
    if files.weights is not None and path.suffix.lower() != ".xml":
        raise PackageError(f"{files.weights}: --weights is for an OpenVINO .xml; {path.name} holds its own")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return _read_onnx(path)
    if suffix == ".xml":
        return _read_openvino(path, files.weights)
    return _read_tflite(path)


def _one(directory: Path, pattern: str) -> Optional[Path]:
    found = sorted(directory.glob(pattern))
    if len(found) > 1:
        raise PackageError(
            f"{directory}: {len(found)} {pattern} files ({', '.join(p.name for p in found)}); "
            "give the one to package as --model"
        )
    return found[0] if found else None


# -- the metadata ------------------------------------------------------------------------------


def _parse(raw: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Ultralytics metadata with its structured values as Python objects: ONNX holds ``str()``
    of them, YAML and JSON hold them typed already."""
    out: Dict[str, Any] = {}
    for key, value in raw.items():
        if key in LITERAL_KEYS and isinstance(value, str):
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError) as e:
                raise PackageError(
                    f"{where}: metadata {key!r} is not a Python literal: {value[:80]!r}"
                ) from e
        out[key] = value
    return out


def _is_ultralytics(meta: Dict[str, Any]) -> bool:
    return (
        "names" in meta
        and ("stride" in meta or "imgsz" in meta)
        or (str(meta.get("author", "")).startswith("Ultralytics"))
    )


def _yaml_metadata(path: Path) -> Tuple[Dict[str, Any], str]:
    """metadata.yaml as the OpenVINO, TF SavedModel and other folder exports write it; ({}, "")
    when the file is not there."""
    if not path.is_file():
        return {}, ""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise PackageError(f"{path}: cannot read Ultralytics metadata: {_line(e)}") from e
    if not isinstance(doc, dict):
        raise PackageError(f"{path}: not Ultralytics metadata (a YAML map of names, imgsz, stride…)")
    meta = _parse(doc, str(path))
    return (meta, path.name) if _is_ultralytics(meta) else ({}, "")


def _tflite_metadata(path: Path) -> Tuple[Dict[str, Any], str]:
    """The metadata zipped onto a .tflite (``metadata.json``; ``temp_meta.txt`` with a Python
    literal in older exports), else a ``metadata.yaml`` beside it (the ``*_saved_model/``
    folder); ({}, "") when neither says anything Ultralytics."""
    try:
        with zipfile.ZipFile(path) as zf:
            entries = zf.namelist()
            # AutoBackend takes the first entry; metadata.json first, should a file carry both.
            for entry in sorted(entries, key=lambda n: n != "metadata.json"):
                meta = _zip_entry(zf.read(entry).decode("utf-8", errors="replace"), f"{path} ({entry})")
                if meta:
                    return meta, f"the {entry} zipped onto the .tflite"
    except zipfile.BadZipFile:
        pass  # no zip appended: metadata may sit beside it
    except OSError as e:
        raise PackageError(f"{path}: cannot read it: {e.strerror or e}") from e
    meta, source = _yaml_metadata(path.parent / "metadata.yaml")
    return meta, (f"the {source} beside it" if meta else "")


def _zip_entry(text: str, where: str) -> Dict[str, Any]:
    """One zipped entry as Ultralytics metadata, or {} when it is something else (a label file
    a non-Ultralytics model carries in the same place)."""
    doc: Any
    try:
        doc = json.loads(text)
    except ValueError:
        try:
            doc = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return {}
    if not isinstance(doc, dict):
        return {}
    meta = _parse(doc, where)
    return meta if _is_ultralytics(meta) else {}


def _names(meta: Dict[str, Any], where: str) -> Optional[List[str]]:
    if "names" not in meta:
        return None
    return names_to_list(meta["names"], f"{where}: metadata")


def _imgsz(meta: Dict[str, Any]) -> Optional[Tuple[int, int]]:
    """imgsz as (height, width): Ultralytics writes ``[h, w]`` (or one int for a square)."""
    value = meta.get("imgsz")
    if isinstance(value, int):
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


# -- ONNX --------------------------------------------------------------------------------------


def _onnx_proto(path: Path) -> Any:
    try:
        import onnx
    except ImportError as e:
        raise PackageError(f"{path}: reading an ONNX model needs the onnx package (pip install onnx)") from e
    try:
        # The weights are not needed to read metadata and shapes (external data stays on disk).
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # onnx raises protobuf's DecodeError and its own errors
        raise PackageError(f"{path}: not an ONNX model: {_line(e)}") from e


def _onnx_props(model: Any) -> Dict[str, Any]:
    return {p.key: p.value for p in model.metadata_props}


def _onnx_io(model: Any) -> Tuple[List[Any], List[Any]]:
    initializers = {i.name for i in model.graph.initializer}
    # Older exporters list initializers among the graph inputs too; they are not fed.
    inputs = [i for i in model.graph.input if i.name not in initializers]
    return inputs, list(model.graph.output)


def _onnx_spec(value: Any) -> TensorSpec:
    from onnx import helper

    tensor = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tensor.shape.dim)
    try:
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except Exception:  # an element type numpy has no name for
        dtype = np.dtype(np.void)
    return TensorSpec(name=value.name, shape=dims, dtype=dtype)


def _onnx_single_3d(model: Any) -> bool:
    _, outputs = _onnx_io(model)
    return len(outputs) == 1 and len(outputs[0].type.tensor_type.shape.dim) == 3


def _onnx_precision(model: Any, input_spec: TensorSpec) -> Tuple[str, str]:
    from onnx import TensorProto

    ops = {n.op_type for n in model.graph.node}
    quantized = ops & {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger"}
    if quantized:
        return "int8", f"quantized ({', '.join(sorted(quantized))} in the graph)"
    half = input_spec.dtype == np.float16 or any(
        i.data_type == TensorProto.FLOAT16 for i in model.graph.initializer
    )
    if half:
        return "fp16", "float16 weights"
    return "fp32", "float32 weights"


def _read_onnx(path: Path) -> _Export:
    model = _onnx_proto(path)
    meta = _parse(_onnx_props(model), str(path))
    meta = meta if _is_ultralytics(meta) else {}
    inputs, outputs = _onnx_io(model)
    if len(inputs) != 1:
        raise PackageError(
            f"{path}: {len(inputs)} inputs; an Ultralytics detection export has one image input"
        )
    input_spec = _onnx_spec(inputs[0])
    precision, why = _onnx_precision(model, input_spec)
    run: Optional[Callable[[np.ndarray], np.ndarray]] = None
    not_run = ""
    try:
        from edge_agent.backends.onnx import import_ort

        ort = import_ort()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except BackendUnavailable as e:
        not_run = str(e)
    except Exception as e:  # onnxruntime's own exception classes
        raise PackageError(f"{path}: onnxruntime cannot load it: {_line(e)}") from e
    else:
        name = session.get_inputs()[0].name

        def run_onnx(tensor: np.ndarray) -> np.ndarray:
            return np.asarray(session.run(None, {name: tensor})[0], dtype=np.float32)

        run = run_onnx

    return _Export(
        fmt="ONNX",
        artifact=ArtifactFiles("onnx", precision, path),
        input=input_spec,
        outputs=[_onnx_spec(o) for o in outputs],
        metadata=meta,
        metadata_from="the ONNX metadata_props",
        boxes="pixels",
        boxes_why="Ultralytics' ONNX exports give pixels of the model input",
        run=run,
        not_run=not_run,
        notes=[f"precision: {precision} ({why}, read from the model)"],
    )


# -- OpenVINO ----------------------------------------------------------------------------------


def _ov_model(xml: Path, weights: Optional[Path]) -> Tuple[Any, Any]:
    """(Core, Model) for an IR; PackageError when OpenVINO is absent or cannot read it."""
    from edge_agent.backends.openvino import import_openvino

    try:
        core_cls, _ = import_openvino()
    except BackendUnavailable as e:
        raise PackageError(f"{xml}: reading an OpenVINO IR needs openvino: {e}") from e
    bin_path = weights or xml.with_suffix(".bin")
    if not bin_path.is_file():
        raise PackageError(f"{bin_path}: missing (the weights of {xml.name}; give them with --weights)")
    core = core_cls()
    try:
        return core, core.read_model(str(xml), str(bin_path))
    except RuntimeError as e:
        raise PackageError(f"{xml}: OpenVINO cannot read it: {_line(e, last=True)}") from e


def _ov_single_3d(xml: Path) -> bool:
    _, model = _ov_model(xml, None)
    outputs = model.outputs
    return len(outputs) == 1 and outputs[0].get_partial_shape().rank.get_length() == 3


def _ov_spec(port: Any, fallback: str) -> TensorSpec:
    try:
        name = port.get_any_name()
    except RuntimeError:
        name = fallback
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    type_name = port.get_element_type().get_type_name()
    dtype = {"f32": np.float32, "f16": np.float16, "u8": np.uint8, "i8": np.int8}.get(type_name, np.void)
    return TensorSpec(name=name, shape=shape, dtype=np.dtype(dtype))


def _ov_precision(model: Any) -> Tuple[str, str]:
    kinds = {op.get_type_name() for op in model.get_ops()}
    if "FakeQuantize" in kinds:
        return "int8", "quantized (FakeQuantize in the graph, an int8=True export)"
    consts = {
        op.get_output_element_type(0).get_type_name()
        for op in model.get_ops()
        if op.get_type_name() == "Constant"
    }
    if consts & {"i8", "u8"}:
        return "int8", "int8 weights"
    if "f16" in consts:
        return "fp16", "float16 weights (a half=True export)"
    return "fp32", "float32 weights"


def _ov_rt_info(model: Any, section: str, key: str) -> Optional[str]:
    """One value of the IR's rt_info as a string, or None."""
    try:
        if not model.has_rt_info([section, key]):
            return None
        return str(model.get_rt_info([section, key]).astype(str))
    except Exception:  # the 2022.3 API has no has_rt_info / astype: then no rt_info is read
        return None


def _ov_framework_metadata(model: Any, xml: Path) -> Dict[str, Any]:
    """The ONNX metadata_props that OpenVINO's converter (ovc, convert_model) carries into rt_info
    ``framework``: an IR converted by the user from an Ultralytics ONNX export."""
    keys = ("description", "author", "version", "task", *LITERAL_KEYS)
    raw = {k: v for k in keys if (v := _ov_rt_info(model, "framework", k)) is not None}
    meta = _parse(raw, f"{xml} (rt_info framework)")
    return meta if _is_ultralytics(meta) else {}


def _read_openvino(xml: Path, weights: Optional[Path]) -> _Export:
    core, model = _ov_model(xml, weights)
    meta, source = _yaml_metadata(xml.parent / "metadata.yaml")
    if not meta:
        meta, source = _ov_framework_metadata(model, xml), "the IR's rt_info framework (from its ONNX)"
    labels_fallback = None
    rt_labels = _ov_rt_info(model, "model_info", "labels")
    if not meta and rt_labels:
        # Ultralytics' own rt_info: the labels, with each space made "_" to fit one string.
        labels_fallback = rt_labels.split()
    if len(model.inputs) != 1:
        raise PackageError(f"{xml}: {len(model.inputs)} inputs; an Ultralytics detection export has one")
    precision, why = _ov_precision(model)
    run: Optional[Callable[[np.ndarray], np.ndarray]] = None
    not_run = ""
    try:
        compiled = core.compile_model(model, "CPU")
    except RuntimeError as e:
        not_run = f"OpenVINO cannot compile it on the CPU here: {_line(e, last=True)}"
    else:

        def run_ir(tensor: np.ndarray) -> np.ndarray:
            request = compiled.create_infer_request()
            request.infer({0: tensor})
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)

        run = run_ir

    return _Export(
        fmt="OpenVINO",
        artifact=ArtifactFiles("openvino", precision, xml, weights=weights or xml.with_suffix(".bin")),
        input=_ov_spec(model.inputs[0], "input"),
        outputs=[_ov_spec(p, f"output{i}") for i, p in enumerate(model.outputs)],
        metadata=meta,
        metadata_from=source,
        boxes="pixels",
        boxes_why="Ultralytics' OpenVINO exports give pixels of the model input",
        run=run,
        not_run=not_run,
        labels_fallback=labels_fallback,
        notes=[f"precision: {precision} ({why}, read from the model)"],
    )


# -- TFLite ------------------------------------------------------------------------------------


def _interpreter(path: Path) -> Any:
    from edge_agent.backends import litert

    try:
        interp = litert.make_interpreter(str(path), threads=None)
        interp.allocate_tensors()
    except BackendUnavailable as e:
        raise PackageError(f"{path}: reading a TFLite model needs a TFLite runtime: {e}") from e
    except (ValueError, RuntimeError) as e:
        raise PackageError(f"{path}: the TFLite interpreter cannot load it: {_line(e)}") from e
    return interp


def _tflite_single_3d(path: Path) -> bool:
    outputs = _interpreter(path).get_output_details()
    return len(outputs) == 1 and len(outputs[0]["shape"]) == 3


def _tflite_precision(interp: Any, input_spec: TensorSpec) -> Tuple[str, str]:
    if input_spec.quantized:
        kind = "uint8" if input_spec.dtype == np.uint8 else "int8"
        quant = f"scale {input_spec.scale:.6g}, zero point {input_spec.zero_point}"
        return kind, f"{kind} input, {quant}: a full-integer export"
    dtypes = {np.dtype(t["dtype"]) for t in interp.get_tensor_details()}
    if dtypes & {np.dtype(np.int8), np.dtype(np.uint8)}:
        return "int8", "int8 tensors inside, float32 input and output: Ultralytics' _int8.tflite"
    if np.dtype(np.float16) in dtypes:
        return "fp16", "float16 weights: Ultralytics' _float16.tflite"
    return "fp32", "float32 tensors"


def _read_tflite(path: Path) -> _Export:
    from edge_agent.backends import litert

    if b"edgetpu-custom-op" in path.read_bytes():
        raise PackageError(
            f"{path}: compiled for the EdgeTPU; package the full-integer .tflite it was compiled from "
            "(Ultralytics' *_full_integer_quant.tflite)"
        )
    meta, source = _tflite_metadata(path)
    interp = _interpreter(path)
    inputs = interp.get_input_details()
    if len(inputs) != 1:
        raise PackageError(f"{path}: {len(inputs)} inputs; an Ultralytics detection export has one")
    input_spec = litert.tensor_spec(inputs[0])
    details = interp.get_output_details()
    precision, why = _tflite_precision(interp, input_spec)

    def run(tensor: np.ndarray) -> np.ndarray:
        interp.set_tensor(inputs[0]["index"], tensor)
        interp.invoke()
        out = litert.tensor_spec(details[0])
        data = interp.get_tensor(details[0]["index"])
        return OutputTensor(out.name, data, out.scale, out.zero_point).dequantized()

    return _Export(
        fmt="TFLite",
        artifact=ArtifactFiles("tflite", precision, path),
        input=input_spec,
        outputs=[litert.tensor_spec(d) for d in details],
        metadata=meta,
        metadata_from=source,
        boxes="normalized",
        boxes_why="Ultralytics' TFLite exports divide xywh by the input size",
        run=run,
        notes=[f"precision: {precision} ({why}, read from the model)"],
    )


# -- the description -----------------------------------------------------------------------------


def _describe(files: ModelFiles, ex: _Export) -> Inferred:
    path = ex.artifact.file
    meta = ex.metadata
    notes: List[str] = []
    if meta:
        made = f", Ultralytics {meta['version']}" if "version" in meta else ""
        notes.append(f"metadata: {ex.metadata_from} ({meta.get('description', 'Ultralytics')}{made})")
    else:
        notes.append(f"metadata: no Ultralytics metadata in the file; read as a YOLOv8-layout {ex.fmt} model")
    _refuse_other_tasks(path, meta, ex.outputs)
    height, width = _input_size(path, ex.input, meta, notes)
    labels = _labels(files, ex, notes)
    channels_first = _output_layout(path, ex.outputs, len(labels), notes)
    boxes = _boxes(path, ex, channels_first, notes)
    notes.append("input: rgb, letterbox with pad 114, range [0, 1] (Ultralytics' preprocessing)")
    notes.extend(ex.notes)
    notes.append("defaults: score 0.25, iou 0.7, up to 300 detections (Ultralytics' predict defaults)")
    return Inferred(
        kind=f"{'ultralytics' if meta else 'yolov8'}-{ex.fmt.lower()}",
        labels=labels,
        input={"width": width, "height": height, **INPUT},
        decoder={"type": DECODER, "params": {"boxes": boxes}},
        artifacts=[ex.artifact],
        notes=notes,
        name=_suggested_name(files.model),
        defaults=dict(DEFAULTS),
    )


def _refuse_other_tasks(path: Path, meta: Dict[str, Any], outputs: Sequence[TensorSpec]) -> None:
    task = meta.get("task", "detect")
    if task != "detect":
        raise PackageError(
            f"{path}: an Ultralytics {task} model (metadata task {task!r}); only detection models "
            "(task 'detect') package with the yolov8 decoder"
        )
    args = meta.get("args")
    nms = isinstance(args, dict) and args.get("nms") is True
    if nms or meta.get("end2end") is True:
        how = "nms=True" if nms else "an end-to-end head (end2end, as YOLOv10 and YOLO26 have)"
        raise PackageError(
            f"{path}: exported with {how}: its output holds boxes after NMS ([1, max_det, 6]), not "
            "the [1, 4+C, N] the yolov8 decoder reads; export it with nms=False and end2end=False"
        )
    if len(outputs) != 1:
        shapes = ", ".join(str(list(o.shape)) for o in outputs)
        raise PackageError(
            f"{path}: {len(outputs)} outputs ({shapes}); a detection export has one [1, 4+C, N] "
            "(two outputs is a segmentation model)"
        )


def _input_size(path: Path, spec: TensorSpec, meta: Dict[str, Any], notes: List[str]) -> Tuple[int, int]:
    """(height, width) of the model input tensor, which is what the device feeds; metadata
    imgsz is only compared with it."""
    try:
        layout = spec.layout
    except BackendError as e:
        raise PackageError(f"{path}: {e}") from e
    if spec.channels != 3:
        raise PackageError(
            f"{path}: input {list(spec.shape)} has {spec.channels} channels; the agent feeds RGB (3)"
        )
    height, width = spec.hw
    if height <= 0 or width <= 0:
        raise PackageError(
            f"{path}: input {spec.name!r} {list(spec.shape)} has a dynamic size (exported with "
            "dynamic=True); export it with dynamic=False: the device needs a fixed input size"
        )
    if spec.shape[0] not in (1, -1):
        raise PackageError(
            f"{path}: input {list(spec.shape)} takes a batch of {spec.shape[0]}; export it with batch=1"
        )
    imgsz = _imgsz(meta)
    said = ""
    if imgsz is not None:
        said = (
            f"; metadata imgsz {list(imgsz)} agrees"
            if imgsz == (height, width)
            else (f"; metadata imgsz {list(imgsz)} disagrees, the tensor is what runs")
        )
    notes.append(f"input size: {width}x{height}, from the input tensor {list(spec.shape)} {layout}{said}")
    return height, width


def _labels(files: ModelFiles, ex: _Export, notes: List[str]) -> List[str]:
    where = str(ex.artifact.file)
    names = _names(ex.metadata, where)
    if files.labels is not None:
        labels = read_labels(files.labels)
        instead = f" (instead of the {len(names)} names in its metadata)" if names is not None else ""
        notes.append(f"labels: {len(labels)} from {files.labels}{instead}")
        return labels
    if names is not None:
        notes.append(f"labels: {len(names)} from the metadata 'names' ({_preview(names)})")
        return names
    if ex.labels_fallback:
        found = f"{len(ex.labels_fallback)} from the IR's rt_info model_info"
        notes.append(f"labels: {found}, spaces read as '_' ({_preview(ex.labels_fallback)})")
        return ex.labels_fallback
    raise PackageError(
        f"{where}: no class names: the file carries no Ultralytics metadata 'names'; "
        "give --labels FILE (one label a line, in class order)"
    )


def _preview(labels: Sequence[str]) -> str:
    return ", ".join(labels[:3]) + (", …" if len(labels) > 3 else "")


def _output_layout(path: Path, outputs: Sequence[TensorSpec], count: int, notes: List[str]) -> bool:
    """True for ``[1, 4+C, N]``, False for ``[1, N, 4+C]``, where C is the number of labels."""
    shape = tuple(outputs[0].shape)
    if len(shape) != 3 or shape[0] not in (1, -1):
        raise PackageError(
            f"{path}: output {list(shape)} is not the yolov8 layout [1, 4+C, N] (or [1, N, 4+C])"
        )
    rows = 4 + count
    if shape[1] == rows:
        notes.append(f"decoder: yolov8, output {list(shape)}: 4 box + {count} class rows, {shape[2]} anchors")
        return True
    if shape[2] == rows:
        notes.append(
            f"decoder: yolov8, output {list(shape)}: {shape[1]} anchors, 4 box + {count} class columns"
        )
        return False
    fits = [d - 4 for d in shape[1:] if d > 4]
    room = f"; it has room for {min(fits)} classes" if fits else ""
    raise PackageError(
        f"{path}: {count} labels do not fit the output {list(shape)}: the yolov8 layout [1, 4+C, N] "
        f"needs {rows} rows for them{room} (check --labels)"
    )


def _boxes(path: Path, ex: _Export, channels_first: bool, notes: List[str]) -> str:
    """pixels or normalized: what the outputs on a grey frame say when they are clear, else
    the format's convention when the file is an Ultralytics export; refused otherwise."""
    evidence, seen = _box_evidence(ex, channels_first)
    if evidence == ex.boxes:
        notes.append(f"boxes: {ex.boxes} ({ex.boxes_why}); the outputs on a grey frame agree ({seen})")
        return ex.boxes
    if evidence is not None:
        notes.append(f"boxes: {evidence}, from the outputs on a grey frame ({seen}), although {ex.boxes_why}")
        return evidence
    if ex.metadata:
        notes.append(f"boxes: {ex.boxes} ({ex.boxes_why}); not checked against the outputs: {seen}")
        return ex.boxes
    raise PackageError(
        f"{path}: cannot tell whether its boxes are in pixels or normalised: it has no Ultralytics "
        f"metadata, and the outputs on a grey frame do not say ({seen})"
    )


def _box_evidence(ex: _Export, channels_first: bool) -> Tuple[Optional[str], str]:
    """("pixels" | "normalized" | None, what was seen) from one run on a grey frame."""
    if ex.run is None:
        return None, ex.not_run or "the runtime is not installed here"
    height, width = ex.input.hw
    lut = value_lut(InputSpec(width=width, height=height), ex.input)
    grey = np.full(tuple(max(d, 1) for d in ex.input.shape), lut[GREY], dtype=lut.dtype)
    try:
        out = ex.run(grey)
    except Exception as e:  # each runtime raises its own classes
        raise PackageError(f"{ex.artifact.file}: does not run on a grey frame: {_line(e)}") from e
    x = out[0]
    boxes = x[:4] if channels_first else x[:, :4].T
    finite = np.abs(boxes[np.isfinite(boxes)])
    if finite.size == 0:
        return None, "no finite box coordinate"
    top = float(finite.max())
    if top > PIXELS_ABOVE:
        return "pixels", f"box coordinates up to {top:.1f}"
    if NOTHING_BELOW <= top <= NORMALIZED_UP_TO:
        return "normalized", f"every box coordinate <= {top:.2f}"
    return None, f"box coordinates up to {top:.2f}, which fits neither"


def _line(e: BaseException, last: bool = False) -> str:
    """A runtime's message on one line, as a CLI error is: folded, or (``last``, for OpenVINO,
    which puts the source location first and the reason last) its last line."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    if not lines:
        return type(e).__name__
    return lines[-1] if last else " ".join(str(e).split())


def _suggested_name(model: Path) -> str:
    stem = model.name if model.is_dir() else model.stem
    return EXPORT_SUFFIX_RE.sub("", stem) or stem
