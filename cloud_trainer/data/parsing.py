"""What every reader shares: messages that name the file and line, number parsing, finding and
sizing images, class-name files, and ``DatasetBuilder``, which clips boxes, counts every fix in the
``ImportReport`` and assembles the ``Dataset``."""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

import cv2

from ..errors import DatasetError
from .dataset import Annotation, Dataset, ImportReport, Sample

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
CLASS_FILES: Tuple[str, ...] = ("classes.txt", "obj.names")

_EPS = 0.01  # px: coordinates this far outside the image are float noise, not a fix
_EXAMPLES = 20  # warnings listed per kind; the rest are counted


def at(path: PathLike, line: Optional[int] = None) -> str:
    """``path`` or ``path:line``, the prefix of every message."""
    return f"{path}:{line}" if line is not None else str(path)


def read_text(path: Path) -> str:
    """A text file (UTF-8, with or without BOM), or DatasetError naming it."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start})") from e
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from e


def head(path: Path, size: int = 65536) -> str:
    """The first ``size`` bytes of a file as text ('' when unreadable): for format sniffing."""
    try:
        with path.open("rb") as f:
            return f.read(size).decode("utf-8", errors="replace")
    except OSError:
        return ""


def number(text: Optional[str], what: str, where: str) -> float:
    """A finite float, or DatasetError ``where: what 'text' is not a number``."""
    if text is None or not str(text).strip():
        raise DatasetError(f"{where}: {what} is missing")
    try:
        value = float(text)
    except ValueError as e:
        raise DatasetError(f"{where}: {what} {str(text).strip()!r} is not a number") from e
    if not math.isfinite(value):
        raise DatasetError(f"{where}: {what} {str(text).strip()!r} is not a finite number")
    return value


def integer(text: Optional[str], what: str, where: str) -> int:
    """An integer (``3`` or ``3.0``), or DatasetError."""
    value = number(text, what, where)
    if value != int(value):
        raise DatasetError(f"{where}: {what} {str(text).strip()!r} is not an integer")
    return int(value)


def basename(name: str) -> str:
    """The last component of a path written on any system (``C:\\a\\b.jpg`` -> ``b.jpg``)."""
    return re.split(r"[\\/]", name.strip())[-1]


def is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(root: Path) -> List[Path]:
    """Image files under ``root``, recursively, sorted (hidden folders skipped)."""
    found: List[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in IMAGE_EXTENSIONS)
    return sorted(found)


def find_image(names: Sequence[str], dirs: Sequence[Path], stems: Sequence[str] = ()) -> Optional[Path]:
    """The first existing file among ``dir/name`` (names may hold sub-folders; their base names are
    tried too), then ``dir/stem.EXT`` for the common image extensions."""
    tried: List[str] = []
    for n in names:
        n = n.strip().replace("\\", "/")
        if n and n not in tried:
            tried.append(n)
        b = basename(n)
        if b and b not in tried:
            tried.append(b)
    for d in dirs:
        for n in tried:
            p = d / n
            if p.is_file():
                return p
    for d in dirs:
        for stem in stems:
            for ext in IMAGE_EXTENSIONS:
                for e in (ext, ext.upper()):
                    p = d / (stem + e)
                    if p.is_file():
                        return p
    return None


def locate_image(name: str, dirs: Sequence[Path], located: Dict[str, Path], where: str) -> Path:
    """The image a list or table names, found once in ``dirs`` and remembered in ``located``
    (its rows name the same image many times); DatasetError naming ``where`` when absent."""
    image = located.get(name)
    if image is None:
        image = find_image([name], dirs)
        if image is None:
            raise DatasetError(f"{where}: image {name!r} not found (looked in {describe_dirs(dirs)})")
        located[name] = image
    return image


def describe_dirs(dirs: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in dict.fromkeys(dirs)) or "nowhere"


def read_image_size(path: Path) -> Optional[Tuple[int, int]]:
    """(width, height) as ``cv2.imread`` sees the image (EXIF orientation applied), or None."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        return None
    return int(image.shape[1]), int(image.shape[0])


