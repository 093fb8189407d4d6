"""COCO mAP with pycocotools, for the float model and for every exported artifact, each run
through ``edge_agent``'s own backends and decoders on the original images.

``evaluate_bundles`` measures any bundles (the trainer's or a user's) on any labelled dataset:
each bundle's labels meet the dataset's classes by name, and every artifact gets AP@0.5 and
AP@[.5:.95] per class, side by side."""

from __future__ import annotations

import contextlib
import io
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from edge_agent.backends import registry
from edge_agent.backends.base import Backend
from edge_agent.bundle import MANIFEST, Artifact, Manifest, load_bundle
from edge_agent.detector import Detector, Thresholds
from edge_agent.errors import BackendUnavailable, EdgewatchError

from .data.dataset import Dataset
from .data.writers import coco_document
from .errors import TrainerError

log = logging.getLogger(__name__)

# What mAP is computed with: every box the model gives, as COCO's evaluation expects.
EVAL_THRESHOLDS = Thresholds(score_threshold=0.001, max_detections=100)


@dataclass(frozen=True)
class ClassAP:
    """One class's AP at IoU 0.5 and averaged over IoU 0.5:0.95 (COCO's two headline numbers)."""

    map50: float
    map50_95: float

    def as_dict(self) -> Dict[str, float]:
        return {"map50": round(self.map50, 4), "map50_95": round(self.map50_95, 4)}


def mean_ap(aps: Sequence[Optional[ClassAP]]) -> ClassAP:
    """COCO's mAP: the mean over the classes that have ground truth (None: no box of the class)."""
    have = [a for a in aps if a is not None]
    if not have:
        return ClassAP(0.0, 0.0)
    return ClassAP(float(np.mean([a.map50 for a in have])), float(np.mean([a.map50_95 for a in have])))


@dataclass
class Metrics:
    images: int
    map50: float
    map50_95: float
    per_class: Dict[str, Dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "val_images": self.images,
            "map50": round(self.map50, 4),
            "map50_95": round(self.map50_95, 4),
            "per_class": {k: {m: round(v, 4) for m, v in d.items()} for k, d in self.per_class.items()},
        }


