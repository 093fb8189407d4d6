"""``write_dataset``: a ``Dataset`` out as Pascal VOC, YOLO, COCO or CSV, in the layout the
readers (and the usual tools: labelImg, Ultralytics, pycocotools, the TF object-detection scripts)
read back.

* voc: ``Annotations/NAME.xml`` (labelImg style, integer pixels), ``JPEGImages/``,
  ``ImageSets/Main/{train,val,trainval}.txt``, ``classes.txt``;
* yolo: ``images/``, ``labels/NAME.txt``, ``classes.txt``, ``train.txt``/``val.txt`` and a
  ``data.yaml`` (Ultralytics) that points at them;
* coco: ``annotations.json`` (category ids from 1) and ``images/``;
* csv: ``annotations.csv`` (``filename,width,height,class,xmin,ymin,xmax,ymax``, with header),
  ``classes.txt`` and the images beside them.

The train/val lists come from ``Dataset.split()`` (20 % val, seed 0), as the trainer splits.
"""

from __future__ import annotations

import csv
import json
import shutil
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple

import yaml

from ..errors import DatasetError
from .csv_format import COLUMNS
from .dataset import Annotation, Dataset, Sample
from .parsing import PathLike

WRITE_FORMATS: Tuple[str, ...] = ("voc", "yolo", "coco", "csv")
_IMAGE_DIRS = {"voc": "JPEGImages", "yolo": "images", "coco": "images", "csv": "."}


def image_folder(out_dir: PathLike, fmt: str) -> Path:
    """Where ``fmt`` keeps the images in ``out_dir``."""
    _check_format(fmt)
    return (Path(out_dir) / _IMAGE_DIRS[fmt]).resolve()


def _check_format(fmt: str) -> None:
    if fmt not in WRITE_FORMATS:
        raise DatasetError(f"cannot write format {fmt!r} (formats: {', '.join(WRITE_FORMATS)})")


def check_empty(out_dir: Path) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise DatasetError(f"{out_dir}: exists and is not an empty folder; choose a new one")


def write_dataset(dataset: Dataset, out_dir: PathLike, fmt: str = "voc") -> Dataset:
    """Copy the images into a new folder ``out_dir`` (names made unique) and write the annotations.
    Returns the dataset as written (its samples point at the copies)."""
    _check_format(fmt)
    out = Path(out_dir)
    check_empty(out)
    try:
        folder = image_folder(out, fmt)
        folder.mkdir(parents=True, exist_ok=True)
        used: Set[str] = set()
        samples: List[Sample] = []
        for s in dataset.samples:
            stem, k = s.image.stem, 1
            while stem.lower() in used:
                stem, k = f"{s.image.stem}_{k}", k + 1
            used.add(stem.lower())
            dest = folder / (stem + s.image.suffix)
            shutil.copyfile(s.image, dest)
            samples.append(replace(s, image=dest))
        written = Dataset(list(dataset.classes), samples, f"{fmt}:{out}", dataset.report)
        write_annotations(written, out, fmt)
    except OSError as e:
        raise DatasetError(f"{e.filename or out}: cannot write ({e.strerror or e})") from e
    return written


def write_annotations(dataset: Dataset, out_dir: PathLike, fmt: str) -> None:
    """Write the annotation files of ``dataset``, whose images are already in ``image_folder``."""
    _check_format(fmt)
    out = Path(out_dir)
    folder = image_folder(out, fmt)
    for s in dataset.samples:
        if s.image.resolve().parent != folder:
            raise DatasetError(f"{s.image}: not in {folder}, where the {fmt} layout keeps images")
    out.mkdir(parents=True, exist_ok=True)
    {"voc": _voc, "yolo": _yolo, "coco": _coco, "csv": _csv}[fmt](dataset, out)


def _split_names(dataset: Dataset) -> Tuple[List[Sample], List[Sample]]:
    train, val = dataset.split()
    return train.samples, val.samples


