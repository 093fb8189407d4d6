"""Load the exported IR with the agent's openvino backend under OpenVINO 2022.3 and compare its
outputs with the ONNX reference recorded when the model was built; run the DetectionOutput IR
through the whole detector; and, given a second directory (made by ``python -m
tests.darknet_models DIR`` in the trainer's environment), load the IR of an imported darknet Tiny
YOLOv2 and compare it with current OpenVINO and with OpenCV's darknet reader. Exits non-zero on
any mismatch."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import numpy as np

from edge_agent.backends.openvino import OpenVINOBackend, import_openvino
from edge_agent.bundle import load_bundle
from edge_agent.detector import Detector


def check_darknet(made: Path) -> bool:
    """The IR of a Tiny YOLOv2 imported with ``import-darknet`` (random weights in darknet's
    format): it loads here, its raw region output matches current OpenVINO's (the same IR, both
    f32) closely and OpenCV's darknet reader (float32 weights, not FP16) within FP16's error, and
    the yolov2 decoder takes it."""
    bundle = load_bundle(made / "bundle")
    ref = np.load(made / "reference.npz")
    # The recorded inputs are prepared tensors: the model itself, without OpenVINO's pre-processing.
    backend = OpenVINOBackend(device="CPU", inference_precision="f32", preprocess_in_model=False)
    backend.load(bundle)
    vs_current = vs_darknet = 0.0
    for x, current_out, darknet_out in zip(ref["inputs"], ref["openvino"], ref["opencv"]):
        got = backend.infer(x[None])[0].dequantized()[0]
        vs_current = max(vs_current, float(np.abs(got - current_out).max()))
        vs_darknet = max(vs_darknet, float(np.abs(got - darknet_out).max()))
    scale = float(np.abs(ref["opencv"]).max())
    print(
        f"darknet Tiny YOLOv2 {bundle.manifest.artifacts[0].file} over {len(ref['inputs'])} frames "
        f"(outputs up to {scale:.2f}): max |2022.3 - current OpenVINO| = {vs_current:.5f}, "
        f"max |2022.3 - OpenCV darknet fp32| = {vs_darknet:.5f}"
    )
    if vs_current > 2e-3 * scale or vs_darknet > 0.02 * scale:
        print("OpenVINO 2022.3 outputs of the darknet model differ from the reference", file=sys.stderr)
        return False
    Detector(bundle.manifest, backend).warm()  # the yolov2 decoder takes its output
    return True


def main(models: Path, darknet: Optional[Path] = None) -> int:
    _, version = import_openvino()
    print(f"OpenVINO {version} on Python {sys.version.split()[0]}")
    if not version.startswith("2022.3"):
        print(f"expected OpenVINO 2022.3, got {version}", file=sys.stderr)
        return 1
    bundle = load_bundle(models / "shapes")
    ref = np.load(models / "shapes" / "reference.npz")
    # f32 on both sides: x86 CPUs with bf16 units would otherwise each round differently. The
    # recorded inputs are prepared tensors: the model itself, without OpenVINO's pre-processing.
    backend = OpenVINOBackend(device="CPU", inference_precision="f32", preprocess_in_model=False)
    backend.load(bundle)
    # FP16 weights alone move a sigmoid output by up to ~0.03 from the float ONNX model, in
    # current OpenVINO as much as in 2022.3; so 2022.3 is held to current OpenVINO's outputs
    # (recorded when the model was built, both in f32) tightly, and to ONNX loosely.
    vs_current = vs_onnx = 0.0
    for x, onnx_out, current_out in zip(ref["inputs"], ref["outputs"], ref["openvino"]):
        got = backend.infer(x[None])[0].dequantized()
        vs_current = max(vs_current, float(np.abs(got - current_out).max()))
        vs_onnx = max(vs_onnx, float(np.abs(got - onnx_out).max()))
    print(
        f"shapes model_fp16.xml over {len(ref['inputs'])} frames: max |2022.3 - current OpenVINO| = "
        f"{vs_current:.5f}, max |2022.3 - ONNX fp32| = {vs_onnx:.5f}"
    )
    if vs_current > 2e-3 or vs_onnx > 0.05:
        print("OpenVINO 2022.3 outputs differ from the reference", file=sys.stderr)
        return 1
    detector = Detector(bundle.manifest, backend)
    detector.warm()
    # The agent's default: 2022.3's PrePostProcessor takes the BGR uint8 frame and does colour,
    # range and layout in the model; its outputs must be the numpy path's.
    in_model = OpenVINOBackend(device="CPU", inference_precision="f32")
    in_model.load(bundle)
    framed = Detector(bundle.manifest, in_model)
    frame = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
    a = framed.backend.infer(framed.prepare(frame)[0])[0].dequantized()
    b = backend.infer(detector.prepare(frame)[0])[0].dequantized()
    ppp_diff = float(np.abs(a - b).max())
    print(f"pre-processing in the model: takes the frame {in_model.input.takes_bgr_frame}, {ppp_diff:.2e}")
    if not in_model.input.takes_bgr_frame or ppp_diff > 1e-4:
        print("OpenVINO 2022.3's PrePostProcessor path differs from the numpy path", file=sys.stderr)
        return 1

    ovssd = load_bundle(models / "ovssd")
    ssd_backend = OpenVINOBackend(device="CPU")
    ssd_backend.load(ovssd)
    image = np.zeros((64, 64, 3), np.uint8)
    image[16:32, 32:48] = (0, 0, 255)  # red (BGR) in grid cell row 1, column 2
    found = Detector(ovssd.manifest, ssd_backend).detect(image).detections
    ok = len(found) == 1 and found[0].label == "red" and abs(found[0].box.xmin - 0.5) < 0.02
    print(f"ovssd DetectionOutput: {[(d.label, d.score, d.box.model_dump()) for d in found]}")
    if not ok:
        print("DetectionOutput model did not find the red cell at x=0.5..0.75, y=0.25..0.5", file=sys.stderr)
        return 1
    if darknet is not None and not check_darknet(darknet):
        return 1
    print("OpenVINO 2022.3 check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else None))
