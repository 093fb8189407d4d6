"""Label files as users have them: plain ``.txt`` / darknet ``.names`` (one label a line),
Coral's ``.txt`` with an index on each line (``0  person``), ``.yaml`` (Ultralytics ``names:`` as
a list or an index map), and the TF Object Detection API's ``label_map.pbtxt``
(``item { id: 1 name: '…' display_name: '…' }``). Indexes a file skips (COCO's 91 ids for 80
classes) get a placeholder ``unused-N``, so that class indexes keep their meaning and labels
stay unique (a manifest requires it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from ..errors import PackageError

_INDEXED_RE = re.compile(r"^\s*(\d+)[\s:]+(\S.*?)\s*$")
_ITEM_RE = re.compile(r"item\s*\{(.*?)\}", re.S)
_FIELD_RE = re.compile(r"(\w+)\s*:\s*(\"[^\"]*\"|'[^']*'|[^\s}]+)")


def read_labels(path: Path) -> List[str]:
    """The labels of a label file, in class-index order. For a label map, index ``id - 1``
    (ids count from 1, 0 being the background); ``display_name`` is preferred over ``name``."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise PackageError(f"{path}: cannot read the labels: {e.strerror or e}") from e
    if path.suffix in (".yaml", ".yml"):
        return _yaml_names(path, text)
    if path.suffix == ".pbtxt" or "item" in text and "{" in text:
        return _label_map(path, text)
    labels = [line.strip() for line in text.splitlines()]
    while labels and not labels[-1]:
        labels.pop()
    if not labels:
        raise PackageError(f"{path}: no labels in it")
    indexed = [_INDEXED_RE.match(line) for line in labels]
    if all(indexed):
        return _fill({int(m.group(1)): m.group(2) for m in indexed if m}, first=0)
    for number, label in enumerate(labels, 1):
        if not label:
            raise PackageError(f"{path}:{number}: an empty label")
    return labels


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


def _yaml_names(path: Path, text: str) -> List[str]:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise PackageError(f"{path}: not YAML: {e}") from e
    names = doc.get("names") if isinstance(doc, dict) else doc
    if names is None:
        raise PackageError(f"{path}: no 'names' in it")
    return names_to_list(names, str(path))


def _label_map(path: Path, text: str) -> List[str]:
    by_id: Dict[int, str] = {}
    for match in _ITEM_RE.finditer(text):
        fields = {k: v.strip("'\"") for k, v in _FIELD_RE.findall(match.group(1))}
        if "id" not in fields:
            raise PackageError(f"{path}: an item without an id")
        try:
            item_id = int(fields["id"])
        except ValueError as e:
            raise PackageError(f"{path}: id {fields['id']!r} is not a number") from e
        label: Optional[str] = fields.get("display_name") or fields.get("name")
        if not label:
            raise PackageError(f"{path}: item {item_id} has no name")
        if item_id < 1:
            continue  # 0 is the background
        by_id[item_id] = label
    if not by_id:
        raise PackageError(f"{path}: no items in the label map")
    return _fill(by_id, first=1)


def _fill(by_index: Dict[int, str], first: int) -> List[str]:
    return [by_index.get(i, f"unused-{i}") for i in range(first, max(by_index) + 1)]
