"""TensorFlow frozen-graph SSD detectors as OpenCV's DNN module runs them: the frozen graph
(``frozen_inference_graph.pb``, the weights) with the text graph OpenCV's
``tf_text_graph_ssd.py`` writes for it (``.pbtxt``: the layers, ending in OpenCV's PriorBox and
DetectionOutput), on the ``opencv`` backend (artifact runtime ``opencv``: file = the .pb,
config = the .pbtxt, as ``cv2.dnn.readNetFromTensorflow(pb, pbtxt)`` takes them). cv2.dnn returns
DetectionOutput's ``[1, 1, N, 7]``, so the decoder is ``openvino-ssd``.

Given as ``--model FROZEN.pb`` (the text graph beside it: the same name with .pbtxt, else the one
.pbtxt there that holds a DetectionOutput) or ``--model GRAPH.pbtxt --weights FROZEN.pb``.

Read from the text graph: the input size (the input Placeholder's shape, which
tf_text_graph_ssd.py sets from its --image_width/--image_height), DetectionOutput's num_classes,
background_label_id and keep_top_k, and whether the graph normalises its input itself (it keeps
the Object Detection API's ``Preprocessor/mul`` and ``Preprocessor/sub``: pixels 0..255 go in).
Assumed and said: RGB (TensorFlow), stretch (fixed_shape_resizer), and, where the text graph
dropped the preprocessor, the Object Detection API's SSD range [-1, 1].
Labels come from ``--labels`` (a label map's id N is the op's class N: label_offset 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Tuple

from edge_agent.decoders import openvino_ssd

from ..errors import PackageError
from .base import ArtifactFiles, Inferred, ModelFiles
from .common import check_decoder, detection_output_labels, given_labels, input_section, top_k_defaults
from .textproto import Message, fields, parse, scalar

OP = "DetectionOutput"
SSD_RANGE = [-1.0, 1.0]  # the Object Detection API's SSD preprocessing, (x - 127.5) / 127.5
PREPROCESSOR = "Preprocessor/"
TEXT_GRAPH = "a text graph (.pbtxt) for OpenCV, made by its samples/dnn/tf_text_graph_ssd.py"


class FrozenGraphKind:
    name = "tf-frozen-graph"

    def claims(self, files: ModelFiles) -> bool:
        suffix = files.model.suffix.lower()
        weights = files.weights.suffix.lower() if files.weights else None
        return files.model.is_file() and (suffix == ".pb" or (suffix == ".pbtxt" and weights == ".pb"))

    def inspect(self, files: ModelFiles) -> Inferred:
        check_decoder(files, openvino_ssd.TYPE, f"{OP} [1, 1, N, 7] (cv2.dnn)")
        pb, pbtxt = _files(files)
        notes = [f"artifact: opencv {pb.name} with its text graph {pbtxt.name}"]
        nodes = _nodes(pbtxt)
        width, height = _input_size(pbtxt, nodes, notes)
        detection = _one(pbtxt, nodes, OP)
        attrs = _attrs(detection)
        if "num_classes" not in attrs:
            raise PackageError(f"{pbtxt}: the {OP} node has no num_classes")
        op = f"{OP} {scalar(detection, 'name')!r}"
        labels, source = given_labels(files, "no labels: a frozen graph carries none")
        labels, offset = detection_output_labels(
            labels,
            source,
            int(attrs["num_classes"]),
            int(attrs.get("background_label_id", 0)),
            pbtxt,
            op,
            notes,
        )
        if any(
            scalar(n, "name").startswith(PREPROCESSOR) and scalar(n, "op") in ("Mul", "Sub") for n in nodes
        ):
            value_range = [0.0, 255.0]
            notes.append(
                "range [0, 255]: the text graph keeps the Object Detection API's Preprocessor/ "
                "mul and sub, so the graph normalises pixel values itself"
            )
        else:
            value_range = SSD_RANGE
            notes.append(
                "range [-1, 1]: assumed, the Object Detection API's SSD normalisation (x-127.5)/127.5, "
                "which the text graph leaves out (for another range, edit input.range in the bundle's "
                "manifest.json and run: cloud-trainer package BUNDLE_DIR)"
            )
        notes.append("color rgb: assumed (TensorFlow models are trained on RGB)")
        notes.append("resize stretch: SSD models are trained on stretched, not letterboxed, images")
        defaults = None
        keep_top_k = int(attrs.get("keep_top_k", 0))
        if keep_top_k > 0:
            defaults = top_k_defaults(keep_top_k)
            notes.append(f"max_detections {keep_top_k} ({op} keep_top_k)")
        return Inferred(
            kind=self.name,
            labels=labels,
            input=input_section(width, height, "rgb", "stretch", value_range),
            decoder={"type": openvino_ssd.TYPE, "params": {"label_offset": offset}},
            artifacts=[ArtifactFiles("opencv", "fp32", pb, config=pbtxt)],
            notes=notes,
            name=pb.parent.name if pb.stem == "frozen_inference_graph" else pb.stem,
            defaults=defaults,
        )


KIND = FrozenGraphKind()


def _files(files: ModelFiles) -> Tuple[Path, Path]:
    """(frozen graph .pb, text graph .pbtxt)."""
    model = files.model
    if model.suffix.lower() == ".pbtxt":
        assert files.weights is not None  # claims saw it
        if not files.weights.is_file():
            raise PackageError(f"{files.weights}: no such file (the frozen graph --weights names)")
        return files.weights, model
    if model.name == "saved_model.pb" or (model.parent / "variables").is_dir():
        raise PackageError(
            f"{model}: a TensorFlow SavedModel, not a frozen graph; export a frozen graph (the Object "
            "Detection API's export_inference_graph.py) and make its text graph for OpenCV"
        )
    if files.weights is not None:
        raise PackageError(
            f"{files.weights}: the frozen graph {model.name} holds the weights; give the text graph "
            f"as --model GRAPH.pbtxt --weights {model.name}"
        )
    same = model.with_suffix(".pbtxt")
    if same.is_file():
        return model, same
    found = [p for p in sorted(model.parent.glob("*.pbtxt")) if OP.encode() in p.read_bytes()]
    if len(found) == 1:
        return model, found[0]
    which = f"several hold a {OP}: {', '.join(p.name for p in found)}" if found else "none is beside it"
    raise PackageError(
        f"{model}: cv2.dnn needs {TEXT_GRAPH}; {which}; give it as --model GRAPH.pbtxt --weights {model.name}"
    )


def _nodes(pbtxt: Path) -> List[Message]:
    try:
        text = pbtxt.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PackageError(f"{pbtxt}: cannot read the text graph: {e}") from e
    nodes = fields(parse(text, str(pbtxt)), "node")
    if not nodes:
        raise PackageError(f"{pbtxt}: no nodes in it: not {TEXT_GRAPH}")
    return nodes


def _one(pbtxt: Path, nodes: List[Message], op: str) -> Message:
    found = [n for n in nodes if scalar(n, "op") == op]
    if len(found) != 1:
        raise PackageError(
            f"{pbtxt}: {len(found)} {op} nodes; the openvino-ssd decoder reads cv2.dnn's rows of exactly one "
            f"(is it {TEXT_GRAPH}?)"
        )
    return found[0]


def _attrs(node: Message) -> Dict[str, Any]:
    """A node's attrs: ``attr { key: "k" value { i: 3 } }`` -> {"k": "3"}; ``shape`` values as
    their list of dim sizes."""
    out: Dict[str, Any] = {}
    for attr in fields(node, "attr"):
        for value in fields(attr, "value")[:1]:
            for kind, v, _ in value:
                if kind == "shape":
                    out[scalar(attr, "key")] = [int(scalar(d, "size", "-1")) for d in fields(v, "dim")]
                elif isinstance(v, str):
                    out[scalar(attr, "key")] = v
    return out


def _input_size(pbtxt: Path, nodes: List[Message], notes: List[str]) -> Tuple[int, int]:
    placeholder = _one(pbtxt, nodes, "Placeholder")
    name = scalar(placeholder, "name")
    shape = _attrs(placeholder).get("shape")
    if not isinstance(shape, list) or len(shape) != 4 or min(shape[1:3]) <= 0:
        raise PackageError(
            f"{pbtxt}: the input {name!r} has no fixed height and width (shape {shape}); give it the "
            "size the model was trained at in its shape attr (tf_text_graph_ssd.py does so from "
            "--image_width/--image_height)"
        )
    if shape[3] not in (3, -1):
        raise PackageError(f"{pbtxt}: the input {name!r} has {shape[3]} channels; bundles take colour images")
    notes.append(f"input: {shape[2]}x{shape[1]} from the text graph's input {name!r} shape {shape}")
    return shape[2], shape[1]
