"""Pascal VOC XML, as labelImg, VoTT ("Tensorflow Pascal VOC"), CVAT and Roboflow write it.

Layouts: ``Annotations/`` + ``JPEGImages/`` (+ ``ImageSets/``, ignored: every annotation is read),
also one level down (``VOCdevkit/VOC2012/``); or a folder of images and XML files side by side
(searched recursively); or one XML file. The image is found by ``<filename>`` (which may carry a
folder), by the base name of ``<path>``, and by the XML file's own name with a common extension.
Coordinates are read as floats, in pixels, as written. ``<size>`` missing or zero: the image is
read for it. ``<difficult>`` boxes are kept as ordinary boxes (counted in a warning).

Classes: the ``classes`` argument, else ``classes.txt`` / ``*.names`` / ``pascal_label_map.pbtxt``
beside the annotations, else the sorted unique names.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..errors import DatasetError
from .dataset import Dataset
from .parsing import (
    DatasetBuilder,
    basename,
    describe_dirs,
    find_class_file,
    find_image,
    image_size,
    number,
    read_class_file,
)

_COORDS = ("xmin", "ymin", "xmax", "ymax")


def _annotation_dirs(root: Path) -> List[Path]:
    if (root / "Annotations").is_dir():
        return [root / "Annotations"]
    return sorted(p for p in root.glob("*/Annotations") if p.is_dir())


def detect(path: Path) -> bool:
    if path.is_file():
        return path.suffix.lower() == ".xml"
    if _annotation_dirs(path):
        return True
    return any(_is_voc_xml(p) for p in [*sorted(path.glob("*.xml"))[:3], *sorted(path.glob("*/*.xml"))[:3]])


def _is_voc_xml(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return b"<annotation" in f.read(4096)
    except OSError:
        return False


def _layout(path: Path, images: Optional[Path]) -> List[Tuple[Path, List[Path]]]:
    """(xml file, folders to look for its image in) for every annotation."""
    extra = [images] if images is not None else []
    if path.is_file():
        return [(path, extra or [path.parent, path.parent.parent / "JPEGImages", path.parent.parent])]
    ann_dirs = _annotation_dirs(path)
    if ann_dirs:
        out: List[Tuple[Path, List[Path]]] = []
        for ann in ann_dirs:
            base = ann.parent
            dirs = extra or [base / "JPEGImages", base / "images", base, ann]
            out.extend((x, dirs) for x in sorted(ann.rglob("*.xml")))
        return out
    return [(x, extra or [x.parent]) for x in sorted(path.rglob("*.xml")) if not x.name.startswith(".")]


def _text(el: Optional[ET.Element], tag: str) -> Optional[str]:
    if el is None:
        return None
    found = el.find(tag)
    if found is None or found.text is None:
        return None
    return found.text.strip()


def read_voc(path: Path, images: Optional[Path] = None, classes: Optional[Sequence[str]] = None) -> Dataset:
    entries = _layout(path, images)
    if not entries:
        raise DatasetError(f"{path}: no Pascal VOC .xml annotations found")
    classes_from = "the given classes"
    if classes is None:
        root = path.parent if path.is_file() else path
        cls_file = find_class_file([root, *{x.parent for x, _ in entries[:1]}])
        if cls_file is not None:
            classes, classes_from = read_class_file(cls_file), str(cls_file)
    builder = DatasetBuilder(f"voc:{path}", classes, classes_from)
    sizes: Dict[Path, Optional[Tuple[int, int]]] = {}
    difficult = 0
    parsed = 0
    for xml_file, dirs in entries:
        try:
            root_el = ET.parse(xml_file).getroot()
        except ET.ParseError as e:
            line = e.position[0] if e.position else None
            raise DatasetError(f"{xml_file}:{line}: not well-formed XML ({e})") from e
        except OSError as e:
            raise DatasetError(f"{xml_file}: cannot read ({e.strerror or e})") from e
        if root_el.tag != "annotation":
            builder.warn("skipped", f"{xml_file}: not a Pascal VOC annotation (<{root_el.tag}>), skipped")
            continue
        parsed += 1
        difficult += _read_one(builder, xml_file, root_el, dirs, sizes)
    if parsed == 0:
        raise DatasetError(f"{path}: no Pascal VOC annotations (<annotation> XML) found")
    if difficult:
        builder.warn("difficult", f"{difficult} boxes marked <difficult> kept as ordinary boxes")
    return builder.build()


def _read_one(
    builder: DatasetBuilder,
    xml_file: Path,
    root: ET.Element,
    dirs: Sequence[Path],
    sizes: Dict[Path, Optional[Tuple[int, int]]],
) -> int:
    where = str(xml_file)
    filename = _text(root, "filename") or ""
    path_el = _text(root, "path") or ""
    names = [n for n in (filename, basename(path_el)) if n]
    stems = [xml_file.stem] + ([Path(basename(filename)).stem] if filename else [])
    image = find_image(names, dirs, stems)
    if image is None and path_el and Path(path_el).is_file():
        image = Path(path_el)
    if image is None:
        shown = filename or basename(path_el) or xml_file.stem
        raise DatasetError(f"{where}: image {shown!r} not found (looked in {describe_dirs(dirs)})")
    size_el = root.find("size")
    w_text, h_text = _text(size_el, "width"), _text(size_el, "height")
    width = int(number(w_text, "<width>", where)) if w_text else 0
    height = int(number(h_text, "<height>", where)) if h_text else 0
    if width <= 0 or height <= 0:
        width, height = image_size(image, sizes, where)
    if builder.has_image(image):
        builder.warn("merged", f"{where}: image {image.name} is annotated by another file too; boxes merged")
    key = builder.add_image(image, width, height, where)
    difficult = 0
    for k, obj in enumerate(root.findall("object"), start=1):
        name = _text(obj, "name")
        if not name:
            raise DatasetError(f"{where}: <object> #{k} has no <name>")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise DatasetError(f"{where}: <object> #{k} ({name!r}) has no <bndbox>")
        what = f"{where}: <object> #{k} ({name!r})"
        x0, y0, x1, y1 = (number(_text(bndbox, t), f"<{t}>", what) for t in _COORDS)
        if _text(obj, "difficult") in ("1", "true", "True"):
            difficult += 1
        builder.add_box(key, name, x0, y0, x1, y1, what)
    return difficult
