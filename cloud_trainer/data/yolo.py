"""YOLO / darknet labels: one ``.txt`` per image, a line ``class x_center y_center width height``
normalised to the image (a line ``class x1 y1 x2 y2 ...``, an Ultralytics polygon, becomes its
bounding box). An image without a label file is an image without boxes.

Layouts:

* a ``data.yaml`` (Ultralytics, Roboflow): ``names`` (a list, or a dict ``{0: name}``), ``path``
  (optional root), ``train`` / ``val`` / ``test`` (folders of images, ``.txt`` lists of images, or
  lists of either; Roboflow's ``../train/images`` is also tried without its ``../``). Every split
  listed is read, into one dataset. Labels sit where Ultralytics looks: the last ``images`` folder
  of the image's path replaced by ``labels``, or beside the image;
* a folder with ``images/`` and ``labels/`` (any sub-folders below them, mirrored);
* a flat folder of images and ``.txt`` side by side (labelImg, darknet), with ``classes.txt`` or
  ``obj.names`` or ``*.names``;
* with ``images=DIR``: the images in DIR, their labels in the given folder (same relative path).

Class names: the ``classes`` argument, else ``names`` of the data.yaml, else a names file in the
folder or in ``labels/``. The image size comes from the image file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from ..errors import DatasetError
from .dataset import Dataset
from .parsing import (
    CLASS_FILES,
    DatasetBuilder,
    at,
    check_unique,
    find_class_file,
    head,
    image_size,
    integer,
    is_image,
    list_images,
    number,
    read_class_file,
    read_image_sizes,
    read_text,
)

_FIELDS = ("x_center", "y_center", "width", "height")

Pair = Tuple[Path, Path]  # (image, label file)


def _find_yaml(root: Path) -> Optional[Path]:
    candidates = [
        root / "data.yaml",
        root / "data.yml",
        *sorted(root.glob("*.yaml")),
        *sorted(root.glob("*.yml")),
    ]
    for c in dict.fromkeys(candidates):
        if c.is_file() and "names" in head(c):
            return c
    return None


def _label_files(root: Path) -> List[Path]:
    return [p for p in root.glob("*.txt") if p.name not in CLASS_FILES and not p.name.startswith("README")]


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() in (".yaml", ".yml") and "names" in head(path)
    if _find_yaml(path) is not None:
        return True
    if (path / "images").is_dir() and (path / "labels").is_dir():
        return True
    has_names = any((path / n).is_file() for n in CLASS_FILES) or any(path.glob("*.names"))
    return has_names and bool(_label_files(path))


def label_for(image: Path, root: Optional[Path] = None) -> Path:
    """Where Ultralytics looks for an image's labels: its last ``images`` folder (below ``root``)
    replaced by ``labels``, else beside the image."""
    parts = image.parts
    start = 0
    if root is not None:
        try:
            start = len(parts) - len(image.relative_to(root).parts)
        except ValueError:
            start = 0
    for i in range(len(parts) - 2, start - 1, -1):
        if parts[i] == "images":
            return Path(*parts[:i], "labels", *parts[i + 1 :]).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_yolo(path: Path, images: Optional[Path] = None, classes: Optional[Sequence[str]] = None) -> Dataset:
    names: Optional[List[str]] = None
    names_from = ""
    yaml_file: Optional[Path] = None
    if path.is_file():
        if path.suffix.lower() not in (".yaml", ".yml"):
            raise DatasetError(f"{path}: a YOLO dataset is a folder or a data.yaml, not this file")
        yaml_file = path
    elif images is None:
        yaml_file = _find_yaml(path)
    orphans: List[Path] = []
    if yaml_file is not None:
        names, pairs = _from_yaml(yaml_file)
        names_from = str(yaml_file)
    else:
        pairs, orphans = _from_dir(path, images)
    if classes is not None:
        names, names_from = list(classes), "the given classes"
    if names is None:
        dirs = [path, path / "labels"] + ([images, images.parent] if images is not None else [])
        found = find_class_file(dirs)
        if found is None:
            raise DatasetError(
                f"{path}: no class names for the YOLO labels: put classes.txt (one name a line) or a "
                "data.yaml with 'names' beside them, or pass the classes"
            )
        names, names_from = read_class_file(found), str(found)
    if not pairs:
        raise DatasetError(f"{path}: no images found")
    builder = DatasetBuilder(f"yolo:{path}", names, names_from)
    sizes = read_image_sizes(img for img, _ in pairs)
    unlabelled: List[Path] = []
    for img, label in pairs:
        has_label = label.is_file()
        width, height = image_size(img, sizes, str(label) if has_label else str(img))
        key = builder.add_image(img, width, height, str(label) if has_label else str(img))
        if has_label:
            _read_labels(builder, key, label, width, height, names, names_from)
        else:
            unlabelled.append(label)
    if len(unlabelled) == len(pairs):
        raise DatasetError(
            f"{path}: none of the {len(pairs)} images has a label file (looked for e.g. {unlabelled[0]})"
        )
    if unlabelled:
        builder.warn(
            "unlabelled",
            f"{len(unlabelled)} images have no label file, kept as images without boxes "
            f"(e.g. no {unlabelled[0]})",
        )
    if orphans:
        builder.warn("orphan", f"{len(orphans)} label files have no image, ignored (e.g. {orphans[0]})")
    return builder.build()


def _read_labels(
    builder: DatasetBuilder,
    key: Path,
    label: Path,
    width: int,
    height: int,
    names: Sequence[str],
    names_from: str,
) -> None:
    for lineno, line in enumerate(read_text(label).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = at(label, lineno)
        n = len(parts)
        if n != 5 and (n < 7 or n % 2 == 0):
            raise DatasetError(
                f"{where}: expected 5 values 'class x_center y_center width height' (or a polygon "
                f"'class x1 y1 x2 y2 x3 y3 ...'), got {n}"
            )
        cid = integer(parts[0], "class id", where)
        if not 0 <= cid < len(names):
            raise DatasetError(
                f"{where}: class id {cid} out of range: {len(names)} classes in {names_from} "
                f"(ids 0..{len(names) - 1})"
            )
        if n == 5:
            cx, cy, bw, bh = (number(v, f, where) for v, f in zip(parts[1:], _FIELDS))
            x0, x1 = (cx - bw / 2) * width, (cx + bw / 2) * width
            y0, y1 = (cy - bh / 2) * height, (cy + bh / 2) * height
        else:
            coords = [number(v, "polygon coordinate", where) for v in parts[1:]]
            xs, ys = coords[0::2], coords[1::2]
            x0, x1 = min(xs) * width, max(xs) * width
            y0, y1 = min(ys) * height, max(ys) * height
        builder.add_box(key, names[cid], x0, y0, x1, y1, where)


def _from_dir(root: Path, images: Optional[Path]) -> Tuple[List[Pair], List[Path]]:
    if images is not None:
        pairs = []
        for img in list_images(images):
            label = root / img.relative_to(images).with_suffix(".txt")
            if not label.is_file() and (root / (img.stem + ".txt")).is_file():
                label = root / (img.stem + ".txt")
            pairs.append((img, label))
        return pairs, []
    listed = root / "images" if (root / "images").is_dir() else root
    pairs = [(img, label_for(img, root)) for img in list_images(listed)]
    orphans: List[Path] = []
    if (root / "labels").is_dir():
        used = {label for _, label in pairs}
        orphans = sorted(
            p for p in (root / "labels").rglob("*.txt") if p not in used and p.name not in CLASS_FILES
        )
    return pairs, orphans


def _from_yaml(yaml_file: Path) -> Tuple[Optional[List[str]], List[Pair]]:
    try:
        data = yaml.safe_load(read_text(yaml_file))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise DatasetError(f"{at(yaml_file, line)}: not valid YAML ({getattr(e, 'problem', e)})") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{yaml_file}: expected a mapping with 'names' and 'train'/'val'")
    names = _names(data.get("names"), yaml_file)
    base = yaml_file.parent
    if data.get("path"):
        p = Path(str(data["path"]))
        p = p if p.is_absolute() else base / p
        base = p if p.is_dir() else base
    pairs: Dict[Path, Path] = {}
    listed = False
    for key in ("train", "val", "test"):
        value = data.get(key)
        if not value:
            continue
        listed = True
        for entry in value if isinstance(value, list) else [value]:
            for img in _split_images(yaml_file, key, str(entry), base):
                pairs.setdefault(img, label_for(img, base))
    if not listed:
        raise DatasetError(f"{yaml_file}: lists no 'train', 'val' or 'test' images")
    return names, list(pairs.items())


def _names(value: Any, yaml_file: Path) -> Optional[List[str]]:
    if value is None:
        return None
    if isinstance(value, dict):
        try:
            keyed = sorted((int(k), str(v)) for k, v in value.items())
        except (TypeError, ValueError) as e:
            raise DatasetError(f"{yaml_file}: 'names' keys must be class ids 0, 1, 2, ...") from e
        if [k for k, _ in keyed] != list(range(len(keyed))):
            raise DatasetError(f"{yaml_file}: 'names' ids must be 0..{len(keyed) - 1} without gaps")
        names = [v for _, v in keyed]
    elif isinstance(value, list):
        names = [str(v) for v in value]
    else:
        raise DatasetError(f"{yaml_file}: 'names' must be a list or a mapping of ids to names")
    check_unique(names, str(yaml_file))
    return names


def _split_images(yaml_file: Path, key: str, entry: str, base: Path) -> List[Path]:
    p = Path(entry) if Path(entry).is_absolute() else base / entry
    if not p.exists() and entry.startswith("../"):
        p = base / entry[3:]  # Roboflow writes ../train/images for train/images beside the yaml
    if not p.exists():
        raise DatasetError(f"{yaml_file}: {key}: {entry!r} not found (looked at {p})")
    if p.is_dir():
        return list_images(p)
    if is_image(p):
        return [p]
    out = []
    for lineno, line in enumerate(read_text(p).splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        img = Path(s)
        if not img.is_absolute():
            img = p.parent / s if (p.parent / s).exists() or not (base / s).exists() else base / s
        if not img.is_file():
            raise DatasetError(f"{at(p, lineno)}: image {s!r} not found (looked at {img})")
        out.append(img)
    return out
