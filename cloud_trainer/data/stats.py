"""What ``cloud-trainer inspect`` shows: classes and their counts, box sizes, image sizes and what
the import had to fix."""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Dict, List, Optional, Sequence

from .dataset import Dataset

SMALL_AREA = 32 * 32  # COCO's thresholds, in pixels of the image
LARGE_AREA = 96 * 96
_LISTED_WARNINGS = 10


def _summary(values: Sequence[float], digits: int) -> Optional[Dict[str, float]]:
    if not values:
        return None
    return {
        "min": round(min(values), digits),
        "median": round(float(statistics.median(values)), digits),
        "mean": round(statistics.fmean(values), digits),
        "max": round(max(values), digits),
    }


def describe(dataset: Dataset) -> Dict[str, Any]:
    """A JSON-ready summary of ``dataset``."""
    n_classes = len(dataset.classes)
    boxes_per_class = [0] * n_classes
    images_per_class = [0] * n_classes
    w_px: List[float] = []
    h_px: List[float] = []
    w_rel: List[float] = []
    h_rel: List[float] = []
    aspect: List[float] = []
    areas = {"small": 0, "medium": 0, "large": 0}
    for s in dataset.samples:
        for cid in {b.class_id for b in s.boxes}:
            images_per_class[cid] += 1
        for b in s.boxes:
            boxes_per_class[b.class_id] += 1
            w, h = b.xmax - b.xmin, b.ymax - b.ymin
            w_px.append(w)
            h_px.append(h)
            w_rel.append(w / s.width)
            h_rel.append(h / s.height)
            aspect.append(w / h)
            area = w * h
            areas["small" if area < SMALL_AREA else "medium" if area < LARGE_AREA else "large"] += 1
    sizes = Counter((s.width, s.height) for s in dataset.samples)
    return {
        "source": dataset.source,
        "images": len(dataset.samples),
        "boxes": len(w_px),
        "classes": [
            {"id": i, "name": name, "images": images_per_class[i], "boxes": boxes_per_class[i]}
            for i, name in enumerate(dataset.classes)
        ],
        "images_without_boxes": sum(1 for s in dataset.samples if not s.boxes),
        "boxes_per_image": _summary([len(s.boxes) for s in dataset.samples], 2),
        "box_width_px": _summary(w_px, 1),
        "box_height_px": _summary(h_px, 1),
        "box_width_rel": _summary(w_rel, 4),
        "box_height_rel": _summary(h_rel, 4),
        "box_aspect": _summary(aspect, 3),
        "box_area": areas,
        "image_sizes": [
            {"width": w, "height": h, "images": n}
            for (w, h), n in sorted(sizes.items(), key=lambda kv: (-kv[1], kv[0]))
        ],
        "report": {
            "clipped": dataset.report.clipped,
            "dropped": dataset.report.dropped,
            "warnings": list(dataset.report.warnings),
        },
    }


def _fmt(summary: Optional[Dict[str, float]]) -> str:
    if summary is None:
        return "-"
    return " / ".join(f"{summary[k]:g}" for k in ("min", "median", "mean", "max"))


def format_report(info: Dict[str, Any]) -> str:
    """``describe``'s summary as text for a terminal."""
    lines = [
        f"dataset  {info['source']}",
        f"images   {info['images']} ({info['images_without_boxes']} without boxes)",
        f"boxes    {info['boxes']} in {len(info['classes'])} classes",
        "",
    ]
    width = max([len("class"), *(len(c["name"]) for c in info["classes"])])
    lines.append(f"  {'id':>3}  {'class':<{width}}  {'images':>7}  {'boxes':>7}")
    for c in info["classes"]:
        lines.append(f"  {c['id']:>3}  {c['name']:<{width}}  {c['images']:>7}  {c['boxes']:>7}")
    lines += [
        "",
        "                  min / median / mean / max",
        f"boxes per image   {_fmt(info['boxes_per_image'])}",
        f"box width  (px)   {_fmt(info['box_width_px'])}",
        f"box height (px)   {_fmt(info['box_height_px'])}",
        f"box width  (rel)  {_fmt(info['box_width_rel'])}",
        f"box height (rel)  {_fmt(info['box_height_rel'])}",
        f"box aspect (w/h)  {_fmt(info['box_aspect'])}",
        "box area         small (<32²) {small}, medium {medium}, large (>=96²) {large}".format(
            **info["box_area"]
        ),
    ]
    sizes = info["image_sizes"]
    shown = ", ".join(f"{s['width']}x{s['height']} ({s['images']})" for s in sizes[:5])
    if len(sizes) > 5:
        shown += f", and {len(sizes) - 5} more sizes"
    lines.append(f"image sizes      {shown}")
    report = info["report"]
    warnings = report["warnings"]
    lines += [
        "",
        f"import   {report['clipped']} boxes clipped to their image, {report['dropped']} dropped, "
        f"{len(warnings)} warnings",
    ]
    for w in warnings[:_LISTED_WARNINGS]:
        lines.append(f"  warning: {w}")
    if len(warnings) > _LISTED_WARNINGS:
        lines.append(f"  ... {len(warnings) - _LISTED_WARNINGS} more warnings (see --json)")
    return "\n".join(lines)