def class_aps(dataset: Dataset, results: List[Dict[str, Any]]) -> Dict[str, Optional[ClassAP]]:
    """AP of every class of ``dataset`` for the COCO-format ``results`` (category ids are class
    ids); None for a class the dataset has no box of."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with_boxes = {b.class_id for s in dataset.samples for b in s.boxes}
    if not results:
        return {c: ClassAP(0.0, 0.0) if k in with_boxes else None for k, c in enumerate(dataset.classes)}
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools prints its tables
        gt = COCO()
        gt.dataset = coco_document(dataset, first_id=0)  # ids are list indices
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
    precision = ev.eval["precision"]  # [iou thresholds, recall, class, area, max dets]
    out: Dict[str, Optional[ClassAP]] = {}
    for k, name in enumerate(dataset.classes):
        p_all = precision[:, :, k, 0, -1]
        if not (p_all > -1).any():
            out[name] = None
            continue
        p50 = precision[0, :, k, 0, -1]
        out[name] = ClassAP(float(np.mean(p50[p50 > -1])), float(np.mean(p_all[p_all > -1])))
    return out


def coco_map(dataset: Dataset, results: List[Dict[str, Any]]) -> Metrics:
    aps = class_aps(dataset, results)
    total = mean_ap(list(aps.values()))
    zero = {"map50": 0.0, "map50_95": 0.0}  # what the manifest says of a class without boxes
    per_class = {c: {"map50": a.map50, "map50_95": a.map50_95} if a else dict(zero) for c, a in aps.items()}
    return Metrics(len(dataset.samples), total.map50, total.map50_95, per_class)


def detections(
    detector: Detector,
    dataset: Dataset,
    progress: Optional[Callable[[int], None]] = None,
    class_map: Optional[Dict[int, int]] = None,
) -> List[Dict[str, Any]]:
    """COCO-format results of ``detector`` on every image of ``dataset``. ``class_map``: the
    dataset class id of each model class id that has one; the model's other classes are left
    out (and do not take any of the 100 detections an image keeps)."""
    keep = EVAL_THRESHOLDS.max_detections or 100
    thresholds = EVAL_THRESHOLDS
    if class_map is not None and len(class_map) < len(detector.labels):
        thresholds = replace(EVAL_THRESHOLDS, max_detections=10 * keep)  # room for the classes left out
    saved = detector.thresholds
    detector.set_thresholds(thresholds)
    out: List[Dict[str, Any]] = []
    try:
        for i, s in enumerate(dataset.samples):
            image = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
            if image is None:
                raise FileNotFoundError(f"{s.image}: cannot read image")
            found = detector.detect(image).detections
            if class_map is not None:
                found = sorted((d for d in found if d.class_id in class_map), key=lambda d: -d.score)[:keep]
            for d in found:
                x0, y0 = d.box.xmin * s.width, d.box.ymin * s.height
                x1, y1 = d.box.xmax * s.width, d.box.ymax * s.height
                category = d.class_id if class_map is None else class_map[d.class_id]
                out.append(
                    {
                        "image_id": i,
                        "category_id": category,
                        "bbox": [x0, y0, x1 - x0, y1 - y0],
                        "score": d.score,
                    }
                )
            if progress:
                progress(i)
    finally:
        detector.set_thresholds(saved)
    return out


def evaluate(detector: Detector, dataset: Dataset) -> Metrics:
    return coco_map(dataset, detections(detector, dataset))


def artifact_detector(bundle_dir: Path, runtime: str) -> Detector:
    """The ``runtime`` artifact of the bundle on its native backend, warmed (output shapes
    checked against the decoder)."""
    bundle = load_bundle(bundle_dir, runtimes=[runtime])
    native = registry.native_backend(runtime)
    backend: Backend = registry.create(native.name, device=native.check_device)
    backend.load(bundle)
    detector = Detector(bundle.manifest, backend, where=str(bundle_dir / MANIFEST))
    detector.warm()
    return detector


class NotRunHere(TrainerError):
    """An artifact this machine cannot run: no backend for its runtime, the runtime's library or
    device is absent, or an EdgeTPU-compiled model without an EdgeTPU."""


def open_artifact(bundle_dir: Path, art: Artifact) -> Detector:
    """``artifact_detector`` for ``art``; NotRunHere (with the reason) where this machine cannot
    run it, a TrainerError naming the file where it runs but not as its manifest describes."""
    if art.runtime not in registry.artifact_runtimes():
        raise NotRunHere(f"no backend here runs {art.runtime} artifacts")
    try:
        return artifact_detector(bundle_dir, art.runtime)
    except BackendUnavailable as e:
        raise NotRunHere(str(e)) from e
    except EdgewatchError as e:
        if art.runtime == "edgetpu":  # the compiled twin runs on an EdgeTPU or not at all
            raise NotRunHere(str(e)) from e
        raise TrainerError(f"{bundle_dir / art.file}: the {art.runtime} runtime cannot run it: {e}") from e


@dataclass(frozen=True)
class LabelMap:
    """How a bundle's labels meet a dataset's classes: by name, exactly, else ignoring case
    where exactly one name on each side fits."""

    to_dataset: Dict[int, int]  # bundle class id -> dataset class id
    ignored: List[str]  # bundle labels the dataset lacks: their detections are left out
    not_covered: List[str]  # dataset classes the bundle lacks: no AP
    case_matched: Dict[str, str]  # bundle label -> the dataset class it matched ignoring case

    @classmethod
    def match(cls, labels: Sequence[str], classes: Sequence[str]) -> LabelMap:
        exact = {c: k for k, c in enumerate(classes)}
        folded: Dict[str, List[int]] = {}
        for k, c in enumerate(classes):
            folded.setdefault(c.strip().casefold(), []).append(k)
        label_folds = [label.strip().casefold() for label in labels]
        to: Dict[int, int] = {}
        ignored: List[str] = []
        case: Dict[str, str] = {}
        for i, label in enumerate(labels):
            if label in exact:
                to[i] = exact[label]
            elif len(folded.get(label_folds[i], [])) == 1 and label_folds.count(label_folds[i]) == 1:
                to[i] = folded[label_folds[i]][0]
                case[label] = classes[to[i]]
            else:
                ignored.append(label)
        covered = set(to.values())
        return cls(to, ignored, [c for k, c in enumerate(classes) if k not in covered], case)

    def as_dict(self) -> Dict[str, Any]:
        return {
            "ignored": self.ignored,
            "not_covered": self.not_covered,
            "matched_ignoring_case": self.case_matched,
        }

    def notes(self) -> List[str]:
        """What a user should know about the matching, one phrase each."""
        out = [f"label {a!r} taken as class {b!r}" for a, b in self.case_matched.items()]
        if self.ignored:
            out.append(f"{len(self.ignored)} label(s) the dataset lacks, ignored: {_names(self.ignored)}")
        if self.not_covered:
            out.append(f"dataset class(es) it lacks, not covered: {_names(self.not_covered)}")
        return out


def _names(names: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" (+{len(names) - most} more)" if len(names) > most else "")


def evaluate_bundles(
    bundle_dirs: Sequence[Path], dataset: Dataset, echo: Callable[[str], None]
) -> Dict[str, Any]:
    """Every artifact of every bundle on ``dataset``, through the device runtimes: AP@0.5 and
    AP@[.5:.95] per class and over the classes each bundle covers (and, when bundles cover
    different classes, over those all of them cover). An artifact this machine cannot run is
    reported skipped, with the reason. Echoes a side-by-side table; returns it as a document."""
    loaded: List[Tuple[Path, Manifest, LabelMap]] = []
    for d in bundle_dirs:
        manifest = load_bundle(d).manifest
        labels = LabelMap.match(manifest.labels, dataset.classes)
        if not labels.to_dataset:
            raise TrainerError(
                f"{d / MANIFEST}: none of its labels ({_names(manifest.labels)}) is a class of "
                f"{dataset.source} ({_names(dataset.classes)})"
            )
        loaded.append((d, manifest, labels))
    with_boxes = {dataset.classes[b.class_id] for s in dataset.samples for b in s.boxes}
    covered = [{c for c in dataset.classes if c not in labels.not_covered} for _, _, labels in loaded]
    common = set.intersection(*covered) if len(set(map(frozenset, covered))) > 1 else None
    boxes = sum(len(s.boxes) for s in dataset.samples)
    size = f"{len(dataset.samples)} images, {boxes} boxes, {len(dataset.classes)} classes"
    echo(f"evaluating on {dataset.source}: {size}")
    for n, (d, manifest, labels) in enumerate(loaded, 1):
        echo(f"[{n}] {manifest.name} {manifest.version} ({d})" + "".join(f"; {x}" for x in labels.notes()))
        if manifest.source.get("dataset_sha256") == dataset.sha256():
            echo(
                f"    warning: [{n}] was trained on this dataset: its training images are in it (--split val)"
            )
    results = []
    for n, (d, manifest, labels) in enumerate(loaded, 1):
        artifacts: Dict[str, Any] = {}
        for art in manifest.artifacts:
            t0 = time.time()
            entry: Dict[str, Any] = {"precision": art.precision}
            try:
                aps = _artifact_aps(d, art, dataset, labels)
            except NotRunHere as e:
                artifacts[art.runtime] = {**entry, "skipped": str(e)}
                echo(f"  [{n}] {art.runtime} ({art.precision}): not run here (the reason is below)")
                continue
            total = mean_ap(list(aps.values()))
            entry.update(total.as_dict(), classes=sum(1 for a in aps.values() if a is not None))
            if common is not None:
                entry["common"] = mean_ap([a for c, a in aps.items() if c in common]).as_dict()
            entry["per_class"] = {c: a.as_dict() if a else None for c, a in aps.items()}
            artifacts[art.runtime] = entry
            echo(f"  [{n}] {art.runtime} ({art.precision}): measured in {time.time() - t0:.1f}s")
        results.append(
            {
                "bundle": str(d),
                "name": manifest.name,
                "version": manifest.version,
                "labels": labels.as_dict(),
                "artifacts": artifacts,
            }
        )
    doc = {
        "data": dataset.source,
        "images": len(dataset.samples),
        "boxes": boxes,
        "classes": list(dataset.classes),
        "no_boxes": [c for c in dataset.classes if c not in with_boxes],
        "common": None if common is None else [c for c in dataset.classes if c in common],
        "bundles": results,
    }
    for line in format_table(doc):
        echo(line)
    return doc


def _artifact_aps(
    bundle_dir: Path, art: Artifact, dataset: Dataset, labels: LabelMap
) -> Dict[str, Optional[ClassAP]]:
    """AP per dataset class of one artifact: None for a class the bundle does not cover or the
    dataset has no box of."""
    detector = open_artifact(bundle_dir, art)
    try:
        aps = class_aps(dataset, detections(detector, dataset, class_map=labels.to_dataset))
    finally:
        detector.close()
    return {c: None if c in labels.not_covered else a for c, a in aps.items()}


def format_table(doc: Dict[str, Any]) -> List[str]:
    """``evaluate_bundles``' document as a table: a row per class (and the means), a column
    per artifact that ran; the skipped ones below it."""
    columns: List[Tuple[str, str, Dict[str, Any], List[str]]] = []
    skipped: List[str] = []
    for n, b in enumerate(doc["bundles"], 1):
        for runtime, a in b["artifacts"].items():
            if "skipped" in a:
                skipped.append(f"[{n}] {runtime}: not run here: {a['skipped']}")
            else:
                columns.append((f"[{n}] {runtime}", a["precision"], a, b["labels"]["not_covered"]))

    def cell(ap: Optional[Dict[str, float]]) -> str:
        return "-" if ap is None else f"{ap['map50']:.3f}/{ap['map50_95']:.3f}"

    rows: List[List[str]] = [["AP@0.5/AP@[.5:.95]", *(c[0] for c in columns)], ["", *(c[1] for c in columns)]]
    rows.append(["mean (covered classes)", *(cell(c[2]) for c in columns)])
    if doc["common"] is not None:
        rows.append([f"mean ({len(doc['common'])} common classes)", *(cell(c[2]["common"]) for c in columns)])
    for name in doc["classes"]:
        label = name + (" (no boxes)" if name in doc["no_boxes"] else "")
        rows.append(
            [label, *("not covered" if name in c[3] else cell(c[2]["per_class"][name]) for c in columns)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return ["", *lines, *skipped]
