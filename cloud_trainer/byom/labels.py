"""Label files as users have them: plain ``.txt`` / darknet ``.names`` (one label a line),
Coral's ``.txt`` with an index on each line (``0  person``), ``.yaml`` (Ultralytics ``names:`` as
a list or an index map), and the TF Object Detection API's ``label_map.pbtxt``
(``item { id: 1 name: '…' display_name: '…' }``). Indexes a file skips (COCO's 91 ids for 80
classes) get a placeholder ``unused-N``, and so does TensorFlow's own placeholder ``???`` (the
TFLite examples' COCO ``labelmap.txt`` has one per unused id), so that class indexes keep their
meaning and labels stay unique (a manifest requires it). Errors name the file and the line."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from ..errors import PackageError
from . import textproto

_INDEXED_RE = re.compile(r"^\s*(\d+)[\s:]+(\S.*?)\s*$")
PLACEHOLDER = "???"  # TensorFlow's name for a class index nobody uses


def read_labels(path: Path) -> List[str]:
    """The labels of a label file, in class-index order. For a label map, index ``id - 1``
    (ids count from 1, 0 being the background); ``display_name`` is preferred over ``name``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PackageError(f"{path}: cannot read the labels: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise PackageError(f"{path}: not a label file (not UTF-8 text: {e.reason} at byte {e.start})") from e
    return parse_labels(text, str(path), path.suffix)


def parse_labels(text: str, where: str, suffix: str = "") -> List[str]:
    """:func:`read_labels` for a label file's ``text`` (e.g. one packed inside a model);
    ``where`` names it in errors, ``suffix`` (``.yaml``, ``.pbtxt``, ``.txt``) says its format
    where the text alone does not."""
    if suffix in (".yaml", ".yml"):
        return _yaml_names(where, text)
    if suffix == ".pbtxt" or "item" in text and "{" in text:
        return _label_map(where, text)
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise PackageError(f"{where}: no labels in it")
    indexed = [_INDEXED_RE.match(line) for line in lines]
    if all(indexed):
        by_index: Dict[int, Tuple[str, int]] = {}
        for number, m in enumerate(indexed, 1):
            assert m is not None
            index = int(m.group(1))
            if index in by_index:
                raise PackageError(
                    f"{where}:{number}: index {index} appears twice (first on line {by_index[index][1]})"
                )
            by_index[index] = (m.group(2), number)
        return _fill(where, by_index, first=0)
    for number, label in enumerate(lines, 1):
        if not label:
            raise PackageError(f"{where}:{number}: an empty label")
    return _unique(where, [(label, number) for number, label in enumerate(lines, 1)], first=0)


def names_to_list(names: Any, where: str) -> List[str]:
    """Ultralytics ``names`` (a list, or a map of class index to name) as a list."""
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        return list(names)
    if isinstance(names, dict):
        try:
            by_index = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as e:
            raise PackageError(f"{where}: names: class indexes must be integers") from e
        if sorted(by_index) != list(range(len(by_index))):
            raise PackageError(f"{where}: names: class indexes must run 0..{len(by_index) - 1}")
        return [by_index[i] for i in range(len(by_index))]
    raise PackageError(f"{where}: names: expected a list or an index -> name map")


def _yaml_names(where: str, text: str) -> List[str]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PackageError(f"{where}: not YAML: {' '.join(str(e).split())}") from e
    names = doc.get("names") if isinstance(doc, dict) else doc
    if names is None:
        raise PackageError(f"{where}: no 'names' in it")
    return names_to_list(names, where)


def _label_map(where: str, text: str) -> List[str]:
    by_id: Dict[int, Tuple[str, int]] = {}
    for key, item, line in textproto.parse(text, where):
        if key != "item" or not isinstance(item, list):
            continue
        item_id = textproto.scalar(item, "id")
        if not item_id:
            raise PackageError(f"{where}:{line}: an item without an id")
        try:
            number = int(item_id)
        except ValueError as e:
            raise PackageError(f"{where}:{line}: id {item_id!r} is not a number") from e
        label = textproto.scalar(item, "display_name") or textproto.scalar(item, "name")
        if not label:
            raise PackageError(f"{where}:{line}: item {number} has no name")
        if number < 1:
            continue  # 0 is the background
        if number in by_id:
            raise PackageError(
                f"{where}:{line}: id {number} appears twice (first on line {by_id[number][1]})"
            )
        by_id[number] = (label, line)
    if not by_id:
        raise PackageError(f"{where}: no items in the label map")
    return _fill(where, by_id, first=1)


def _fill(where: str, by_index: Dict[int, Tuple[str, int]], first: int) -> List[str]:
    """Labels for indexes ``first``..max, with a placeholder where the file skips one."""
    return _unique(where, [by_index.get(i, (PLACEHOLDER, 0)) for i in range(first, max(by_index) + 1)], first)


def _unique(where: str, labels: List[Tuple[str, int]], first: int) -> List[str]:
    """The labels of ``(label, line)`` pairs, placeholders named ``unused-N`` (N: the class
    index in the file's own numbering); a label that appears twice is an error at its line."""
    out: List[str] = []
    seen: Dict[str, int] = {}
    for i, (label, line) in enumerate(labels):
        if label == PLACEHOLDER:
            out.append(f"unused-{i + first}")
            continue
        if label in seen:
            raise PackageError(f"{where}:{line}: label {label!r} appears twice (first on line {seen[label]})")
        seen[label] = line
        out.append(label)
    return out
