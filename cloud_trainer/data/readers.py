"""``load_dataset``: any supported labelling format into the internal ``Dataset``, with detection of
the format when it is not given."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from ..errors import DatasetError
from . import coco, csv_format, flickr27, voc, yolo
from .dataset import Dataset
from .parsing import PathLike, check_unique, read_class_file

FORMATS: Tuple[str, ...] = ("voc", "yolo", "coco", "csv", "flickr27")

Reader = Callable[[Path, Optional[Path], Optional[Sequence[str]]], Dataset]

_READERS: Dict[str, Reader] = {
    "voc": voc.read_voc,
    "yolo": yolo.read_yolo,
    "coco": coco.read_coco,
    "csv": csv_format.read_csv,
    "flickr27": flickr27.read_flickr27,
}
_DETECT: Dict[str, Callable[[Path], bool]] = {
    "voc": voc.detect,
    "yolo": yolo.detect,
    "coco": coco.detect,
    "csv": csv_format.detect,
    "flickr27": flickr27.detect,
}
_SUFFIXES = {".xml": "voc", ".yaml": "yolo", ".yml": "yolo", ".json": "coco", ".csv": "csv"}


def detect_format(path: PathLike) -> str:
    """The format of the dataset at ``path`` (file or folder), or DatasetError saying why not."""
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix.lower() in _SUFFIXES:
        return _SUFFIXES[p.suffix.lower()]
    found = [fmt for fmt in FORMATS if _DETECT[fmt](p)]
    if len(found) == 1:
        return found[0]
    if not found:
        raise DatasetError(
            f"{p}: cannot tell the dataset format (none of {', '.join(FORMATS)} fits); pass --format"
        )
    raise DatasetError(f"{p}: several dataset formats fit ({', '.join(found)}); pass --format")


def load_dataset(
    path: PathLike,
    fmt: Optional[str] = None,
    images: Optional[PathLike] = None,
    classes: Optional[Sequence[str]] = None,
) -> Dataset:
    """Read the dataset at ``path`` in format ``fmt`` (one of ``FORMATS``; detected when None).

    ``images``: the folder of the images, where the format's usual places do not hold them.
    ``classes``: the class list, in id order; a box of any other class is an error. Without it a
    format's own list is used (YOLO names, COCO categories, a classes file beside the data), else
    the sorted unique class names.
    """
    p = Path(path)
    if not p.exists():
        raise DatasetError(f"{p}: no such file or folder")
    if fmt is None:
        fmt = detect_format(p)
    fmt = fmt.lower()
    if fmt not in _READERS:
        raise DatasetError(f"unknown dataset format {fmt!r} (formats: {', '.join(FORMATS)})")
    image_dir = Path(images) if images is not None else None
    if image_dir is not None and not image_dir.is_dir():
        raise DatasetError(f"{image_dir}: no such folder (the images)")
    if classes is not None:
        classes = [c.strip() for c in classes]
        if not classes or not all(classes):
            raise DatasetError("the class list is empty or has an empty name")
        check_unique(classes, "the given classes")
    dataset = _READERS[fmt](p, image_dir, classes)
    if not dataset.samples:
        raise DatasetError(f"{p}: no images in this {fmt} dataset")
    return dataset


def parse_classes(value: str) -> List[str]:
    """A ``--classes`` argument: a file (one name a line, or a .pbtxt label map) or ``a,b,c``."""
    p = Path(value)
    if p.is_file():
        return read_class_file(p)
    names = [n.strip() for n in value.split(",")]
    if not all(names):
        raise DatasetError(f"--classes {value!r}: neither a file nor a comma-separated list of names")
    check_unique(names, "--classes")
    return names