def read_image_sizes(paths: Iterable[Path]) -> Dict[Path, Optional[Tuple[int, int]]]:
    """Sizes of many images, decoded in parallel (OpenCV releases the GIL)."""
    unique = list(dict.fromkeys(paths))
    workers = max(1, min(8, os.cpu_count() or 1, len(unique)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return dict(zip(unique, pool.map(read_image_size, unique)))


def image_size(path: Path, sizes: Dict[Path, Optional[Tuple[int, int]]], where: str) -> Tuple[int, int]:
    """The size of ``path`` from ``sizes`` (read now if absent), or DatasetError."""
    if path not in sizes:
        sizes[path] = read_image_size(path)
    size = sizes[path]
    if size is None:
        raise DatasetError(f"{where}: image {path} cannot be decoded (not an image, or corrupt)")
    return size


def read_names(path: Path) -> List[str]:
    """Class names, one a line (``classes.txt``, ``obj.names``); blank lines skipped."""
    names = [line.strip() for line in read_text(path).splitlines()]
    names = [n for n in names if n]
    if not names:
        raise DatasetError(f"{path}: no class names in it")
    check_unique(names, str(path))
    return names


_PBTXT_ITEM = re.compile(r"item\s*\{(.*?)\}", re.S)
_PBTXT_ID = re.compile(r"\bid\s*:\s*(\d+)")
_PBTXT_NAME = re.compile(r"\b(?:display_)?name\s*:\s*['\"]([^'\"]*)['\"]")


def read_label_map(path: Path) -> List[str]:
    """Class names ordered by id from a TF object-detection ``.pbtxt`` label map (VoTT, Roboflow)."""
    items = []
    for body in _PBTXT_ITEM.findall(read_text(path)):
        i, n = _PBTXT_ID.search(body), _PBTXT_NAME.search(body)
        if i is None or n is None:
            raise DatasetError(f"{path}: label map item without id or name: {body.strip()!r}")
        items.append((int(i.group(1)), n.group(1).strip()))
    if not items:
        raise DatasetError(f"{path}: no items in the label map")
    names = [n for _, n in sorted(items)]
    check_unique(names, str(path))
    return names


def find_class_file(dirs: Sequence[Path]) -> Optional[Path]:
    """A class list beside a dataset: classes.txt, obj.names, *.names or a .pbtxt label map."""
    for d in dict.fromkeys(dirs):
        for name in CLASS_FILES:
            if (d / name).is_file():
                return d / name
        for pattern in ("*.names", "*.pbtxt"):
            found = sorted(d.glob(pattern))
            if found:
                return found[0]
    return None


def read_class_file(path: Path) -> List[str]:
    return read_label_map(path) if path.suffix.lower() == ".pbtxt" else read_names(path)


def check_unique(names: Sequence[str], where: str) -> None:
    seen: Set[str] = set()
    for n in names:
        if n in seen:
            raise DatasetError(f"{where}: class {n!r} is listed twice")
        seen.add(n)


@dataclass
class _Image:
    path: Path
    width: int
    height: int
    where: str
    boxes: List[Tuple[str, float, float, float, float]] = field(default_factory=list)


class DatasetBuilder:
    """Collects images and boxes (in pixels, by class name), fixing what can be fixed and counting it.

    With ``classes`` the class list is fixed and a box of another class is an error; without it the
    classes are the sorted unique names seen. A box partly outside its image is clipped
    (``report.clipped``); one that is empty (zero or negative width or height, or nothing left after
    clipping) is left out (``report.dropped``); an exact duplicate (same image, class and
    coordinates) is left out with a warning. Each fix is listed in ``report.warnings`` (the first
    few of each kind, then a count).
    """

    def __init__(
        self, source: str, classes: Optional[Sequence[str]] = None, classes_from: str = "the given classes"
    ) -> None:
        self.source = source
        self.classes: Optional[List[str]] = list(classes) if classes is not None else None
        self.classes_from = classes_from
        if self.classes is not None:
            check_unique(self.classes, classes_from)
        self.report = ImportReport()
        self._images: Dict[Path, _Image] = {}
        self._seen: Dict[Path, Set[Tuple[str, float, float, float, float]]] = {}
        self._kinds: Dict[str, int] = {}

    # -- images --------------------------------------------------------------------------------

    def has_image(self, path: Path) -> bool:
        return path.absolute() in self._images

    def add_image(self, path: Path, width: int, height: int, where: str) -> Path:
        """Register an image (again: its size must agree). Returns the key for ``add_box``."""
        key = path.absolute()
        if width <= 0 or height <= 0:
            raise DatasetError(f"{where}: image size {width}x{height} of {path.name} is not positive")
        old = self._images.get(key)
        if old is None:
            self._images[key] = _Image(key, int(width), int(height), where)
            self._seen[key] = set()
        elif (old.width, old.height) != (width, height):
            raise DatasetError(
                f"{where}: image {path.name} is {width}x{height} here but {old.width}x{old.height} "
                f"at {old.where}"
            )
        return key

    # -- boxes ---------------------------------------------------------------------------------

    def check_class(self, name: str, where: str) -> str:
        name = name.strip()
        if not name:
            raise DatasetError(f"{where}: empty class name")
        if self.classes is not None and name not in self.classes:
            known = ", ".join(self.classes)
            raise DatasetError(f"{where}: unknown class {name!r} (classes from {self.classes_from}: {known})")
        return name

    def add_box(
        self, image: Path, name: str, xmin: float, ymin: float, xmax: float, ymax: float, where: str
    ) -> bool:
        """Add a box in pixels; returns whether it was kept."""
        entry = self._images[image.absolute()]
        name = self.check_class(name, where)
        for v in (xmin, ymin, xmax, ymax):
            if not math.isfinite(v):
                raise DatasetError(f"{where}: box coordinate {v} is not a finite number")
        box = f"({_n(xmin)}, {_n(ymin)}, {_n(xmax)}, {_n(ymax)})"
        if xmax <= xmin or ymax <= ymin:
            self.report.dropped += 1
            self.warn("dropped", f"{where}: empty box {box} of {name!r} dropped")
            return False
        w, h = entry.width, entry.height
        cx0, cy0 = min(max(xmin, 0.0), float(w)), min(max(ymin, 0.0), float(h))
        cx1, cy1 = min(max(xmax, 0.0), float(w)), min(max(ymax, 0.0), float(h))
        if cx1 - cx0 <= 0.0 or cy1 - cy0 <= 0.0:
            self.report.dropped += 1
            self.warn("dropped", f"{where}: box {box} of {name!r} lies outside the {w}x{h} image, dropped")
            return False
        if xmin < -_EPS or ymin < -_EPS or xmax > w + _EPS or ymax > h + _EPS:
            self.report.clipped += 1
            self.warn("clipped", f"{where}: box {box} of {name!r} clipped to the {w}x{h} image")
        key = (name, round(cx0, 3), round(cy0, 3), round(cx1, 3), round(cy1, 3))
        if key in self._seen[entry.path]:
            self.warn("duplicate", f"{where}: duplicate box {box} of {name!r} left out")
            return False
        self._seen[entry.path].add(key)
        entry.boxes.append((name, cx0, cy0, cx1, cy1))
        return True

    # -- report --------------------------------------------------------------------------------

    def warn(self, kind: str, message: str) -> None:
        """A warning; only the first few of each kind are kept, the rest are counted."""
        n = self._kinds.get(kind, 0) + 1
        self._kinds[kind] = n
        if n <= _EXAMPLES:
            self.report.warnings.append(message)

    def build(self) -> Dataset:
        for kind, n in self._kinds.items():
            if n > _EXAMPLES:
                self.report.warnings.append(f"... and {n - _EXAMPLES} more '{kind}' warnings like these")
        if self.classes is not None:
            classes = list(self.classes)
        else:
            classes = sorted({b[0] for e in self._images.values() for b in e.boxes})
        index = {n: i for i, n in enumerate(classes)}
        samples = [
            Sample(
                image=e.path,
                width=e.width,
                height=e.height,
                boxes=tuple(Annotation(index[n], x0, y0, x1, y1) for n, x0, y0, x1, y1 in e.boxes),
            )
            for e in self._images.values()
        ]
        return Dataset(classes=classes, samples=samples, source=self.source, report=self.report)


def _n(v: float) -> str:
    return str(int(v)) if v == int(v) else f"{v:.2f}"
