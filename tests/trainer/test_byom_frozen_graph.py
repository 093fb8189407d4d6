"""`cloud-trainer package --model` on TensorFlow frozen-graph SSDs for OpenCV's DNN module
(issue 10, point 1, the frozen_graph kind): the .pb with the text graph (.pbtxt) that OpenCV's
tf_text_graph_ssd.py writes for it, run by the opencv backend, decoded as openvino-ssd.

The frozen graph is built here with TensorFlow (a 1x1 convolution over each grid cell's mean
colour: byom_kit's cells), and its text graph written the way tf_text_graph_ssd.py does: the
graph's layers without their constants (cv2.dnn reads those from the .pb), then OpenCV's
PriorBox (one prior per cell) and DetectionOutput (background 0) over flattened predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Tuple

import numpy as np
import pytest

from tests.trainer.byom_kit import (
    artifacts_of,
    detects,
    has_note,
    input_of,
    manifest,
    package,
    refused,
)

pytestmark = pytest.mark.needs_tf

SIZE, CELLS = 32, 4
LABEL_MAP = "item {\n  id: 1\n  name: 'red'\n}\nitem {\n  id: 2\n  name: 'blue'\n}\n"

HEAD = """node {{ name: "loc/flatten" op: "Flatten" input: "BoxPredictor_0/BoxEncodingPredictor/BiasAdd" }}
node {{ name: "conf/flatten" op: "Flatten" input: "BoxPredictor_0/ClassPredictor/BiasAdd" }}
node {{ name: "conf/sigmoid" op: "Sigmoid" input: "conf/flatten" }}
node {{
  name: "PriorBox_0" op: "PriorBox"
  input: "BoxPredictor_0/BoxEncodingPredictor/BiasAdd" input: "image_tensor"
  attr {{ key: "flip" value {{ b: false }} }}
  attr {{ key: "clip" value {{ b: false }} }}
  attr {{ key: "width" value {{ tensor {{ dtype: DT_FLOAT tensor_shape {{ dim {{ size: 1 }} }}
    float_val: {cell} }} }} }}
  attr {{ key: "height" value {{ tensor {{ dtype: DT_FLOAT tensor_shape {{ dim {{ size: 1 }} }}
    float_val: {cell} }} }} }}
  attr {{ key: "variance" value {{ tensor {{ dtype: DT_FLOAT tensor_shape {{ dim {{ size: 4 }} }}
    float_val: 0.1 float_val: 0.1 float_val: 0.2 float_val: 0.2 }} }} }}
}}
node {{
  name: "detection_out" op: "DetectionOutput"
  input: "loc/flatten" input: "conf/sigmoid" input: "PriorBox_0"
  attr {{ key: "num_classes" value {{ i: 3 }} }}
  attr {{ key: "share_location" value {{ b: true }} }}
  attr {{ key: "background_label_id" value {{ i: 0 }} }}
  attr {{ key: "nms_threshold" value {{ f: 0.6 }} }}
  attr {{ key: "top_k" value {{ i: 100 }} }}
  attr {{ key: "code_type" value {{ s: "CENTER_SIZE" }} }}
  attr {{ key: "keep_top_k" value {{ i: 20 }} }}
  attr {{ key: "confidence_threshold" value {{ f: 0.3 }} }}
  attr {{ key: "loc_pred_transposed" value {{ b: true }} }}
}}
"""


def build_frozen_graph(
    out: Path, name: str, preprocessor: bool = True, fixed_size: bool = True
) -> Tuple[Path, Path]:
    """(frozen .pb, OpenCV text graph .pbtxt). With ``preprocessor`` the graph maps pixels
    0..255 to [-1, 1] itself (the Object Detection API's Preprocessor/mul and sub, kept in the
    text graph); without it, it takes [-1, 1]. Class logits of a cell from its mean (r, g, b) in
    [-1, 1]: red 10(r-g-b)-15, blue 10(b-r-g)-15 (pure colour +15, black -5, anything else lower)."""
    import tensorflow as tf
    from google.protobuf import text_format

    graph = tf.Graph()
    with graph.as_default():
        shape = (1, SIZE, SIZE, 3) if fixed_size else (None, None, None, 3)
        x = tf.compat.v1.placeholder(tf.float32, shape, name="image_tensor")
        if preprocessor:
            x = tf.subtract(
                tf.multiply(x, 2.0 / 255.0, name="Preprocessor/mul"), 1.0, name="Preprocessor/sub"
            )
        k = SIZE // CELLS
        mean = tf.nn.avg_pool2d(x, k, k, "VALID", name="FeatureExtractor/pool")
        kernel = np.zeros((1, 1, 3, 3), np.float32)
        kernel[0, 0, :, 1] = [10, -10, -10]
        kernel[0, 0, :, 2] = [-10, -10, 10]
        for head, weights, bias in (
            ("ClassPredictor", kernel, np.array([0.0, -15.0, -15.0], np.float32)),
            ("BoxEncodingPredictor", np.zeros((1, 1, 3, 4), np.float32), np.zeros(4, np.float32)),
        ):
            scope = f"BoxPredictor_0/{head}"
            conv = tf.nn.conv2d(
                mean, tf.constant(weights, name=f"{scope}/weights"), 1, "VALID", name=f"{scope}/Conv2D"
            )
            tf.nn.bias_add(conv, tf.constant(bias, name=f"{scope}/biases"), name=f"{scope}/BiasAdd")
    graph_def = graph.as_graph_def()
    pb = out / f"{name}.pb"
    out.mkdir(parents=True, exist_ok=True)
    pb.write_bytes(graph_def.SerializeToString())
    text = []
    for node in graph_def.node:
        if node.op == "Const":
            continue  # cv2.dnn takes the constants from the .pb by name
        for unused in ("T", "use_cudnn_on_gpu", "explicit_paddings"):  # as tf_text_graph_ssd.py drops them
            if unused in node.attr:
                del node.attr[unused]
        text.append("node {\n" + text_format.MessageToString(node, indent=2) + "}\n")
    pbtxt = out / f"{name}.pbtxt"
    pbtxt.write_text("".join(text) + HEAD.format(cell=float(k)))
    return pb, pbtxt


@pytest.mark.parametrize("preprocessor", [True, False])
def test_a_frozen_graph_with_its_text_graph(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, preprocessor: bool
) -> None:
    pb, _ = build_frozen_graph(tmp_path / "src", "ssd_cells", preprocessor)
    labels = tmp_path / "label_map.pbtxt"
    labels.write_text(LABEL_MAP)
    out = tmp_path / "bundle"
    err = package(capsys, pb, out, "--labels", str(labels))  # the text graph beside it by name
    doc = manifest(out)
    assert doc["labels"] == ["red", "blue"]
    assert doc["decoder"] == {"type": "openvino-ssd", "params": {"label_offset": 1}}
    assert doc["input"] == input_of(SIZE, "rgb", "stretch", [0.0, 255.0] if preprocessor else [-1.0, 1.0])
    assert doc["defaults"]["max_detections"] == 20
    assert artifacts_of(doc) == [("opencv", "ssd_cells.pb", "ssd_cells.pbtxt", "fp32")]
    assert has_note(err, "input: 32x32", "'image_tensor'")
    assert has_note(err, "label_offset 1", "background_label_id 0")
    if preprocessor:
        assert has_note(err, "range [0, 255]", "Preprocessor/")
    else:
        assert has_note(err, "range [-1, 1]: assumed", "Object Detection API")
    assert has_note(err, "opencv: verified")
    detects(
        capsys, out, tmp_path / "cells.png", (64, 48), CELLS, {(0, 1): "red", (3, 3): "blue", (1, 2): "white"}
    )


def test_the_text_graph_as_model_and_the_frozen_graph_as_weights(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pb, pbtxt = build_frozen_graph(tmp_path / "src", "frozen_inference_graph")
    graph = pbtxt.rename(tmp_path / "src" / "ssd_cells_opencv.pbtxt")
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n")
    out = tmp_path / "bundle"
    package(capsys, graph, out, "--weights", str(pb), "--labels", str(labels))
    doc = manifest(out)
    assert doc["name"] == "src"  # frozen_inference_graph.pb is named by its folder, as the OD API lays it out
    assert (doc["artifacts"][0]["file"], doc["artifacts"][0]["config"]) == (
        "frozen_inference_graph.pb",
        graph.name,
    )
    detects(capsys, out, tmp_path / "cells.png", (32, 32), CELLS, {(2, 2): "blue"})
    # Given the .pb alone, the one text graph beside it that holds a DetectionOutput is found.
    (tmp_path / "src" / "label_map.pbtxt").write_text(LABEL_MAP)
    package(capsys, pb, tmp_path / "found", "--labels", str(labels))
    assert manifest(tmp_path / "found")["artifacts"][0]["config"] == graph.name


def test_refusals_name_the_file_and_what_settles_it(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pb, pbtxt = build_frozen_graph(tmp_path / "src", "m", fixed_size=False)
    labels = tmp_path / "labels.txt"
    labels.write_text("red\nblue\n")
    out = tmp_path / "bundle"
    line = refused(capsys, pb, out, "--labels", str(labels))
    assert f"{pbtxt}: the input 'image_tensor' has no fixed height and width" in line
    assert "--image_width/--image_height" in line
    pb, pbtxt = build_frozen_graph(tmp_path / "ok", "m")
    line = refused(capsys, pb, out)
    assert f"{pb}: no labels: a frozen graph carries none; give --labels FILE" in line
    pbtxt.unlink()
    line = refused(capsys, pb, out, "--labels", str(labels))
    assert (
        f"{pb}: cv2.dnn needs a text graph (.pbtxt) for OpenCV" in line
        and "--model GRAPH.pbtxt --weights m.pb" in line
    )
    broken = tmp_path / "broken.pbtxt"
    broken.write_text('node {\n  name: "x"\n  op: "Placeholder"\n  attr {\n')
    line = refused(capsys, broken, out, "--weights", str(pb), "--labels", str(labels))
    assert f"{broken}: a message is not closed" in line
