"""The steps after training, as the commands run them: export every format into a bundle,
check each artifact with the device's own runtime, evaluate, write the manifest."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from edge_agent.bundle import MANIFEST, Manifest, load_bundle
from edge_agent.errors import EdgewatchError

from .data import load_dataset
from .data.dataset import Dataset
from .edgetpu_check import check as edgetpu_check
from .errors import TrainerError
from .evaluate import Metrics, NotRunHere, artifact_detector, evaluate, open_artifact
from .export import FORMATS, export_all
from .package import artifact_entry, repackage, write_bundle
from .train import TRAINED_DEFAULTS, RunInfo, float_detector, load_model

log = logging.getLogger(__name__)

# How each artifact runtime is run on this machine for its check: (backend, device).
PRECISION = {"tflite": "int8", "edgetpu": "int8", "openvino": "fp16", "onnx": "fp32"}


def echo(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_run_model(run: Path, weights: str = "best") -> Tuple[RunInfo, Any, Any]:
    """(info, model, export model) of a trained run, or of a run ``import-darknet`` made (one
    set of weights, whatever ``weights`` says)."""
    from .darknet import run as imported

    info = RunInfo.load(run)
    if imported.is_imported(info):
        return imported.load(run, info)
    return load_model(run, weights)


def run_dataset(
    info: RunInfo, data: Optional[str] = None, fmt: Optional[str] = None
) -> Tuple[Dataset, Dataset]:
    """(train, val) of the run's own data (or of ``data`` as a whole for val)."""
    if data is not None:
        ds = load_dataset(data, fmt)
        return ds, ds
    path = info.data.get("path")
    if not path:
        raise TrainerError("the run does not record its dataset path; pass --data")
    ds = load_dataset(path, info.data.get("format"))
    if ds.classes != info.classes:
        raise TrainerError(f"{path}: classes {ds.classes} differ from the run's {info.classes}")
    cfg = info.config
    return ds.split(cfg.get("val_fraction", 0.2), cfg.get("seed", 0))


def measure(bundle_dir: Path, manifest: Manifest, val: Dataset) -> Dict[str, Any]:
    """mAP of every artifact through the device runtimes; an artifact this machine cannot run
    (an EdgeTPU model without an EdgeTPU) is reported as skipped with the reason."""
    per: Dict[str, Any] = {}
    for art in manifest.artifacts:
        try:
            detector = open_artifact(bundle_dir, art)
        except NotRunHere as e:
            per[art.runtime] = {"skipped": str(e)}
            echo(f"  {art.runtime}: not measured here ({e})")
            continue
        try:
            m = evaluate(detector, val)
        finally:
            detector.close()
        per[art.runtime] = {"map50": round(m.map50, 4), "map50_95": round(m.map50_95, 4)}
        echo(f"  {art.runtime} ({art.precision}): mAP@0.5 {m.map50:.4f}  mAP@.5:.95 {m.map50_95:.4f}")
    return per


