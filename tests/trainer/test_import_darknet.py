"""``cloud-trainer import-darknet``: darknet cfg + weights into a Keras model and a run that
export and evaluate take like a trained one.

The oracle is OpenCV's own darknet reader (opencv-python-headless < 5): the real Tiny YOLOv2
(VOC) and YOLOv3-tiny cfgs and one that holds every other layer kind, random weights written in
darknet's format under both header versions (``seen`` int32 before 0.2, int64 from 0.2), and
the raw outputs that feed each region / yolo layer compared (OpenCV's Permute to NHWC just before
each head is that tensor), within 1e-3 on outputs spanning several units.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import List, Tuple

import cv2
import numpy as np
import pytest

from cloud_trainer.cli import main
from cloud_trainer.darknet.cfg import DarknetError, parse_network
from cloud_trainer.darknet.run import decoder_spec
from cloud_trainer.darknet.weights import read_header, read_weights
from tests.darknet_models import (
    FIXTURES,
    TINY_YOLOV2,
    YOLOV3_TINY,
    header_bytes,
    keras_heads,
    max_abs_diff,
    model_input,
    opencv_heads,
    random_image,
    write_cfg,
    write_random_weights,
)

needs_darknet_reader = pytest.mark.skipif(
    not hasattr(cv2.dnn, "readNetFromDarknet"),
    reason="this OpenCV has no darknet reader (OpenCV 5 dropped it)",
)
HEADERS = pytest.mark.parametrize("version", [(0, 1, 0), (0, 2, 0)], ids=["seen-int32", "seen-int64"])
TOLERANCE = 1e-3
SHAPES = ["circle", "square", "triangle"]


def convert(cfg: Path, weights: Path):  # type: ignore[no-untyped-def]
    from cloud_trainer.darknet.keras_model import build_model

    net = parse_network(cfg)
    return build_model(net, read_weights(weights, net)[1])


def oracle(
    tmp_path: Path, cfg: Path, version: Tuple[int, int, int], size: int, seed: int
) -> Tuple[float, float]:
    """(max |Keras - OpenCV| over every head, the largest OpenCV output) on one random image."""
    weights = write_random_weights(cfg, tmp_path / "model.weights", version, seed)
    image = random_image(size, seed)
    expected = opencv_heads(cfg, weights, image)
    got = keras_heads(convert(cfg, weights), model_input(image))
    return max_abs_diff(got, expected), max(float(np.abs(e).max()) for e in expected)


@needs_darknet_reader
@pytest.mark.needs_tf
@pytest.mark.slow
@HEADERS
def test_tiny_yolov2_voc_matches_opencv(tmp_path: Path, version: Tuple[int, int, int]) -> None:
    cfg = write_cfg(tmp_path / "yolov2-tiny-voc.cfg", TINY_YOLOV2)  # as shipped: 416x416, 13x13x125
    diff, scale = oracle(tmp_path, cfg, version, 416, seed=1)
    assert scale > 3, "outputs too small for the comparison to mean anything"
    assert diff <= TOLERANCE, f"max |keras - opencv| = {diff} (outputs up to {scale})"


@needs_darknet_reader
@pytest.mark.needs_tf
@HEADERS
def test_yolov3_tiny_matches_opencv(tmp_path: Path, version: Tuple[int, int, int]) -> None:
    cfg = write_cfg(tmp_path / "yolov3-tiny.cfg", YOLOV3_TINY)  # 416x416: 13x13x255 and 26x26x255
    diff, scale = oracle(tmp_path, cfg, version, 416, seed=2)
    assert scale > 3
    assert diff <= TOLERANCE, f"max |keras - opencv| = {diff} (outputs up to {scale})"


@needs_darknet_reader
@pytest.mark.needs_tf
@HEADERS
def test_every_layer_kind_matches_opencv(tmp_path: Path, version: Tuple[int, int, int]) -> None:
    """reorg, shortcut, dropout, route (groups, several, absolute), upsample by 4, depthwise and
    strided convolutions, mish / swish / logistic, and max-pooling padded every way darknet does."""
    cfg = FIXTURES / "mixed.cfg"
    diff, scale = oracle(tmp_path, cfg, version, 72, seed=3)
    assert scale > 3
    assert diff <= TOLERANCE, f"max |keras - opencv| = {diff} (outputs up to {scale})"


# ---- weights files -------------------------------------------------------------------------------


@HEADERS
def test_header_versions(tmp_path: Path, version: Tuple[int, int, int]) -> None:
    wide = version >= (0, 2, 0)
    seen = 2**33 + 5 if wide else 123456
    data = header_bytes(version, seen)
    header = read_header(tmp_path / "w", data)
    assert (header.major, header.minor, header.revision, header.seen) == (*version, seen)
    assert header.size == len(data) == (20 if wide else 16)


def write_small(tmp_path: Path, version: Tuple[int, int, int] = (0, 2, 0)) -> Tuple[Path, Path]:
    cfg = write_cfg(tmp_path / "yolov3-tiny.cfg", YOLOV3_TINY, size=64, classes=3)
    return cfg, write_random_weights(cfg, tmp_path / "yolov3-tiny.weights", version)


def test_weights_too_short_or_long_say_the_bytes(tmp_path: Path) -> None:
    cfg, weights = write_small(tmp_path)
    net = parse_network(cfg)
    data = weights.read_bytes()
    expected = 20 + 4 * sum(c.float_count for c in net.convs)
    assert len(data) == expected
    weights.write_bytes(data[:-4096])
    with pytest.raises(DarknetError) as e:
        read_weights(weights, net)
    last = net.convs[-1]
    assert f"needs {expected:,} bytes" in str(e.value) and f"the file has {expected - 4096:,}" in str(e.value)
    assert f"layer {last.index} ([convolutional] at {cfg}:{last.line})" in str(e.value)
    weights.write_bytes(data + b"\0" * 8)
    with pytest.raises(DarknetError, match=f"too long: .*the file has {expected + 8:,} \\(8 bytes more\\)"):
        read_weights(weights, net)
    # The header says int32 seen while the writer meant int64: four bytes off, every layer shifted.
    weights.write_bytes(np.array([0, 1, 0], "<i4").tobytes() + data[12:])
    with pytest.raises(DarknetError, match=r"too long: .*16-byte header for version 0\.1.*\(4 bytes more\)"):
        read_weights(weights, net)


def test_batch_norm_is_folded_as_darknet_computes_it(tmp_path: Path) -> None:
    cfg = tmp_path / "one.cfg"
    cfg.write_text(
        "[net]\nwidth=8\nheight=8\nchannels=3\n[convolutional]\nbatch_normalize=1\nfilters=2\nsize=1\n"
        "activation=linear\n[convolutional]\nfilters=6\nsize=1\nactivation=linear\n"
        "[yolo]\nmask=0\nanchors=4,4\nnum=1\nclasses=1\n"
    )
    bias, scale, mean, var = [1.0, -1.0], [2.0, 0.5], [0.5, 0.25], [4.0, 0.0]
    w = np.arange(6, dtype=np.float32).reshape(2, 3)  # [filters, in] for size 1
    head = np.zeros(6 + 12, np.float32)
    weights = tmp_path / "one.weights"
    weights.write_bytes(
        header_bytes((0, 2, 0))
        + np.array(bias + scale + mean + var, "<f4").tobytes()
        + w.tobytes()
        + head.tobytes()
    )
    _, params = read_weights(weights, parse_network(cfg))
    factor = np.array(scale) / (np.sqrt(var) + 1e-6)
    np.testing.assert_allclose(params[0].kernel[0, 0], (w * factor[:, None]).T, rtol=1e-6)
    np.testing.assert_allclose(params[0].bias, np.array(bias) - np.array(mean) * factor, rtol=1e-6)


# ---- cfg errors: one line, file:line, what is wrong -------------------------------------------------


def cli(args: List[str], capsys: pytest.CaptureFixture[str]) -> Tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err[-1] if err else ""


def printed(capsys: pytest.CaptureFixture[str]) -> dict:  # type: ignore[type-arg]
    """The one JSON line a command prints on stdout (the converters' chatter goes to stderr)."""
    (line,) = capsys.readouterr().out.strip().splitlines()
    return json.loads(line)


def import_args(cfg: Path, weights: Path, names: Path, out: Path) -> List[str]:
    return ["import-darknet", str(cfg), str(weights), "--names", str(names), "--out", str(out)]


@pytest.mark.parametrize(
    ("edit", "line_of", "message"),
    [
        (
            lambda t: t.replace("[upsample]", "[deconvolutional]"),
            "[deconvolutional]",
            r"\[deconvolutional\] layer type not supported",
        ),
        (
            lambda t: t.replace("layers = -1, 8", "layers = -1, 30"),
            "layers = -1, 30",
            r"layers: layer 30 is not an earlier layer",
        ),
        (
            lambda t: t.replace("activation=leaky", "activation=elu", 1),
            "activation=elu",
            r"activation=elu: not supported",
        ),
        (
            lambda t: t.replace("filters=24", "filters=25", 1),
            "[yolo]",
            r"need 24 input channels, the previous layer has 25",
        ),
        (lambda t: t.replace("stride=2\n", "stride=two\n", 1), "stride=two", r"stride=two: not a number"),
        (
            lambda t: t.replace("scales=.1,.1", "scales .1,.1"),
            "scales .1,.1",
            r"neither \[section\] nor key=value",
        ),
    ],
    ids=["unknown-layer", "route-ahead", "activation", "head-channels", "not-a-number", "no-equals"],
)
def test_cfg_errors_name_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit, line_of, message
) -> None:  # type: ignore[no-untyped-def]
    cfg, weights = write_small(tmp_path)
    text = edit(cfg.read_text())
    cfg.write_text(text)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if s.strip() == line_of)
    code, err = cli(import_args(cfg, weights, FIXTURES / "voc.names", tmp_path / "run"), capsys)
    assert code == 1
    assert err.startswith(f"cloud-trainer: {cfg}:{line}: ")
    assert re.search(message, err), err
    assert not (tmp_path / "run" / "run.json").exists()


