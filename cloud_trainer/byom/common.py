"""What the SSD-style and darknet kinds share: the ``--decoder`` check, reading ``--labels``,
the background class of SSD detectors against their label files, the manifest's input section
and defaults, and the input range a normalisation gives."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from edge_agent.bundle.manifest import Defaults

from ..errors import PackageError
from .base import ModelFiles
from .labels import read_labels

# How label files name the background class when they list it (TF's "???" placeholder becomes
# "unused-0" in labels.read_labels; an indexed file starting at 1 gives "unused-0" too).
BACKGROUND = ("background", "__background__", "unused-0")
LABEL_FILES = "--labels FILE (.txt, .names, label_map.pbtxt)"


def check_decoder(files: ModelFiles, decoder: str, outputs: str) -> None:
    """``--decoder`` may only confirm what the outputs say; anything else is a mistake to name."""
    if files.decoder is not None and files.decoder != decoder:
        raise PackageError(
            f"{files.model}: --decoder {files.decoder} does not fit a model whose outputs are "
            f"{outputs}; its decoder is {decoder} (leave --decoder out)"
        )


def given_labels(files: ModelFiles, missing: str) -> Tuple[List[str], str]:
    """(labels, where from) of ``--labels``; PackageError saying ``missing`` when there is none."""
    if files.labels is None:
        raise PackageError(f"{files.model}: {missing}; give {LABEL_FILES}")
    return read_labels(files.labels), str(files.labels)


def is_background(label: str) -> bool:
    return label.strip().lower() in BACKGROUND


def background_first(
    labels: Sequence[str], classes: Optional[int], source: str, notes: List[str]
) -> List[str]:
    """``labels`` without a leading background entry, when there is one and dropping it leaves
    ``classes`` labels (or the class count is unknown)."""
    if len(labels) > 1 and is_background(labels[0]) and (classes is None or len(labels) == classes + 1):
        notes.append(f"labels: {labels[0]!r}, first in {source}, is the background: left out")
        return list(labels[1:])
    return list(labels)


def detection_output_labels(
    labels: List[str],
    source: str,
    num_classes: Optional[int],
    background: int,
    model: Path,
    op: str,
    notes: List[str],
) -> Tuple[List[str], int]:
    """(labels, label_offset) for ``model``'s DetectionOutput ``op`` with ``num_classes``
    classes (the background included when ``background`` >= 0), whose rows carry the class
    number as the op counts it. The labels end up as the real classes only, first class first,
    and the offset says where they start among the op's numbers:

    - background 0 (every Open Model Zoo and TF Object Detection API SSD): the op never outputs
      0, real classes are 1..num_classes-1, so label_offset 1; a label file that lists the
      background first (``background``, TF's ``???``) loses that entry; a TF label map already
      starts at id 1;
    - background -1 (none) or the last class: classes are 0.., label_offset 0.

    With ``num_classes`` known the label count must match it; PackageError naming the files
    otherwise. ``notes`` gets a line per fact."""
    real = None if num_classes is None else num_classes - (1 if background >= 0 else 0)
    if background == 0:
        labels = background_first(labels, real, source, notes)
        offset = 1
        why = "the op's class 0 is the background, so its class 1 is the first label"
    elif background < 0 or (num_classes is not None and background == num_classes - 1):
        if background >= 0 and len(labels) == num_classes and is_background(labels[-1]):
            notes.append(f"labels: {labels[-1]!r}, last in {source}, is the background: left out")
            labels = labels[:-1]
        offset = 0
        why = "no background class before the first label"
    else:
        raise PackageError(
            f"{model}: {op}: background_label_id {background} lies among its {num_classes} classes; "
            "package can only shift class numbers (label_offset), not skip one in the middle"
        )
    if real is not None and len(labels) != real:
        raise PackageError(
            f"{source}: {len(labels)} labels, but {model.name}'s {op} detects {real} classes "
            f"(num_classes {num_classes}, background_label_id {background}); give a label file "
            f"with {real} labels, the first class first"
        )
    notes.append(f"labels: {len(labels)} from {source}")
    notes.append(f"label_offset {offset}: {why} ({op} background_label_id {background})")
    return labels, offset


def top_k_defaults(max_detections: int) -> Dict[str, Any]:
    """The manifest's defaults with the model's own cap on detections."""
    return {**Defaults().model_dump(), "max_detections": int(max_detections)}


def input_section(
    width: int,
    height: int,
    color: str,
    resize: str,
    value_range: Sequence[float],
    pad_value: int = 114,
) -> Dict[str, Any]:
    return {
        "width": int(width),
        "height": int(height),
        "color": color,
        "resize": resize,
        "pad_value": int(pad_value),
        "range": [_plain(v) for v in value_range],
    }


def normalisation_range(mean: Sequence[float], std: Sequence[float], where: str) -> List[float]:
    """The real interval pixel values 0..255 map to under ``(x - mean) / std``, the same for
    every channel (the manifest has one range). PackageError when the channels differ."""
    if len(set(mean)) > 1 or len(set(std)) > 1 or not mean or not std or 0 in std:
        raise PackageError(
            f"{where}: normalisation mean {list(mean)} / std {list(std)} differs between channels "
            "(or divides by 0); a bundle's input.range is one interval for every channel"
        )
    m, s = float(mean[0]), float(std[0])
    return [_plain((0.0 - m) / s), _plain((255.0 - m) / s)]


def _plain(v: float) -> float:
    """12 significant digits: 1/255-ish noise is gone, the pixel -> value mapping is unchanged."""
    return float(f"{float(v):.12g}")
