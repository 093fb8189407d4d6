"""`cloud-trainer package --model` on TFLite SSD models ending in TFLite_Detection_PostProcess
(issue 10, point 1, the tflite_ssd kind): float and quantized (uint8 input), with the EdgeTPU
twin beside them, labels from a label map, Coral's indexed .txt or the TFLite metadata's packed
label file, the input range from the metadata, the input quantization or the TF Object Detection
API's convention.

The models are built here with TensorFlow: the real TFLite_Detection_PostProcess custom op
(a tf.function with ``experimental_implements``, which the converter turns into the op, as the
Object Detection API's export_tflite_graph does) over one anchor per grid cell with zero box
encodings, and class scores from each cell's colour (byom_kit), so that the right detections are
known. The TFLite metadata is written as tflite_support's writers do it (a TFLITE_METADATA
buffer, the label file in a zip appended to the model). No EdgeTPU compiler runs here: the twin
is the quantized model with one operator turned into edgetpu-custom-op, which is all package can
tell of a compiled model without an EdgeTPU (the bundle's edgetpu artifact is not run here).
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest

from tests.models.build import cell_anchors
from tests.trainer.byom_kit import (
    artifacts_of,
    detects,
    has_note,
    input_of,
    manifest,
    notes_of,
    package,
    refused,
)

SIZE, CELLS, MAX_DETECTIONS = 32, 4, 10
LABEL_MAP = "item {\n  id: 1\n  display_name: 'red'\n}\nitem {\n  id: 2\n  display_name: 'blue'\n}\n"
# TFLite_Detection_PostProcess's attributes: its ``experimental_implements`` signature.
POSTPROCESS_ATTRS = {
    "max_detections": ("i", MAX_DETECTIONS),
    "max_classes_per_detection": ("i", 1),
    "detections_per_class": ("i", 100),
    "use_regular_nms": ("b", "false"),
    "nms_score_threshold": ("f", 0.3),
    "nms_iou_threshold": ("f", 0.5),
    "y_scale": ("f", 10.0),
    "x_scale": ("f", 10.0),
    "h_scale": ("f", 5.0),
    "w_scale": ("f", 5.0),
    "num_classes": ("i", 2),
}
POSTPROCESS = 'name: "TFLite_Detection_PostProcess" ' + " ".join(
    f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}' for key, (kind, value) in POSTPROCESS_ATTRS.items()
)


def build_ssd(path: Path, value_range: Tuple[float, float], quantize: bool = False) -> Path:
    """A TFLite SSD whose input takes pixel values mapped to ``value_range``; a cell's class
    scores are p_r(1-p_g)(1-p_b) (red) and p_b(1-p_r)(1-p_g) (blue), p its mean colour in 0..1:
    1 for a pure colour, 0 for black or white. ``quantize``: full-integer, uint8 input."""
    import tensorflow as tf

    lo, hi = value_range
    n = CELLS * CELLS

    class SSD(tf.Module):
        @tf.function(experimental_implements=POSTPROCESS)
        def postprocess(self, boxes, scores, anchors):  # type: ignore[no-untyped-def]
            # The converter replaces the body with the custom op; these are placeholders.
            return tuple(
                tf.constant(0.0, name=name) for name in ("boxes", "classes", "scores", "num_detections")
            )

        @tf.function(input_signature=[tf.TensorSpec((1, SIZE, SIZE, 3), tf.float32, name="image")])
        def serve(self, x):  # type: ignore[no-untyped-def]
            k = SIZE // CELLS
            p = (tf.nn.avg_pool2d(x, k, k, "VALID") - lo) / (hi - lo)
            r, g, b = p[..., 0], p[..., 1], p[..., 2]
            red, blue = r * (1 - g) * (1 - b), b * (1 - r) * (1 - g)
            scores = tf.reshape(tf.stack([tf.zeros_like(red), red, blue], -1), (1, n, 3))  # background first
            return self.postprocess(tf.zeros((1, n, 4)), scores, tf.constant(cell_anchors(CELLS)))

    module = SSD()
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [module.serve.get_concrete_function()], module
    )
    converter.allow_custom_ops = True
    if quantize:
        rng = np.random.default_rng(0)

        def representative():  # type: ignore[no-untyped-def]
            for colour in ((hi, lo, lo), (lo, lo, hi), (lo, lo, lo), (hi, hi, hi)):
                image = np.full((1, SIZE, SIZE, 3), lo, np.float32)
                image[0, : SIZE // 2, : SIZE // 2] = colour
                yield [image]
            for _ in range(4):
                yield [rng.uniform(lo, hi, (1, SIZE, SIZE, 3)).astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.inference_input_type = tf.uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(converter.convert())
    return path


def _vector(builder, offsets: Sequence[int]) -> int:  # type: ignore[no-untyped-def]
    builder.StartVector(4, len(offsets), 4)
    for offset in reversed(offsets):
        builder.PrependUOffsetTRelative(offset)
    return int(builder.EndVector())


def _floats(builder, values: Sequence[float]) -> int:  # type: ignore[no-untyped-def]
    builder.StartVector(4, len(values), 4)
    for v in reversed(values):
        builder.PrependFloat32(v)
    return int(builder.EndVector())


def metadata_buffer(mean: float, std: float, label_file: str) -> bytes:
    """A tflite_support ModelMetadata (metadata_schema.fbs, "M001"): the input an RGB image
    normalised by (x - mean) / std, the classes output's values labelled by ``label_file``."""
    import flatbuffers

    b = flatbuffers.Builder(1024)
    mean_v, std_v = _floats(b, [mean]), _floats(b, [std])
    b.StartObject(2)  # NormalizationOptions: mean, std
    b.PrependUOffsetTRelativeSlot(0, mean_v, 0)
    b.PrependUOffsetTRelativeSlot(1, std_v, 0)
    normalization = b.EndObject()
    b.StartObject(2)  # ProcessUnit: options_type (1 = NormalizationOptions), options
    b.PrependUint8Slot(0, 1, 0)
    b.PrependUOffsetTRelativeSlot(1, normalization, 0)
    units = _vector(b, [b.EndObject()])
    b.StartObject(2)  # ImageProperties: color_space (1 = RGB)
    b.PrependInt8Slot(0, 1, 0)
    properties = b.EndObject()
    b.StartObject(3)  # Content: content_properties_type (2 = ImageProperties), content_properties
    b.PrependUint8Slot(0, 2, 0)
    b.PrependUOffsetTRelativeSlot(1, properties, 0)
    content = b.EndObject()
    b.StartObject(7)  # TensorMetadata: 3 content, 4 process_units
    b.PrependUOffsetTRelativeSlot(3, content, 0)
    b.PrependUOffsetTRelativeSlot(4, units, 0)
    inputs = _vector(b, [b.EndObject()])
    name = b.CreateString(label_file)
    b.StartObject(4)  # AssociatedFile: 0 name, 2 type (3 = TENSOR_VALUE_LABELS)
    b.PrependUOffsetTRelativeSlot(0, name, 0)
    b.PrependInt8Slot(2, 3, 0)
    files = _vector(b, [b.EndObject()])
    outputs: List[int] = []
    for labelled in (False, True, False, False):  # boxes, classes, scores, count
        b.StartObject(7)
        if labelled:
            b.PrependUOffsetTRelativeSlot(6, files, 0)
        outputs.append(b.EndObject())
    outputs_v = _vector(b, outputs)
    b.StartObject(7)  # SubGraphMetadata: 2 input_tensor_metadata, 3 output_tensor_metadata
    b.PrependUOffsetTRelativeSlot(2, inputs, 0)
    b.PrependUOffsetTRelativeSlot(3, outputs_v, 0)
    subgraphs = _vector(b, [b.EndObject()])
    title = b.CreateString("cells detector")
    b.StartObject(8)  # ModelMetadata: 0 name, 3 subgraph_metadata
    b.PrependUOffsetTRelativeSlot(0, title, 0)
    b.PrependUOffsetTRelativeSlot(3, subgraphs, 0)
    b.Finish(b.EndObject(), file_identifier=b"M001")
    return bytes(b.Output())