def test_names_must_match_the_classes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg, weights = write_small(tmp_path)
    code, err = cli(import_args(cfg, weights, FIXTURES / "voc.names", tmp_path / "run"), capsys)
    line = next(i for i, s in enumerate(cfg.read_text().splitlines(), 1) if s.strip() == "[yolo]")
    assert code == 1
    assert err == f"cloud-trainer: {FIXTURES / 'voc.names'}: 20 labels, but {cfg}:{line}: [yolo] classes=3"


def test_decoder_params_from_the_cfg(tmp_path: Path) -> None:
    tiny = parse_network(TINY_YOLOV2)
    assert decoder_spec(tiny) == {
        "type": "yolov2",
        "params": {"anchors": [[1.08, 1.19], [3.42, 4.41], [6.63, 11.38], [9.42, 5.11], [16.62, 10.52]]},
    }
    v3 = parse_network(YOLOV3_TINY)
    assert decoder_spec(v3) == {  # the coarsest grid (13x13, mask 3,4,5) first, as the decoder pairs them
        "type": "yolov3",
        "params": {
            "anchors": [[10, 14], [23, 27], [37, 58], [81, 82], [135, 169], [344, 319]],
            "masks": [[3, 4, 5], [0, 1, 2]],
        },
    }


# ---- the run: export to every runtime, evaluate ------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from cloud_trainer.data import synthesize

    out = tmp_path_factory.mktemp("darknet-data") / "shapes"
    synthesize(out, 6, seed=3, width=160, height=120)
    return out


