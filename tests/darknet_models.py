"""Darknet models for the tests: the real Tiny YOLOv2 (VOC) and YOLOv3-tiny cfgs in
tests/fixtures/darknet (any input size or number of classes), random weights written in
darknet's own format (either header version), and OpenCV's darknet reader as the oracle.

``python -m tests.darknet_models OUT`` (the trainer's environment: TensorFlow, OpenVINO) makes,
for ``make check-ov2022``, ``OUT/bundle``: a Tiny YOLOv2 imported with ``import-darknet`` and
exported to OpenVINO IR, with ``OUT/reference.npz``: fixed inputs with the outputs of current
OpenVINO (f32) and of OpenCV's darknet reader on the same model.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "darknet"
TINY_YOLOV2 = FIXTURES / "yolov2-tiny-voc.cfg"
YOLOV3_TINY = FIXTURES / "yolov3-tiny.cfg"
HEADS = ("[region]", "[yolo]")


def cfg_text(cfg: Path, size: Optional[int] = None, classes: Optional[int] = None) -> str:
    """The cfg with another input size and/or number of classes (``classes=`` of every head and
    ``filters=`` of the convolution before it)."""
    lines = cfg.read_text().splitlines()
    last_filters = None
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if size is not None and key in ("width", "height"):
            lines[i] = f"{key}={size}"
        elif key == "filters":
            last_filters = i
        elif line.strip() in HEADS and classes is not None:
            assert last_filters is not None
            anchors = _head_anchors(lines, i)
            lines[last_filters] = f"filters={anchors * (5 + classes)}"
        elif key == "classes" and classes is not None:
            lines[i] = f"classes={classes}"
    return "\n".join(lines) + "\n"


def _head_anchors(lines: List[str], start: int) -> int:
    """Anchors one head predicts: the mask's length ([yolo]) or num ([region])."""
    opts = {}
    for line in lines[start + 1 :]:
        if line.startswith("["):
            break
        if "=" in line:
            k, v = (p.strip() for p in line.split("=", 1))
            opts[k] = v
    return len(opts["mask"].split(",")) if "mask" in opts else int(opts["num"])


def write_cfg(path: Path, cfg: Path, size: Optional[int] = None, classes: Optional[int] = None) -> Path:
    path.write_text(cfg_text(cfg, size, classes))
    return path


def header_bytes(version: Tuple[int, int, int], seen: int = 32013312) -> bytes:
    major, minor, _ = version
    head = np.array(version, "<i4").tobytes()
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    return head + np.array([seen], "<i8" if wide else "<i4").tobytes()