def _write_lines(path: Path, lines: List[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _int_box(b: Annotation, width: int, height: int) -> Tuple[int, int, int, int]:
    """The box rounded to whole pixels, never empty."""
    x0, y0 = min(round(b.xmin), width - 1), min(round(b.ymin), height - 1)
    x1, y1 = max(round(b.xmax), x0 + 1), max(round(b.ymax), y0 + 1)
    return x0, y0, x1, y1


# -- Pascal VOC --------------------------------------------------------------------------------


def _voc(dataset: Dataset, out: Path) -> None:
    ann = out / "Annotations"
    ann.mkdir(exist_ok=True)
    for s in dataset.samples:
        _voc_xml(ann / (s.image.stem + ".xml"), s, dataset.classes)
    sets = out / "ImageSets" / "Main"
    sets.mkdir(parents=True, exist_ok=True)
    train, val = _split_names(dataset)
    _write_lines(sets / "train.txt", [s.image.stem for s in train])
    _write_lines(sets / "val.txt", [s.image.stem for s in val])
    _write_lines(sets / "trainval.txt", [s.image.stem for s in dataset.samples])
    _write_lines(out / "classes.txt", dataset.classes)


def _voc_xml(path: Path, s: Sample, classes: List[str]) -> None:
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = s.image.parent.name
    ET.SubElement(root, "filename").text = s.image.name
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "Unknown"
    size = ET.SubElement(root, "size")
    for tag, v in (("width", s.width), ("height", s.height), ("depth", 3)):
        ET.SubElement(size, tag).text = str(v)
    ET.SubElement(root, "segmented").text = "0"
    for b in s.boxes:
        x0, y0, x1, y1 = _int_box(b, s.width, s.height)
        obj = ET.SubElement(root, "object")
        ET.SubElement(obj, "name").text = classes[b.class_id]
        ET.SubElement(obj, "pose").text = "Unspecified"
        edge = x0 <= 0 or y0 <= 0 or x1 >= s.width or y1 >= s.height
        ET.SubElement(obj, "truncated").text = "1" if edge else "0"
        ET.SubElement(obj, "difficult").text = "0"
        bb = ET.SubElement(obj, "bndbox")
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), (x0, y0, x1, y1)):
            ET.SubElement(bb, tag).text = str(v)
    ET.indent(root, space="\t")
    path.write_bytes(ET.tostring(root, encoding="utf-8", xml_declaration=False) + b"\n")


# -- YOLO --------------------------------------------------------------------------------------


def _yolo(dataset: Dataset, out: Path) -> None:
    labels = out / "labels"
    labels.mkdir(exist_ok=True)
    for s in dataset.samples:
        lines = []
        for b in s.boxes:
            cx, cy = (b.xmin + b.xmax) / 2 / s.width, (b.ymin + b.ymax) / 2 / s.height
            w, h = (b.xmax - b.xmin) / s.width, (b.ymax - b.ymin) / s.height
            lines.append(f"{b.class_id} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
        _write_lines(labels / (s.image.stem + ".txt"), lines)
    _write_lines(out / "classes.txt", dataset.classes)
    train, val = _split_names(dataset)
    data: Dict[str, Any] = {"train": "images", "val": "images"}
    if train and val:
        _write_lines(out / "train.txt", [f"./images/{s.image.name}" for s in train])
        _write_lines(out / "val.txt", [f"./images/{s.image.name}" for s in val])
        data = {"train": "train.txt", "val": "val.txt"}
    data.update(nc=len(dataset.classes), names=list(dataset.classes))
    (out / "data.yaml").write_text(
        yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8"
    )


# -- COCO --------------------------------------------------------------------------------------


def coco_document(dataset: Dataset, first_id: int = 1) -> Dict[str, Any]:
    """images, annotations and categories in COCO form; image and category ids start at
    ``first_id`` (1 in files, as COCO tools expect; 0 lets the evaluator use list indices)."""
    images: List[Dict[str, Any]] = []
    annotations: List[Dict[str, Any]] = []
    for i, s in enumerate(dataset.samples, start=first_id):
        images.append({"id": i, "file_name": s.image.name, "width": s.width, "height": s.height})
        for b in s.boxes:
            w, h = b.xmax - b.xmin, b.ymax - b.ymin
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i,
                    "category_id": b.class_id + first_id,
                    "bbox": [round(b.xmin, 2), round(b.ymin, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                    "segmentation": [],
                }
            )
    categories = [
        {"id": k + first_id, "name": name, "supercategory": name} for k, name in enumerate(dataset.classes)
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco(dataset: Dataset, out: Path) -> None:
    doc = {
        "info": {"description": dataset.source or "edgewatch dataset", "version": "1.0"},
        "licenses": [],
        **coco_document(dataset),
    }
    (out / "annotations.json").write_text(json.dumps(doc, indent=1), encoding="utf-8")


# -- CSV ---------------------------------------------------------------------------------------


def _csv(dataset: Dataset, out: Path) -> None:
    with (out / "annotations.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for s in dataset.samples:
            if not s.boxes:
                w.writerow([s.image.name, s.width, s.height, "", "", "", "", ""])
            for b in s.boxes:
                w.writerow(
                    [
                        s.image.name,
                        s.width,
                        s.height,
                        dataset.classes[b.class_id],
                        *_int_box(b, s.width, s.height),
                    ]
                )
    _write_lines(out / "classes.txt", dataset.classes)