def artifact_outputs(bundle: Path, backend: str, image: np.ndarray) -> List[np.ndarray]:
    """Raw outputs of one artifact through the agent's own backend and pre-processing, NHWC."""
    from edge_agent.loading import open_detector

    detector, _ = open_detector(str(bundle), backend)
    try:
        tensor, _ = detector.prepare(image)
        outs = [o.dequantized() for o in detector.backend.infer(tensor)]
    finally:
        detector.close()
    return sorted(outs, key=lambda a: a.shape[1])


@needs_darknet_reader
@pytest.mark.needs_tf
@pytest.mark.slow
def test_tiny_yolov2_exports_to_every_runtime(
    tmp_path: Path, shapes_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An imported Tiny YOLOv2 (416x416, three classes) through export: int8 TFLite that the
    EdgeTPU maps whole, OpenVINO IR FP16 and ONNX, each run by the agent's backend and matching
    the darknet model as OpenCV runs it; mAP measured for each on the run's dataset."""
    cfg = write_cfg(tmp_path / "tiny.cfg", TINY_YOLOV2, classes=3)
    weights = write_random_weights(cfg, tmp_path / "tiny.weights", (0, 1, 0), seed=4)
    names = tmp_path / "shapes.names"
    names.write_text("\n".join(SHAPES) + "\n")
    run = tmp_path / "run"
    assert main([*import_args(cfg, weights, names, run), "--data", str(shapes_data)]) == 0
    summary = printed(capsys)
    assert summary["weights_header"]["seen_type"] == "int32" and summary["labels"] == 3
    assert main(["export", str(run)]) == 0
    result = printed(capsys)
    assert result["artifacts"] == ["model_int8.tflite", "model_fp16.xml", "model.onnx"]
    assert result["edgetpu_check"]["maps_fully"], result["edgetpu_check"]["findings"]
    assert set(result["metrics"]["per_artifact"]) == {"tflite", "openvino", "onnx"}
    bundle = run / "bundle"
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["labels"] == SHAPES and manifest["decoder"]["type"] == "yolov2"
    expected_input = {"width": 416, "height": 416, "color": "rgb", "resize": "stretch", "range": [0.0, 1.0]}
    assert manifest["input"] == {**expected_input, "pad_value": 127}

    # A frame like those int8 was calibrated on, 160x120: every runtime stretches it to 416x416.
    image = cv2.imread(str(next((shapes_data / "JPEGImages").iterdir())))
    darknet = opencv_heads(cfg, weights, cv2.resize(image, (416, 416), interpolation=cv2.INTER_LINEAR))
    scale = float(np.abs(darknet[0]).max())
    # fp32; fp16 weights; int8 (activations in 255 steps through nine layers: judged on average)
    limits = {
        "onnx": (1e-3, 1e-3),
        "openvino": (0.02 * scale, 0.005 * scale),
        "tflite": (0.15 * scale, 0.03 * scale),
    }
    for backend, (most, mean) in limits.items():
        got = artifact_outputs(bundle, backend, image)
        err = np.abs(got[0] - darknet[0])
        assert got[0].shape == darknet[0].shape == (1, 13, 13, 40)
        assert err.max() <= most and err.mean() <= mean, (
            f"{backend}: |artifact - darknet| max {err.max()}, mean {err.mean()} (outputs up to {scale})"
        )


@needs_darknet_reader
@pytest.mark.needs_tf
@pytest.mark.slow
def test_yolov3_tiny_with_and_without_data(
    tmp_path: Path, shapes_data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """YOLOv3-tiny (two outputs) imported without a dataset: int8 needs one and says so; IR and
    ONNX export without; `evaluate RUN --data` measures it; a second import into the run is
    refused. Imported with one: its int8 TFLite maps to the EdgeTPU whole and is measured."""
    cfg, weights = write_small(tmp_path)
    names = tmp_path / "shapes.names"
    names.write_text("\n".join(SHAPES) + "\n")
    run = tmp_path / "run"
    assert main(import_args(cfg, weights, names, run)) == 0
    capsys.readouterr()
    code, err = cli(["export", str(run)], capsys)
    assert (
        code == 1 and "no dataset in run/run.json to calibrate int8 on; import the model with --data" in err
    )
    assert main(["export", str(run), "--formats", "openvino,onnx", "--no-evaluate"]) == 0
    assert printed(capsys)["artifacts"] == ["model_fp16.xml", "model.onnx"]
    image = random_image(64, 5)
    darknet = sorted(opencv_heads(cfg, weights, image), key=lambda a: a.shape[1])
    assert [a.shape for a in darknet] == [(1, 2, 2, 24), (1, 4, 4, 24)]
    assert max_abs_diff(artifact_outputs(run / "bundle", "onnx", image), darknet) <= TOLERANCE
    assert main(["evaluate", str(run), "--data", str(shapes_data)]) == 0
    assert set(printed(capsys)["per_artifact"]) == {"openvino", "onnx"}
    shutil.copy(weights, tmp_path / "again.weights")
    code, err = cli(import_args(cfg, tmp_path / "again.weights", names, run), capsys)
    assert code == 1 and err.endswith("already holds a run (run.json); choose a new --out")

    with_data = tmp_path / "with-data"
    assert main([*import_args(cfg, weights, names, with_data), "--data", str(shapes_data)]) == 0
    capsys.readouterr()
    assert main(["export", str(with_data), "--formats", "tflite"]) == 0
    result = printed(capsys)
    assert result["edgetpu_check"]["maps_fully"], result["edgetpu_check"]["findings"]
    assert set(result["metrics"]["per_artifact"]) == {"tflite"}
    int8 = artifact_outputs(with_data / "bundle", "tflite", image)
    assert [a.shape for a in int8] == [(1, 2, 2, 24), (1, 4, 4, 24)]