def write_random_weights(
    cfg: Path, out: Path, version: Tuple[int, int, int] = (0, 2, 0), seed: int = 0
) -> Path:
    """Random parameters in darknet's layout for every convolution of ``cfg``, scaled so that
    activations stay near 1 through the network (He-normal weights, batch-norm statistics near
    the identity) and the heads' outputs span a few units: large enough that a wrong layer shows,
    small enough that float32 rounding stays far below the oracle's tolerance."""
    from cloud_trainer.darknet.cfg import parse_network

    rng = np.random.default_rng(seed)
    chunks = [header_bytes(version)]
    for conv in parse_network(cfg).convs:
        n, fan_in = conv.filters, (conv.in_channels // conv.groups) * conv.size * conv.size
        parts = [rng.normal(0, 0.1, n)]  # biases
        if conv.batch_normalize:
            parts += [rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.uniform(0.5, 2.0, n)]
        # Heads (no batch norm) get logits of a few units, like a trained detector's.
        gain = 2.0 if conv.activation in ("leaky", "relu") else 1.0 if conv.batch_normalize else 16.0
        parts.append(rng.normal(0, np.sqrt(gain / fan_in), conv.weight_count))
        chunks += [p.astype("<f4").tobytes() for p in parts]
    out.write_bytes(b"".join(chunks))
    return out


def random_image(size: int, seed: int = 0) -> np.ndarray:
    """A BGR uint8 image: smooth blobs plus noise, so that every layer sees structure."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, size // 16), max(2, size // 16), 3), dtype=np.uint8)
    image = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image += rng.integers(-30, 31, image.shape, dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def model_input(image_bgr: np.ndarray) -> np.ndarray:
    """[1, H, W, 3] RGB in 0..1: what the Keras model takes (the manifest's rgb, range [0, 1])."""
    return (image_bgr[..., ::-1].astype(np.float32) / 255.0)[None]


def opencv_heads(cfg: Path, weights: Path, image_bgr: np.ndarray) -> List[np.ndarray]:
    """OpenCV's outputs of the layers that feed each [region] / [yolo] layer, NHWC (its darknet
    importer puts a Permute to NHWC before each head, named after the head's layer number)."""
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    h, w = image_bgr.shape[:2]
    blob = cv2.dnn.blobFromImage(image_bgr, 1 / 255.0, (w, h), swapRB=True, crop=False)
    net.setInput(blob)
    names = [f"permute_{i}" for i in head_indexes(cfg)]
    return [np.asarray(a) for a in net.forward(names)]


def head_indexes(cfg: Path) -> List[int]:
    """Layer numbers (from 0 after [net]) of the [region] and [yolo] sections."""
    sections = [line.strip() for line in cfg.read_text().splitlines() if line.strip().startswith("[")]
    return [i - 1 for i, s in enumerate(sections) if re.sub(r"\s", "", s) in HEADS]


def keras_heads(model, x: np.ndarray) -> List[np.ndarray]:  # type: ignore[no-untyped-def]
    out = model(x, training=False)
    return [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]


def max_abs_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    assert [x.shape for x in a] == [y.shape for y in b], ([x.shape for x in a], [y.shape for y in b])
    return max(float(np.abs(x - y).max()) for x, y in zip(a, b))


def build_ov2022_check(out: Path) -> None:
    """Tiny YOLOv2 (VOC, 416x416), random weights -> import-darknet -> export openvino, and the
    reference outputs that the OpenVINO 2022.3 check compares with."""
    from cloud_trainer.cli import main
    from edge_agent.backends.openvino import OpenVINOBackend
    from edge_agent.bundle import load_bundle

    out.mkdir(parents=True, exist_ok=True)
    cfg = write_cfg(out / "yolov2-tiny-voc.cfg", TINY_YOLOV2)
    weights = write_random_weights(cfg, out / "yolov2-tiny-voc.weights", seed=7)
    run, bundle = out / "run", out / "bundle"
    for args in (
        ["import-darknet", str(cfg), str(weights), "--names", str(FIXTURES / "voc.names"), "--out", str(run)],
        [
            "export",
            str(run),
            "--formats",
            "openvino",
            "--no-evaluate",
            "--out",
            str(bundle),
            "--name",
            "tiny-yolov2",
        ],
    ):
        if main(args) != 0:
            raise SystemExit(f"cloud-trainer {' '.join(args)} failed")
    images = [random_image(416, seed) for seed in range(3)]
    # raw tensors: the model itself, without OpenVINO's pre-processing
    backend = OpenVINOBackend(device="CPU", inference_precision="f32", preprocess_in_model=False)
    backend.load(load_bundle(bundle))
    nchw = [model_input(im).transpose(0, 3, 1, 2) for im in images]
    current = np.stack([backend.infer(x)[0].dequantized()[0] for x in nchw])
    darknet = np.stack([opencv_heads(cfg, weights, im)[0][0] for im in images])
    np.savez_compressed(out / "reference.npz", inputs=np.concatenate(nchw), openvino=current, opencv=darknet)
    print(f"{bundle}: IR of an imported Tiny YOLOv2 and reference outputs on {len(images)} frames")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.darknet_models OUT")
    build_ov2022_check(Path(sys.argv[1]))
