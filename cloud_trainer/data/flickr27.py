"""The Flickr Logos 27 annotation list: whitespace-separated lines ``image class subset x1 y1 x2 y2``
(``144503924.jpg Adidas 1 38 12 234 142``), pixels.

The real list repeats lines and holds degenerate boxes (``x1 == x2``): repeats are left out and
degenerate boxes dropped, both counted in the report. The path is the list or its folder (where
``*annotation*.txt`` is found); images are in the given folder, else in
``flickr_logos_27_dataset_images/`` beside the list, else beside the list. Classes: the
``classes`` argument, else the sorted unique names.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DatasetError
from .dataset import Dataset
from .parsing import (
    DatasetBuilder,
    at,
    head,
    image_size,
    integer,
    locate_image,
    number,
    read_image_sizes,
    read_text,
)

IMAGES_DIR = "flickr_logos_27_dataset_images"
_LINE = re.compile(r"^\S+\s+\S+\s+\d+\s+-?\d+(\.\d*)?\s+-?\d+(\.\d*)?\s+-?\d+(\.\d*)?\s+-?\d+(\.\d*)?\s*$")
_COORDS = ("x1", "y1", "x2", "y2")


def _looks_like_list(path: Path) -> bool:
    lines = [line for line in head(path, 4096).splitlines()[:5] if line.strip()]
    return bool(lines) and all(_LINE.match(line) for line in lines[:-1] or lines)


def list_file(path: Path) -> Optional[Path]:
    if path.is_file():
        return path
    candidates = sorted(path.glob("*annotation*.txt")) + sorted(path.glob("*.txt"))
    for c in dict.fromkeys(candidates):
        if "query" not in c.name and _looks_like_list(c):
            return c
    return None


def detect(path: Path) -> bool:
    found = list_file(path)
    return found is not None and found.suffix.lower() == ".txt" and _looks_like_list(found)


def read_flickr27(
    path: Path, images: Optional[Path] = None, classes: Optional[Sequence[str]] = None
) -> Dataset:
    listing = list_file(path)
    if listing is None:
        raise DatasetError(f"{path}: no Flickr Logos 27 annotation list (*annotation*.txt) found")
    if images is not None:
        dirs = [images]
    else:
        dirs = [listing.parent / IMAGES_DIR, listing.parent]
        archive = listing.parent / f"{IMAGES_DIR}.tar.gz"
        if not dirs[0].is_dir() and archive.is_file():
            raise DatasetError(f"{archive}: extract the images first (tar xzf {archive.name})")
    rows: List[Tuple[str, str, Path, Tuple[float, float, float, float]]] = []
    located: Dict[str, Path] = {}
    for lineno, line in enumerate(read_text(listing).splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        where = at(listing, lineno)
        if len(parts) != 7:
            raise DatasetError(
                f"{where}: expected 7 fields 'image class subset x1 y1 x2 y2', got {len(parts)}"
            )
        name, label = parts[0], parts[1]
        integer(parts[2], "subset", where)
        box = tuple(number(v, k, where) for v, k in zip(parts[3:], _COORDS))
        image = locate_image(name, dirs, located, where)
        rows.append((where, label, image, (box[0], box[1], box[2], box[3])))
    builder = DatasetBuilder(f"flickr27:{listing}", classes)
    sizes = read_image_sizes(located.values())
    for where, label, image, (x0, y0, x1, y1) in rows:
        width, height = image_size(image, sizes, where)
        key = builder.add_image(image, width, height, where)
        builder.add_box(key, label, x0, y0, x1, y1, where)
    return builder.build()