def add_metadata(path: Path, mean: float, std: float, labels: Dict[str, str]) -> None:
    """Metadata as tflite_support's MetadataPopulator adds it: a TFLITE_METADATA buffer in the
    model, the associated files in a zip archive appended to it."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(path))
    buffer = schema.BufferT()
    buffer.data = np.frombuffer(metadata_buffer(mean, std, next(iter(labels))), np.uint8)
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name, entry.buffer = "TFLITE_METADATA", len(model.buffers) - 1
    model.metadata = [*(model.metadata or []), entry]
    flatbuffer_utils.write_model(model, str(path))
    with zipfile.ZipFile(path, "a") as archive:  # appended after the flatbuffer
        for name, text in labels.items():
            archive.writestr(name, text)


def fake_edgetpu_twin(cpu: Path) -> Path:
    """``X_edgetpu.tflite`` beside ``cpu``: the model with its first operator made the
    edgetpu-custom-op, as the EdgeTPU compiler leaves a compiled model."""
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(cpu))
    code = schema.OperatorCodeT()
    code.customCode, code.builtinCode, code.deprecatedBuiltinCode = "edgetpu-custom-op", 32, 32
    model.operatorCodes.append(code)
    model.subgraphs[0].operators[0].opcodeIndex = len(model.operatorCodes) - 1
    twin = cpu.with_name(cpu.stem + "_edgetpu.tflite")
    flatbuffer_utils.write_model(model, str(twin))
    return twin


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Path]:
    root = tmp_path_factory.mktemp("tflite-ssd")
    unit = build_ssd(root / "unit" / "cells_meta.tflite", (0.0, 1.0))
    add_metadata(unit, 0.0, 255.0, {"labelmap.txt": "red\nblue\n", "notes.txt": "not the labels\n"})
    quant = build_ssd(root / "quant" / "cells_quant.tflite", (-1.0, 1.0), quantize=True)
    return {
        "float": build_ssd(root / "float" / "cells.tflite", (-1.0, 1.0)),
        "metadata": unit,
        "quant": quant,
        "twin": fake_edgetpu_twin(quant),
    }


# A red and a blue cell found where they are; a white one is neither.
CELLS_SEEN = {(0, 3): "red", (2, 0): "blue", (3, 3): "white"}


@pytest.mark.needs_tf
def test_a_float_ssd_with_a_label_map(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models: Dict[str, Path]
) -> None:
    labels = tmp_path / "label_map.pbtxt"
    labels.write_text(LABEL_MAP)
    out = tmp_path / "bundle"
    err = package(capsys, models["float"], out, "--labels", str(labels))
    doc = manifest(out)
    assert doc["name"] == "cells" and doc["labels"] == ["red", "blue"]
    assert doc["decoder"] == {"type": "ssd", "params": {"label_offset": 0}}
    assert doc["input"] == input_of(SIZE, "rgb", "stretch", [-1.0, 1.0])
    assert doc["defaults"]["max_detections"] == MAX_DETECTIONS
    assert artifacts_of(doc) == [("tflite", "cells.tflite", None, "fp32")]
    assert notes_of(err)[:3] == [
        "classes: 2 (TFLite_Detection_PostProcess num_classes)",
        f"labels: 2 from {labels}",
        "label_offset 0: the op numbers classes from 0 without the background "
        "(a label map's id N is class N-1)",
    ]
    assert has_note(err, "input: 32x32 float32 from the model's input tensor")
    assert has_note(err, "range [-1, 1]: assumed", "Object Detection API", "no normalisation metadata")
    assert has_note(err, "color rgb: assumed")
    assert has_note(err, "resize stretch")
    assert has_note(err, "decoder ssd: outputs")
    assert has_note(err, f"max_detections {MAX_DETECTIONS}")
    assert has_note(err, "tflite: verified")
    detects(capsys, out, tmp_path / "cells.png", (64, 64), CELLS, CELLS_SEEN, "--backend", "tflite")


@pytest.mark.needs_tf
def test_a_quantized_ssd_with_its_edgetpu_twin_and_coral_labels(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models: Dict[str, Path]
) -> None:
    labels = tmp_path / "coco_labels.txt"
    labels.write_text("0  red\n1  blue\n")
    for given in (models["quant"], models["twin"]):  # either twin may be the one named
        out = tmp_path / given.stem
        err = package(capsys, given, out, "--labels", str(labels))
        doc = manifest(out)
        assert doc["name"] == "cells_quant"
        assert artifacts_of(doc) == [
            ("tflite", "cells_quant.tflite", None, "int8"),
            ("edgetpu", "cells_quant_edgetpu.tflite", None, "int8"),
        ]
        assert has_note(err, "artifacts: tflite cells_quant.tflite and its EdgeTPU-compiled twin")
        assert has_note(err, "input: 32x32 uint8 (scale 0.00784", "zero point 127)")
        assert has_note(
            err, "range [-0.99", "own scale and zero point", "pixel values reach the model unchanged"
        )
        assert has_note(err, "tflite: verified") and has_note(err, "edgetpu: not run here")
    lo, hi = doc["input"]["range"]
    assert lo == pytest.approx(-127 / 127.5, abs=1e-3) and hi == pytest.approx(128 / 127.5, abs=1e-3)
    detects(capsys, out, tmp_path / "cells.png", (64, 64), CELLS, CELLS_SEEN, "--backend", "tflite")
    # The compiled model alone: an edgetpu-only bundle, read from the flatbuffer.
    alone = tmp_path / "alone"
    alone.mkdir()
    twin = Path(shutil.copy(models["twin"], alone))
    err = package(capsys, twin, tmp_path / "tpu", "--labels", str(labels))
    doc = manifest(tmp_path / "tpu")
    assert [a["runtime"] for a in doc["artifacts"]] == ["edgetpu"]
    assert has_note(err, "edgetpu cells_quant_edgetpu.tflite only", "runs on a Coral only")


@pytest.mark.needs_tf
def test_labels_and_normalisation_from_the_tflite_metadata(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models: Dict[str, Path]
) -> None:
    out = tmp_path / "bundle"
    err = package(capsys, models["metadata"], out)  # no --labels: the model packs them
    doc = manifest(out)
    assert doc["labels"] == ["red", "blue"]
    assert (doc["input"]["range"], doc["input"]["color"]) == ([0.0, 1.0], "rgb")
    assert has_note(err, f"labels: 2 from {models['metadata']}:labelmap.txt (named by its TFLite metadata)")
    assert has_note(err, "range [0.0, 1.0]: the TFLite metadata's normalisation (mean [0.0], std [255.0])")
    assert has_note(err, "color rgb: the TFLite metadata's colour space")
    detects(capsys, out, tmp_path / "cells.png", (32, 32), CELLS, CELLS_SEEN, "--backend", "tflite")
    # --labels still wins over the packed file; TF's "???" background line is left out.
    labels = tmp_path / "labelmap.txt"
    labels.write_text("???\nred\nblue\n")
    err = package(capsys, models["metadata"], tmp_path / "given", "--labels", str(labels))
    assert manifest(tmp_path / "given")["labels"] == ["red", "blue"]
    assert has_note(err, "labels: 'unused-0', first in", "is the background: left out")


def test_refusals_name_the_file_and_what_settles_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, models_dir: Path
) -> None:
    # The shipped SSD (tests/fixtures/models/ssd: the real op, three classes), so that this runs
    # without TensorFlow.
    model, out = (
        Path(shutil.copy(models_dir / "ssd" / "ssd.tflite", tmp_path / "cells.tflite")),
        tmp_path / "b",
    )
    line = refused(capsys, model, out)
    assert f"{model}: no labels: its TFLite metadata names no label file; give --labels FILE" in line
    two = tmp_path / "two.txt"
    two.write_text("red\nblue\n")
    line = refused(capsys, model, out, "--labels", str(two))
    assert f"{two}: 2 labels, but cells.tflite's TFLite_Detection_PostProcess has num_classes 3" in line
    labels = tmp_path / "labels.txt"
    labels.write_text("red\ngreen\nblue\n")
    line = refused(capsys, model, out, "--labels", str(labels), "--weights", str(labels))
    assert f"{labels}: a TFLite model keeps its weights inside; leave --weights out" in line
    line = refused(capsys, model, out, "--labels", str(labels), "--decoder", "openvino-ssd")
    assert f"{model}: --decoder openvino-ssd does not fit" in line and "its decoder is ssd" in line
    twin = Path(shutil.copy(model, tmp_path / "cells_edgetpu.tflite"))  # named like a twin, not compiled
    line = refused(capsys, model, out, "--labels", str(labels))
    assert f"{twin}: beside cells.tflite but not EdgeTPU-compiled" in line
    twin.unlink()
    err = package(capsys, model, out, "--labels", str(labels))  # what it reads without TensorFlow
    assert manifest(out)["labels"] == ["red", "green", "blue"]
    assert (
        has_note(err, "classes: 3")
        and has_note(err, "decoder ssd: outputs")
        and has_note(err, "tflite: verified")
    )