def export_run(
    run: Path,
    formats: List[str],
    out: Optional[Path] = None,
    name: Optional[str] = None,
    version: str = "1.0.0",
    weights: str = "best",
    evaluate: bool = True,
    sign_key: Optional[Path] = None,
) -> Dict[str, Any]:
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise TrainerError(f"unknown export format(s) {', '.join(unknown)}; choose from {', '.join(FORMATS)}")
    info, model, export_model = load_run_model(run, weights)
    size, (lo, hi) = int(info.input["width"]), info.input["range"]
    int8 = "tflite" in formats or "edgetpu" in formats
    if (int8 or evaluate) and not info.data.get("path"):
        raise TrainerError(
            f"{run}: no dataset in {run.name}/run.json to {'calibrate int8 on' if int8 else 'evaluate on'}; "
            "import the model with --data DATA, or export --formats openvino,onnx --no-evaluate"
        )
    out = out or run / "bundle"
    if out.exists() and any(out.iterdir()):
        for stale in out.iterdir():  # a re-export replaces the bundle
            stale.unlink()
    # An imported model without a dataset exports what needs none (checked above).
    empty = Dataset(list(info.classes), [])
    train_set, val_set = run_dataset(info) if info.data.get("path") else (empty, empty)
    echo(f"exporting {run} ({weights} weights) as {', '.join(formats)} into {out}")
    made = export_all(
        export_model,
        size,
        (float(lo), float(hi)),
        [s.image for s in train_set.samples or val_set.samples],  # an imported run's data is all val
        out,
        formats,
        resize=info.input.get("resize", "letterbox"),
    )

    notes: Dict[str, Any] = {}
    if "tflite" in made:
        report = edgetpu_check(made["tflite"])
        notes["edgetpu_check"] = report.as_dict()
        (run / "edgetpu_check.json").write_text(json.dumps(report.as_dict(), indent=2) + "\n")
        verdict = (
            "every operation maps to the EdgeTPU"
            if report.maps_fully
            else f"{len(report.findings)} finding(s)"
        )
        echo(f"EdgeTPU static check of {made['tflite'].name}: {report.ops} ops, {verdict}")
        for f in report.findings:
            echo(f"  {f}")
    if "edgetpu" in formats and "edgetpu" not in made:
        notes["edgetpu"] = "edgetpu_compiler not on PATH: no EdgeTPU artifact in the bundle"
        echo(notes["edgetpu"])

    keep = [r for r in ("tflite", "edgetpu", "openvino", "onnx") if r in made and r in formats]
    for runtime, path in made.items():  # intermediates (onnx for openvino, int8 for edgetpu)
        if runtime not in keep and path.parent == out:
            path.unlink()
    artifacts = []
    for runtime in keep:
        path = made[runtime]
        weights_file = path.with_suffix(".bin") if runtime == "openvino" else None
        artifacts.append(artifact_entry(runtime, PRECISION[runtime], path, weights=weights_file))

    metrics: Dict[str, Any] = {}
    if evaluate:
        echo("evaluating on the validation split:")
        m = _evaluate_float(info, model, val_set, run)
        metrics = {"val_images": m.images, "map50": round(m.map50, 4), "map50_95": round(m.map50_95, 4)}
        metrics["per_class"] = m.as_dict()["per_class"]
    manifest = write_bundle(
        out,
        name=name or _default_name(run),
        version=version,
        labels=info.classes,
        input=info.input,
        decoder=info.decoder,
        artifacts=artifacts,
        defaults=TRAINED_DEFAULTS.model_dump(),
        metrics=metrics,
        source={"dataset_sha256": info.data.get("sha256"), "run": run.name, "model": info.spec},
    )
    # Every artifact now meets its device runtime: load, warm (shapes vs decoder), and mAP.
    if evaluate:
        metrics["per_artifact"] = measure(out, manifest, val_set)
    else:
        for art in manifest.artifacts:
            try:
                artifact_detector(out, art.runtime).close()
            except EdgewatchError as e:
                if art.runtime != "edgetpu":
                    raise TrainerError(f"{art.file}: the {art.runtime} runtime cannot run it: {e}") from e
    manifest = _set_metrics(out, metrics, sign_key)
    return {
        "bundle": str(out),
        "name": manifest.name,
        "version": manifest.version,
        "artifacts": [a.file for a in manifest.artifacts],
        "metrics": {k: v for k, v in metrics.items() if k != "per_class"},
        **notes,
    }


def _default_name(run: Path) -> str:
    import re

    name = re.sub(r"[^a-z0-9._-]+", "-", run.resolve().name.lower()).strip("-._") or "model"
    return name[:64]


def _evaluate_float(info: RunInfo, model: Any, val: Dataset, run: Path) -> Metrics:
    m = evaluate(float_detector(info, model, run), val)
    echo(f"  float (keras): mAP@0.5 {m.map50:.4f}  mAP@.5:.95 {m.map50_95:.4f}")
    return m


def _set_metrics(bundle_dir: Path, metrics: Dict[str, Any], sign_key: Optional[Path]) -> Manifest:
    path = bundle_dir / MANIFEST
    doc = json.loads(path.read_text())
    doc["metrics"] = metrics
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return repackage(bundle_dir, sign_key=sign_key)


def evaluate_run(
    run: Path,
    bundle: Optional[Path] = None,
    data: Optional[str] = None,
    fmt: Optional[str] = None,
    weights: str = "best",
    update_manifest: bool = True,
) -> Dict[str, Any]:
    info, model, _ = load_run_model(run, weights)
    _, val = run_dataset(info, data, fmt)
    echo(f"evaluating on {len(val.samples)} images:")
    m = _evaluate_float(info, model, val, run)
    metrics: Dict[str, Any] = m.as_dict()
    bundle = bundle or (run / "bundle")
    if (bundle / MANIFEST).is_file():
        manifest = load_bundle(bundle).manifest
        metrics["per_artifact"] = measure(bundle, manifest, val)
        if update_manifest and data is None:
            signed = (bundle / "manifest.sig").is_file()
            _set_metrics(bundle, metrics, None)
            if signed:
                echo(
                    f"{bundle}: metrics updated; the signature was removed: "
                    "sign again with `cloud-trainer package --sign-key`"
                )
    (run / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
