"""COCO mAP with pycocotools, for the float model and for every exported artifact, each run
through ``edge_agent``'s own backends and decoders on the original validation images."""

from __future__ import annotations

import contextlib
import io
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import cv2
import numpy as np

from edge_agent.detector import Detector, Thresholds

from .data.dataset import Dataset
from .data.writers import coco_document

log = logging.getLogger(__name__)

# What mAP is computed with: every box the model gives, as COCO's evaluation expects.
EVAL_THRESHOLDS = Thresholds(score_threshold=0.001, max_detections=100)


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


def coco_map(dataset: Dataset, results: List[Dict[str, Any]]) -> Metrics:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):  # pycocotools prints its tables
        gt = COCO()
        gt.dataset = coco_document(dataset, first_id=0)  # ids are list indices
        gt.createIndex()
        if not results:
            return Metrics(
                len(dataset.samples), 0.0, 0.0, {c: {"map50": 0.0, "map50_95": 0.0} for c in dataset.classes}
            )
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # [iou thresholds, recall, class, area, max dets]
    per_class = {}
    for k, name in enumerate(dataset.classes):
        p_all = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        per_class[name] = {
            "map50": float(np.mean(p50[p50 > -1])) if (p50 > -1).any() else 0.0,
            "map50_95": float(np.mean(p_all[p_all > -1])) if (p_all > -1).any() else 0.0,
        }
    return Metrics(len(dataset.samples), float(ev.stats[1]), float(ev.stats[0]), per_class)


def detections(
    detector: Detector, dataset: Dataset, progress: Optional[Callable[[int], None]] = None
) -> List[Dict[str, Any]]:
    """COCO-format results of ``detector`` on every image of ``dataset``."""
    saved = detector.thresholds
    detector.set_thresholds(EVAL_THRESHOLDS)
    out: List[Dict[str, Any]] = []
    try:
        for i, s in enumerate(dataset.samples):
            image = cv2.imread(str(s.image), cv2.IMREAD_COLOR)
            if image is None:
                raise FileNotFoundError(f"{s.image}: cannot read image")
            for d in detector.detect(image).detections:
                x0, y0 = d.box.xmin * s.width, d.box.ymin * s.height
                x1, y1 = d.box.xmax * s.width, d.box.ymax * s.height
                out.append(
                    {
                        "image_id": i,
                        "category_id": d.class_id,
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
