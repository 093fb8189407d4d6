"""The models the suite runs.

- ``demo``: the demo's shapes 1.0.0 (256x256, the trainer's tiny backbone): under a millisecond
  per inference here, so what the service adds around inference is most of a frame's cost.
- ``tiny-yolov2``: Tiny YOLOv2 at 416x416 with three classes, imported with ``import-darknet``
  and exported to int8 TFLite and OpenVINO IR FP16: tens of milliseconds on the CPU, where
  inference dominates. Its weights are random (nothing is downloaded); the speed of a network
  does not depend on the values of its weights, and the int8 calibration runs on synthetic
  scenes; its score threshold is raised so that it finds a few boxes per frame, as a trained
  model would. Built by ``python -m benchmarks.models OUT`` in its own process (TensorFlow stays out
  of the process that measures), in about 40 s.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TINY_YOLOV2 = "tiny-yolov2"
SCORE_THRESHOLD = 0.75


def build_tiny_yolov2(out: Path) -> Path:
    """``out/bundle``: the bundle (unsigned)."""
    from cloud_trainer.cli import main
    from cloud_trainer.data import synthesize
    from edge_agent.sources.synthetic import SHAPE_LABELS
    from tests.darknet_models import TINY_YOLOV2 as CFG
    from tests.darknet_models import write_cfg, write_random_weights

    out.mkdir(parents=True, exist_ok=True)
    cfg = write_cfg(out / "tiny.cfg", CFG, size=416, classes=len(SHAPE_LABELS))
    weights = write_random_weights(cfg, out / "tiny.weights", seed=7)
    names = out / "shapes.names"
    names.write_text("".join(f"{label}\n" for label in SHAPE_LABELS))
    synthesize(out / "data", 48, 0, "yolo", 640, 480)
    run, bundle = out / "run", out / "bundle"
    data = ["--data", str(out / "data")]
    for args in (
        ["import-darknet", str(cfg), str(weights), "--names", str(names), *data, "--out", str(run)],
        [
            "export",
            str(run),
            "--formats",
            "tflite,openvino",
            "--no-evaluate",
            "--out",
            str(bundle),
            "--name",
            TINY_YOLOV2,
        ],
    ):
        if main(args) != 0:
            raise SystemExit(f"cloud-trainer {' '.join(args)} failed")
    # Random weights put a hundred boxes over the default threshold in every frame; a trained
    # detector finds a handful. At 0.75 these find 3-6 per frame, so decoding and publishing
    # cost what they would with a real model (the manifest is signed after this, by the caller).
    manifest = bundle / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["defaults"]["score_threshold"] = SCORE_THRESHOLD
    manifest.write_text(json.dumps(doc, indent=2) + "\n")
    return bundle


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m benchmarks.models OUT")
    print(build_tiny_yolov2(Path(sys.argv[1])))
