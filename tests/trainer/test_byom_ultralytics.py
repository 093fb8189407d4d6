"""`cloud-trainer package --model` on Ultralytics YOLOv8/YOLO11 exports (issue 10, point 1):
ONNX, the OpenVINO ``*_openvino_model/`` folder and TFLite (float32, float16, int8), each
packaged, verified and run through `edge-agent detect` with the detections it must give.

The exports are made here, laid out and annotated as ultralytics' exporter does it
(tests/ultralytics_like.py: a tiny detector whose outputs are known). The quick tests use
constant-output ONNX models made with the onnx package (no TensorFlow) for what the package
command reads, infers and refuses.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest
import yaml

from cloud_trainer.byom import ModelFiles
from cloud_trainer.byom.ultralytics import KIND, _parse, _tflite_metadata, _yaml_metadata
from cloud_trainer.cli import main as trainer
from cloud_trainer.errors import PackageError
from edge_agent.bundle import load_bundle
from edge_agent.cli import main as agent
from tests import ultralytics_like as ul
from tests.trainer.test_trainer_cli import one_line_error

# int8 moves a box edge by up to about one quantization step of the output (1/255 of the input
# side) and a score by as much; float runtimes agree to rounding.
TOLERANCE = {"int8": 0.01, "fp16": 2e-3, "fp32": 1e-4}


def package(
    capsys: pytest.CaptureFixture[str], model: Path, out: Path, *extra: str
) -> Tuple[Dict[str, Any], str]:
    """``cloud-trainer package --model``: (its JSON line, what it printed on stderr)."""
    code = trainer(["package", "--model", str(model), "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out.strip().splitlines()[-1]), captured.err


def refused(capsys: pytest.CaptureFixture[str], model: Path, out: Path, *extra: str) -> str:
    """The one-line error of a ``package --model`` that must fail."""
    return one_line_error(capsys, trainer(["package", "--model", str(model), "--out", str(out), *extra]))


def detect(
    capsys: pytest.CaptureFixture[str], bundle: Path, backend: str, *images: Path
) -> List[Dict[str, Any]]:
    """``edge-agent detect``: one detection message per image."""
    code = agent(["detect", "--bundle", str(bundle), "--backend", backend, *map(str, images)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return [json.loads(line) for line in captured.out.splitlines()]


def assert_detections(
    found: List[Dict[str, Any]], expected: Dict[str, Sequence[float]], tol: float, score: float = 1.0
) -> None:
    """``found`` holds exactly the ``expected`` labels, each at its box within ``tol`` and
    scoring ``score`` within ``tol`` (plus the 1/255 steps of an int8 output)."""
    boxes = ul.boxes_by_label(found)
    assert sorted(boxes) == sorted(expected), found
    for label, box in expected.items():
        assert np.allclose(boxes[label], box, atol=tol), (label, boxes[label], box)
    assert all(abs(d["score"] - score) <= tol + 0.01 for d in found), found


# -- constant-output ONNX models (no TensorFlow) ------------------------------------------------


def rows(boxes: Sequence[Sequence[float]], scores: Sequence[Sequence[float]]) -> np.ndarray:
    """A yolov8 output [1, 4+C, N] from N boxes (cx, cy, w, h) and N score rows."""
    return np.concatenate([np.asarray(boxes, np.float32), np.asarray(scores, np.float32)], axis=1).T[None]


def const_onnx(
    path: Path,
    output: np.ndarray,
    metadata: Optional[Dict[str, Any]] = None,
    input_shape: Sequence[Any] = (1, 3, 64, 64),
) -> Path:
    """An ONNX model whose one output is ``output`` whatever its input (``images`` ->
    ReduceMean * 0 + constant), with ``metadata`` in metadata_props as ultralytics writes it."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["images"], ["mean"], keepdims=0),
            helper.make_node("Mul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "rows"], ["output0"]),
        ],
        "const",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, list(input_shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
        [
            numpy_helper.from_array(np.zeros((), np.float32), "zero"),
            numpy_helper.from_array(output.astype(np.float32), "rows"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what every onnxruntime still in use reads
    for key, value in (metadata or {}).items():
        prop = model.metadata_props.add()
        prop.key, prop.value = key, str(value)
    onnx.save(model, str(path))
    return path


# One box of class 1 ("green light") at input pixels x 16..48, y 8..24, score 0.9; three more
# anchors with nothing in them. On a 64x64 frame (no padding) that is (0.25, 0.125, 0.75, 0.375).
ONE_BOX = rows(
    [[32, 16, 32, 16], [8, 8, 16, 16], [56, 56, 16, 16], [8, 56, 16, 16]],
    [[0, 0.9, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]],
)
ONE_BOX_EXPECTED = {"green light": (0.25, 0.125, 0.75, 0.375)}


def ultralytics_metadata(**changes: Any) -> Dict[str, Any]:
    meta = ul.metadata(
        {"batch": 1, "dynamic": False, "half": False, "opset": None, "simplify": True, "nms": False}
    )
    meta.update(changes)
    return meta


def square_frame(path: Path) -> Path:
    import cv2

    cv2.imwrite(str(path), np.full((64, 64, 3), 90, np.uint8))
    return path


def inspect(path: Path, **options: Any) -> Any:
    files = ModelFiles(model=path, **options)
    assert KIND.claims(files)
    return KIND.inspect(files)


# -- what ultralytics writes, read back ------------------------------------------------------


def test_onnx_metadata_values_are_python_literals() -> None:
    """ONNX metadata_props hold str() of Python objects: names an int-keyed dict with quotes of
    either kind, imgsz a list, booleans as True/False; plain strings stay strings."""
    raw = {
        k: str(v) for k, v in ultralytics_metadata(names={0: "person", 1: "traffic light", 2: "it's"}).items()
    }
    assert raw["names"] == "{0: 'person', 1: 'traffic light', 2: \"it's\"}"
    meta = _parse(raw, "m.onnx")
    assert meta["names"] == {0: "person", 1: "traffic light", 2: "it's"}
    assert meta["imgsz"] == [64, 64] and meta["stride"] == 16 and meta["end2end"] is False
    assert meta["args"]["nms"] is False and meta["task"] == "detect" and meta["author"] == "Ultralytics"
    with pytest.raises(PackageError, match=r"m\.onnx: metadata 'names' is not a Python literal"):
        _parse({"names": "{0: person}"}, "m.onnx")


def test_tflite_metadata_zip_in_every_form(tmp_path: Path) -> None:
    """metadata.json (JSON: names' keys are strings) or the older temp_meta.txt (a Python literal)
    in a zip appended to the model, else metadata.yaml beside it; a zipped label file of another
    kind of model is not Ultralytics metadata."""
    meta = ultralytics_metadata()
    flatbuffer = b"\x1c\x00\x00\x00TFL3" + bytes(64)  # what precedes the zip does not matter here
    for legacy, entry in ((False, "metadata.json"), (True, "temp_meta.txt")):
        path = tmp_path / f"{entry}.tflite"
        path.write_bytes(flatbuffer)
        ul.add_tflite_metadata(path, meta, legacy=legacy)
        found, source = _tflite_metadata(path)
        assert found["names"] in ({"0": "red", "1": "green light", "2": "blue"}, ul.NAMES)
        assert found["imgsz"] == [64, 64] and entry in source
    folder = tmp_path / "yolov8t_saved_model"
    folder.mkdir()
    plain = folder / "yolov8t_float32.tflite"
    plain.write_bytes(flatbuffer)
    assert _tflite_metadata(plain) == ({}, "")
    (folder / "metadata.yaml").write_text(yaml.safe_dump(meta, sort_keys=False, allow_unicode=True))
    found, source = _tflite_metadata(plain)
    assert found["names"] == ul.NAMES and source == "the metadata.yaml beside it"
    other = tmp_path / "mobilenet.tflite"
    other.write_bytes(flatbuffer)
    with zipfile.ZipFile(other, "a") as zf:
        zf.writestr("labels.txt", "cat\ndog\n")
    assert _tflite_metadata(other) == ({}, "")


def test_metadata_yaml_must_be_a_map(tmp_path: Path) -> None:
    path = tmp_path / "metadata.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(PackageError, match="metadata.yaml: not Ultralytics metadata"):
        _yaml_metadata(path)
    path.write_text("names: {0: a\n")
    with pytest.raises(PackageError, match="metadata.yaml: cannot read Ultralytics metadata"):
        _yaml_metadata(path)


# -- inference and refusals on constant-output ONNX models ------------------------------------


def test_onnx_with_metadata_packages_and_detects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = const_onnx(tmp_path / "yolov8t.onnx", ONE_BOX, ultralytics_metadata())
    line, err = package(capsys, model, tmp_path / "bundle")
    assert line["name"] == "yolov8t" and line["version"] == "1.0.0" and not line["signed"]
    assert "labels: 3 from the metadata 'names' (red, green light, blue)" in err
    assert "boxes: pixels" in err and "agree (box coordinates up to 56.0)" in err
    assert "onnx: verified" in err
    manifest = load_bundle(tmp_path / "bundle").manifest
    assert manifest.labels == ["red", "green light", "blue"]
    assert manifest.decoder.type == "yolov8" and manifest.decoder.params == {"boxes": "pixels"}
    assert manifest.input.resize == "letterbox" and manifest.input.pad_value == 114
    assert manifest.input.color == "rgb" and tuple(manifest.input.range) == (0.0, 1.0)
    assert (manifest.input.width, manifest.input.height) == (64, 64)
    assert manifest.defaults.score_threshold == 0.25 and manifest.defaults.max_detections == 300
    (message,) = detect(capsys, tmp_path / "bundle", "onnx", square_frame(tmp_path / "frame.png"))
    assert_detections(message["detections"], ONE_BOX_EXPECTED, 1e-4, score=0.9)
    assert message["model"] == {"name": "yolov8t", "version": "1.0.0"}


def test_no_names_and_no_labels_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = const_onnx(tmp_path / "plain.onnx", ONE_BOX)
    line = refused(capsys, model, tmp_path / "bundle")
    assert "plain.onnx: no class names" in line and "give --labels FILE" in line
    assert not (tmp_path / "bundle").exists()


def test_labels_file_must_fit_the_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = const_onnx(tmp_path / "plain.onnx", ONE_BOX)
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    line = refused(capsys, model, tmp_path / "bundle", "--labels", str(tmp_path / "two.txt"))
    assert "2 labels do not fit the output [1, 7, 4]" in line and "room for 3 classes" in line
    # metadata names that do not fit are refused the same way
    model = const_onnx(tmp_path / "meta.onnx", ONE_BOX, ultralytics_metadata(names={0: "a", 1: "b"}))
    assert "2 labels do not fit the output [1, 7, 4]" in refused(capsys, model, tmp_path / "bundle")


def test_labels_file_overrides_metadata_names(tmp_path: Path) -> None:
    model = const_onnx(tmp_path / "yolov8t.onnx", ONE_BOX, ultralytics_metadata())
    (tmp_path / "mine.txt").write_text("r\ng\nb\n")
    inferred = inspect(model, labels=tmp_path / "mine.txt")
    assert inferred.labels == ["r", "g", "b"]
    assert any("instead of the 3 names in its metadata" in n for n in inferred.notes)


def test_without_metadata_the_outputs_decide(tmp_path: Path) -> None:
    """No Ultralytics metadata, --labels given: pixel boxes are recognised from a grey frame,
    and so are normalised ones (this project's own ONNX exports are); outputs that say neither
    are refused, since nothing else would settle it."""
    (tmp_path / "labels.txt").write_text("red\ngreen\nblue\n")
    labels = tmp_path / "labels.txt"
    inferred = inspect(const_onnx(tmp_path / "a.onnx", ONE_BOX), labels=labels)
    assert inferred.kind == "yolov8-onnx" and inferred.decoder["params"] == {"boxes": "pixels"}
    normalised = ONE_BOX.copy()
    normalised[0, :4] /= 64
    inferred = inspect(const_onnx(tmp_path / "b.onnx", normalised), labels=labels)
    assert inferred.decoder["params"] == {"boxes": "normalized"}
    assert any("from the outputs on a grey frame" in n and "although" in n for n in inferred.notes)
    blank = np.zeros_like(ONE_BOX)
    with pytest.raises(PackageError, match="cannot tell whether its boxes are in pixels or normalised"):
        inspect(const_onnx(tmp_path / "c.onnx", blank), labels=labels)
    # with Ultralytics metadata the format's convention stands, and the note says it was not checked
    inferred = inspect(const_onnx(tmp_path / "d.onnx", blank, ultralytics_metadata()))
    assert inferred.decoder["params"] == {"boxes": "pixels"}
    assert any("not checked against the outputs" in n for n in inferred.notes)


def test_channels_last_output_is_read(tmp_path: Path) -> None:
    """[1, N, 4+C] (a transposed export) is the yolov8 layout too."""
    model = const_onnx(tmp_path / "t.onnx", ONE_BOX.transpose(0, 2, 1).copy(), ultralytics_metadata())
    inferred = inspect(model)
    assert any("4 anchors, 4 box + 3 class columns" in n for n in inferred.notes)


@pytest.mark.parametrize(
    "changes, output, message",
    [
        ({"task": "segment"}, ONE_BOX, "an Ultralytics segment model"),
        ({"task": "pose"}, ONE_BOX, "an Ultralytics pose model"),
        ({"args": {"nms": True}}, np.zeros((1, 300, 6), np.float32), "exported with nms=True"),
        ({"end2end": True}, np.zeros((1, 300, 6), np.float32), "an end-to-end head (end2end"),
    ],
)
def test_other_tasks_and_nms_exports_are_refused(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    changes: Dict[str, Any],
    output: np.ndarray,
    message: str,
) -> None:
    model = const_onnx(tmp_path / "m.onnx", output, ultralytics_metadata(**changes))
    assert message in refused(capsys, model, tmp_path / "bundle")


def test_dynamic_input_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = const_onnx(tmp_path / "m.onnx", ONE_BOX, ultralytics_metadata(), ("batch", 3, "height", "width"))
    line = refused(capsys, model, tmp_path / "bundle")
    assert "has a dynamic size (exported with dynamic=True)" in line and "dynamic=False" in line


def test_a_damaged_onnx_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage" * 10)
    assert "broken.onnx: not an ONNX model" in refused(capsys, tmp_path / "broken.onnx", tmp_path / "b")


def test_other_decoders_are_left_to_other_kinds(tmp_path: Path) -> None:
    model = const_onnx(tmp_path / "m.onnx", ONE_BOX, ultralytics_metadata())
    assert KIND.claims(ModelFiles(model=model, decoder="yolov8"))
    assert not KIND.claims(ModelFiles(model=model, decoder="ssd"))
    assert not KIND.claims(ModelFiles(model=tmp_path / "missing.onnx"))


# -- real exports of the known detector (TensorFlow) -------------------------------------------


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> ul.Exports:
    pytest.importorskip("tensorflow")
    pytest.importorskip("tf2onnx")
    pytest.importorskip("openvino")
    return ul.build(tmp_path_factory.mktemp("ultralytics"))


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("frames")
    return ul.scene(folder / "scene.png"), ul.empty_scene(folder / "empty.png")


CASES = {  # case -> (runtime, precision, boxes)
    "onnx": ("onnx", "fp32", "pixels"),
    "openvino": ("openvino", "fp32", "pixels"),
    "float32": ("tflite", "fp32", "normalized"),
    "float16": ("tflite", "fp16", "normalized"),
    "int8": ("tflite", "int8", "normalized"),
    "full_integer_quant": ("tflite", "int8", "normalized"),
}


def _model(exports: ul.Exports, case: str) -> Path:
    return {"onnx": exports.onnx, "openvino": exports.openvino}.get(case) or exports.tflite[case]


@pytest.mark.slow
@pytest.mark.needs_tf
@pytest.mark.parametrize("case", list(CASES))
def test_each_export_packages_verifies_and_detects(
    exports: ul.Exports,
    frames: Tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    case: str,
) -> None:
    runtime, precision, boxes = CASES[case]
    bundle = tmp_path / "bundle"
    line, err = package(capsys, _model(exports, case), bundle, "--version", "2.1.0")
    assert line["name"] == "yolov8t" and line["version"] == "2.1.0"
    assert f"{runtime}: verified" in err
    assert "labels: 3 from the metadata 'names'" in err and "agrees" in err
    assert f"boxes: {boxes}" in err and "the outputs on a grey frame agree" in err
    manifest = load_bundle(bundle).manifest
    assert manifest.labels == list(ul.NAMES.values())
    assert manifest.decoder.params == {"boxes": boxes}
    (art,) = manifest.artifacts
    assert (art.runtime, art.precision) == (runtime, precision)
    if runtime == "openvino":
        assert (art.file, art.weights) == ("yolov8t.xml", "yolov8t.bin")
    scene, empty = frames
    found, nothing = detect(capsys, bundle, runtime, scene, empty)
    assert_detections(found["detections"], ul.EXPECTED, TOLERANCE[precision])
    assert nothing["detections"] == []
    assert found["model"] == {"name": "yolov8t", "version": "2.1.0"} and found["backend"] == runtime


@pytest.mark.slow
@pytest.mark.needs_tf
def test_tflite_boxes_are_normalized_and_match_onnx(
    exports: ul.Exports, frames: Tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The reported bug: the TFLite export of the same model scored 0 mAP with the manifest
    written for its ONNX export, because its boxes are normalised. Packaged, each gets its own
    box convention and the two give the same detections; with the ONNX's manifest the TFLite
    boxes all collapse into the frame's top-left corner."""
    scene, _ = frames
    package(capsys, exports.onnx, tmp_path / "onnx")
    package(capsys, exports.tflite["float32"], tmp_path / "tflite")
    assert load_bundle(tmp_path / "onnx").manifest.decoder.params == {"boxes": "pixels"}
    assert load_bundle(tmp_path / "tflite").manifest.decoder.params == {"boxes": "normalized"}
    (from_onnx,) = detect(capsys, tmp_path / "onnx", "onnx", scene)
    (from_tflite,) = detect(capsys, tmp_path / "tflite", "tflite", scene)
    onnx_boxes, tflite_boxes = (
        ul.boxes_by_label(from_onnx["detections"]),
        ul.boxes_by_label(from_tflite["detections"]),
    )
    assert sorted(onnx_boxes) == sorted(tflite_boxes) == sorted(ul.EXPECTED)
    for label, box in onnx_boxes.items():
        assert np.allclose(tflite_boxes[label], box, atol=1e-4)

    # the hand-written manifest of the report: the ONNX's, with the TFLite file in it
    from cloud_trainer.package import repackage

    wrong = tmp_path / "by-hand"
    shutil.copytree(tmp_path / "tflite", wrong)
    doc = json.loads((wrong / "manifest.json").read_text())
    doc["decoder"] = {"type": "yolov8", "params": {"boxes": "pixels"}}
    (wrong / "manifest.json").write_text(json.dumps(doc))
    repackage(wrong)
    (by_hand,) = detect(capsys, wrong, "tflite", scene)
    for d in by_hand["detections"]:
        assert d["box"]["xmax"] < 0.1 and d["box"]["ymax"] < 0.2, d  # nowhere near the patches


@pytest.mark.slow
@pytest.mark.needs_tf
def test_openvino_without_metadata_yaml(exports: ul.Exports, tmp_path: Path) -> None:
    """An IR without its metadata.yaml: Ultralytics' rt_info model_info still names the
    labels (with "_" for spaces); an IR a user converted from the Ultralytics ONNX with ovc
    carries the ONNX metadata in rt_info framework, names as they were."""
    import openvino as ov

    folder = tmp_path / "yolov8t_openvino_model"
    shutil.copytree(exports.openvino, folder)
    (folder / "metadata.yaml").unlink()
    inferred = inspect(folder)
    assert inferred.labels == ["red", "green_light", "blue"] and inferred.kind == "yolov8-openvino"
    assert any("from the IR's rt_info model_info, spaces read as '_'" in n for n in inferred.notes)

    converted = tmp_path / "converted"
    converted.mkdir()
    ov.save_model(ov.convert_model(str(exports.onnx)), str(converted / "yolov8t.xml"), compress_to_fp16=True)
    inferred = inspect(converted / "yolov8t.xml")
    assert inferred.labels == list(ul.NAMES.values()) and inferred.kind == "ultralytics-openvino"
    assert inferred.artifacts[0].precision == "fp16"
    assert any("rt_info framework" in n for n in inferred.notes)


@pytest.mark.slow
@pytest.mark.needs_tf
def test_older_tflite_metadata_and_the_saved_model_folder(
    exports: ul.Exports, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """temp_meta.txt (tflite_support, older ultralytics) is read like metadata.json; the
    *_saved_model/ folder packages when it holds one .tflite and names them when it holds more."""
    legacy = ul.export_tflite(tmp_path / "legacy", "float32", legacy_metadata=True)
    inferred = inspect(legacy)
    assert inferred.labels == list(ul.NAMES.values())
    assert any("temp_meta.txt zipped onto the .tflite" in n for n in inferred.notes)

    saved_model = exports.tflite["float32"].parent
    line = refused(capsys, saved_model, tmp_path / "bundle")
    assert "give one model file of this folder as --model" in line and "yolov8t_int8.tflite" in line
    line_out, _ = package(capsys, legacy.parent, tmp_path / "from-folder")
    assert line_out["name"] == "yolov8t"
