"""CSV, one row per box: ``filename,width,height,class,xmin,ymin,xmax,ymax`` (the TensorFlow
object-detection ``xml_to_csv`` and Roboflow "Tensorflow CSV" format), pixels.

The header is optional. With one, columns are found by name in any order (``filename``/``image``/
``path``, ``class``/``label``, ``xmin``/``x1``, ...; ``width``/``height`` may be absent, then the
image is read for its size). A row with a file name and nothing else is an image without boxes.
Rows of one image must agree on its size.

The path is a ``.csv`` file or a folder holding them (also one sub-folder down, as Roboflow's
``train/_annotations.csv``; several are read into one dataset). Images are looked for in the given
folder, else beside the CSV and in ``images/`` beside it. Classes: the ``classes`` argument, else a
``classes.txt`` beside the CSV, else the sorted unique names.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DatasetError
from .dataset import Dataset
from .parsing import (
    DatasetBuilder,
    at,
    find_class_file,
    image_size,
    integer,
    locate_image,
    number,
    read_class_file,
    read_text,
)

COLUMNS: Tuple[str, ...] = ("filename", "width", "height", "class", "xmin", "ymin", "xmax", "ymax")
_ALIASES: Dict[str, Tuple[str, ...]] = {
    "filename": ("filename", "file_name", "file", "image", "image_name", "image_path", "path", "img"),
    "width": ("width", "image_width", "img_width"),
    "height": ("height", "image_height", "img_height"),
    "class": ("class", "label", "class_name", "name", "category", "labels"),
    "xmin": ("xmin", "x_min", "x1", "left"),
    "ymin": ("ymin", "y_min", "y1", "top"),
    "xmax": ("xmax", "x_max", "x2", "right"),
    "ymax": ("ymax", "y_max", "y2", "bottom"),
}
_OPTIONAL = ("width", "height")
_EXPECTED = ",".join(COLUMNS)


def csv_files(path: Path) -> List[Path]:
    if path.is_file():
        return [path]
    return sorted(path.glob("*.csv")) or sorted(path.glob("*/*.csv"))


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".csv"
    return bool(csv_files(path))


def _columns(row: List[str], where: str) -> Optional[Dict[str, int]]:
    """Column indices from a header row, or None when the row is data."""
    lowered = [c.strip().lower() for c in row]
    found: Dict[str, int] = {}
    for key, aliases in _ALIASES.items():
        for a in aliases:
            if a in lowered:
                found[key] = lowered.index(a)
                break
    if "filename" not in found or "xmin" not in found:
        return None
    missing = [k for k in COLUMNS if k not in found and k not in _OPTIONAL]
    if missing:
        raise DatasetError(f"{where}: header lacks column(s) {', '.join(missing)} (expected {_EXPECTED})")
    return found


def read_csv(path: Path, images: Optional[Path] = None, classes: Optional[Sequence[str]] = None) -> Dataset:
    files = csv_files(path)
    if not files:
        raise DatasetError(f"{path}: no .csv annotations found")
    classes_from = "the given classes"
    if classes is None:
        found = find_class_file([files[0].parent, path if path.is_dir() else path.parent])
        if found is not None:
            classes, classes_from = read_class_file(found), str(found)
    builder = DatasetBuilder(f"csv:{path}", classes, classes_from)
    sizes: Dict[Path, Optional[Tuple[int, int]]] = {}
    for f in files:
        _read_one(builder, f, [images] if images is not None else [f.parent, f.parent / "images"], sizes)
    return builder.build()


def _read_one(
    builder: DatasetBuilder,
    path: Path,
    dirs: Sequence[Path],
    sizes: Dict[Path, Optional[Tuple[int, int]]],
) -> None:
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    columns: Dict[str, int] = dict(zip(COLUMNS, range(len(COLUMNS))))
    first = True
    located: Dict[str, Path] = {}
    try:
        for row in reader:
            where = at(path, reader.line_num)
            if not row or all(not c.strip() for c in row):
                continue
            if first:
                first = False
                header = _columns(row, where)
                if header is not None:
                    columns = header
                    continue
            if len(row) <= max(columns.values()):
                raise DatasetError(f"{where}: {len(row)} columns, expected {_EXPECTED}")
            _row(builder, row, columns, where, dirs, located, sizes)
    except csv.Error as e:
        raise DatasetError(f"{at(path, reader.line_num)}: bad CSV ({e})") from e


def _row(
    builder: DatasetBuilder,
    row: List[str],
    columns: Dict[str, int],
    where: str,
    dirs: Sequence[Path],
    located: Dict[str, Path],
    sizes: Dict[Path, Optional[Tuple[int, int]]],
) -> None:
    def cell(key: str) -> str:
        return row[columns[key]].strip() if key in columns else ""

    name = cell("filename")
    if not name:
        raise DatasetError(f"{where}: empty filename")
    image = locate_image(name, dirs, located, where)
    w_text, h_text = cell("width"), cell("height")
    width = integer(w_text, "width", where) if w_text else 0
    height = integer(h_text, "height", where) if h_text else 0
    if width <= 0 or height <= 0:
        width, height = image_size(image, sizes, where)
    key = builder.add_image(image, width, height, where)
    box = [cell(k) for k in ("xmin", "ymin", "xmax", "ymax")]
    label = cell("class")
    if not label and not any(box):
        return  # an image without boxes
    label = builder.check_class(label, where)
    x0, y0, x1, y1 = (number(v, k, where) for v, k in zip(box, ("xmin", "ymin", "xmax", "ymax")))
    builder.add_box(key, label, x0, y0, x1, y1, where)
