"""COCO object-detection JSON (``instances_*.json``, CVAT, Roboflow ``_annotations.coco.json``).

``categories`` may have any ids: class ids are contiguous in the order of the categories' ids. A
Roboflow export's placeholder category (the dataset's name, used only as the other categories'
``supercategory``, with no annotations) is left out, with a warning. ``bbox`` is ``[x, y, width,
height]`` in pixels; an annotation without one takes the bounds of its polygon ``segmentation``;
``iscrowd`` annotations are skipped and counted. ``width``/``height`` missing or zero: the image is
read for them.

The path is the JSON file, or a folder holding it (also in ``annotations/`` or one sub-folder
down; several files are read into one dataset when their categories agree; ``instances_*`` files
are preferred over captions and keypoints). Images are looked for, by ``file_name``, in the given
folder, else beside the JSON, in ``images/`` beside it or beside its folder, and in the folder
named after the file (``instances_val2017.json`` -> ``val2017/``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import DatasetError
from .dataset import Dataset
from .parsing import (
    DatasetBuilder,
    describe_dirs,
    find_image,
    head,
    image_size,
    number,
    read_image_sizes,
    read_text,
)

_KEYS = ('"images"', '"annotations"', '"categories"')


def _is_coco(path: Path) -> bool:
    text = head(path)
    return text.lstrip().startswith("{") and any(k in text for k in _KEYS)


def json_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    found = [
        p for p in [*sorted(path.glob("*.json")), *sorted(path.glob("annotations/*.json"))] if _is_coco(p)
    ]
    if not found:
        found = [p for p in sorted(path.glob("*/*.json")) if _is_coco(p)]
    instances = [p for p in found if p.name.startswith("instances")]
    return instances or found


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".json"
    return bool(json_files(path))


def _load(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}: not valid JSON ({e.msg}, column {e.colno})") from e
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{path}: not a COCO detection file (no 'images' list)")
    if not isinstance(data.get("categories"), list):
        raise DatasetError(f"{path}: not a COCO detection file (no 'categories' list)")
    if not isinstance(data.get("annotations", []), list):
        raise DatasetError(f"{path}: 'annotations' is not a list")
    return data


def _categories(data: Dict[str, Any], path: Path, warnings: List[str]) -> List[Tuple[int, str]]:
    """(id, name) of the categories that are classes, by id."""
    cats: Dict[int, str] = {}
    for k, c in enumerate(data["categories"]):
        if not isinstance(c, dict) or "id" not in c or "name" not in c:
            raise DatasetError(f"{path}: categories[{k}] needs an 'id' and a 'name'")
        cid = int(number(str(c["id"]), "category id", f"{path}: categories[{k}]"))
        if cid in cats:
            raise DatasetError(f"{path}: category id {cid} is used twice")
        cats[cid] = str(c["name"]).strip()
    used = {a.get("category_id") for a in data.get("annotations", []) if isinstance(a, dict)}
    supers = {
        str(c.get("supercategory", "")).strip()
        for c in data["categories"]
        if str(c.get("supercategory", "")).strip() != str(c["name"]).strip()
    }
    out = []
    for cid, name in sorted(cats.items()):
        if cid not in used and name in supers:
            warnings.append(f"{path}: category {name!r} (id {cid}) is only a supercategory, not a class")
            continue
        out.append((cid, name))
    return out


def read_coco(path: Path, images: Optional[Path] = None, classes: Optional[Sequence[str]] = None) -> Dataset:
    files = json_files(path)
    if not files:
        raise DatasetError(f"{path}: no COCO .json annotations found")
    loaded = [(f, _load(f)) for f in files]
    notes: List[str] = []
    names: Optional[List[str]] = None
    first = ""
    for f, data in loaded:
        these = [n for _, n in _categories(data, f, notes)]
        if names is None:
            names, first = these, str(f)
        elif these != names:
            raise DatasetError(f"{f}: categories {these} differ from those of {first}: {names}")
    builder = DatasetBuilder(
        f"coco:{path}",
        classes if classes is not None else names,
        "the given classes" if classes is not None else f"the categories of {first}",
    )
    for note in dict.fromkeys(notes):
        builder.warn("category", note)
    crowd = 0
    for f, data in loaded:
        crowd += _read_one(builder, f, data, images)
    if crowd:
        builder.warn("crowd", f"{crowd} iscrowd annotations skipped")
    return builder.build()


def _image_dirs(json_file: Path, images: Optional[Path]) -> List[Path]:
    if images is not None:
        return [images]
    d = json_file.parent
    split = json_file.stem.split("_", 1)[-1]  # instances_val2017 -> val2017
    return [d, d / "images", d.parent / "images", d.parent / split, d.parent / "images" / split, d.parent]


def _read_one(builder: DatasetBuilder, path: Path, data: Dict[str, Any], images: Optional[Path]) -> int:
    where = str(path)
    cat_names = {cid: name for cid, name in _categories(data, path, [])}
    dirs = _image_dirs(path, images)
    entries: Dict[Any, Tuple[Path, int, int, str]] = {}
    missing_size: List[Path] = []
    for k, im in enumerate(data["images"]):
        at_im = f"{where}: images[{k}]"
        if not isinstance(im, dict) or "id" not in im or not im.get("file_name"):
            raise DatasetError(f"{at_im} needs an 'id' and a 'file_name'")
        if im["id"] in entries:
            raise DatasetError(f"{at_im}: image id {im['id']} is used twice")
        name = str(im["file_name"])
        found = find_image([name], dirs)
        if found is None:
            raise DatasetError(f"{at_im}: image {name!r} not found (looked in {describe_dirs(dirs)})")
        w = int(number(str(im.get("width") or 0), "width", at_im))
        h = int(number(str(im.get("height") or 0), "height", at_im))
        if w <= 0 or h <= 0:
            missing_size.append(found)
        entries[im["id"]] = (found, w, h, at_im)
    sizes = read_image_sizes(missing_size)
    keys: Dict[Any, Path] = {}
    for image_id, (found, w, h, at_im) in entries.items():
        if w <= 0 or h <= 0:
            w, h = image_size(found, sizes, at_im)
        keys[image_id] = builder.add_image(found, w, h, at_im)
    crowd = 0
    for k, a in enumerate(data.get("annotations", [])):
        at_a = f"{where}: annotations[{k}]" + (
            f" (id {a['id']})" if isinstance(a, dict) and "id" in a else ""
        )
        if not isinstance(a, dict):
            raise DatasetError(f"{at_a}: not an object")
        if a.get("iscrowd"):
            crowd += 1
            continue
        if a.get("image_id") not in keys:
            raise DatasetError(f"{at_a}: image_id {a.get('image_id')!r} is not among the images")
        if a.get("category_id") not in cat_names:
            raise DatasetError(f"{at_a}: category_id {a.get('category_id')!r} is not among the categories")
        x0, y0, x1, y1 = _box(a, at_a)
        builder.add_box(keys[a["image_id"]], cat_names[a["category_id"]], x0, y0, x1, y1, at_a)
    return crowd


def _box(a: Dict[str, Any], where: str) -> Tuple[float, float, float, float]:
    bbox = a.get("bbox")
    if isinstance(bbox, list) and len(bbox) == 4:
        x, y, w, h = (number(str(v), f, where) for v, f in zip(bbox, ("x", "y", "width", "height")))
        return x, y, x + w, y + h
    seg = a.get("segmentation")
    if bbox is None and isinstance(seg, list) and seg and all(isinstance(p, list) and p for p in seg):
        coords = [number(str(v), "segmentation coordinate", where) for p in seg for v in p]
        xs, ys = coords[0::2], coords[1::2]
        return min(xs), min(ys), max(xs), max(ys)
    raise DatasetError(f"{where}: 'bbox' must be [x, y, width, height], got {bbox!r}")
