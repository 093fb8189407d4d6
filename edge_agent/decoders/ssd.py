"""``ssd``: the four outputs of TFLite_Detection_PostProcess.

boxes ``[1, N, 4]`` (ymin, xmin, ymax, xmax, normalised), classes ``[1, N]``, scores ``[1, N]``
and count ``[1]``. The order in which a runtime lists them varies between converters, so they
are found by shape and then by name or value, never by index. The op has already run NMS.
"""

from __future__ import annotations

import dataclasses
import re
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..detection import Detection
from ..errors import DecoderError
from .base import DecodeOptions, Decoder, DecoderParams, OutputShapes, OutputTensor, finish, require

TYPE = "ssd"


class SsdParams(DecoderParams):
    label_offset: int = 0


@dataclasses.dataclass(frozen=True)
class _Layout:
    boxes: int
    count: int
    pair: Tuple[int, int]  # the two [1, N] tensors: classes and scores, in some order
    classes: Optional[int]  # which of ``pair`` is classes, when the names tell


_EXPECTED = "boxes [1, N, 4], classes [1, N], scores [1, N] and count [1]"
_SUFFIX = re.compile(r"^(.*):(\d+)$")


def _describe(shapes: OutputShapes) -> str:
    return ", ".join(f"{name!r} {list(shape)}" for name, shape in shapes)


def _size(shape: Sequence[int]) -> int:
    return int(np.prod(shape)) if len(shape) else 1


def _keyword(name: str) -> Optional[str]:
    n = name.lower()
    is_classes, is_scores = "class" in n, "score" in n
    if is_classes != is_scores:
        return "classes" if is_classes else "scores"
    return None


def _classes_by_name(names: Tuple[str, str]) -> Optional[int]:
    """Index (0 or 1) into ``names`` of the classes tensor, or None when names do not tell."""
    ka, kb = _keyword(names[0]), _keyword(names[1])
    if ka != kb:
        # One says classes or the other says scores (and they do not contradict each other).
        return 0 if ka == "classes" or kb == "scores" else 1
    ma, mb = _SUFFIX.match(names[0]), _SUFFIX.match(names[1])
    if ma and mb and ma.group(1) == mb.group(1) and {ma.group(2), mb.group(2)} == {"1", "2"}:
        # TFLite's "<op>:0..3" = boxes, classes, scores, count (also the flattened signature
        # order detection_boxes, detection_classes, detection_scores, num_detections).
        return 0 if ma.group(2) == "1" else 1
    return None


def _layout(shapes: OutputShapes) -> _Layout:
    require(
        len(shapes) == 4,
        f"ssd expects the four outputs of TFLite_Detection_PostProcess ({_EXPECTED}), "
        f"got {len(shapes)}: {_describe(shapes)}",
    )
    boxes = [i for i, (_, s) in enumerate(shapes) if len(s) == 3 and s[0] == 1 and s[2] == 4]
    require(
        len(boxes) == 1,
        f"ssd expects exactly one boxes output [1, N, 4] among {_EXPECTED}, got {_describe(shapes)}",
    )
    b = boxes[0]
    n = shapes[b][1][1]
    rest = [i for i in range(4) if i != b]
    rows = [i for i in rest if tuple(shapes[i][1]) == (1, n)]
    others = [i for i in rest if i not in rows]
    if len(rows) == 2 and len(others) == 1 and _size(shapes[others[0]][1]) == 1:
        count = others[0]
    elif len(rows) == 3 and n == 1:  # N == 1 and count shaped [1, 1]: only the names can tell
        named = [i for i in rows if re.search(r"num|count|:3$", shapes[i][0].lower())]
        require(len(named) == 1, f"ssd cannot tell the count output apart: {_describe(shapes)}")
        count = named[0]
        rows.remove(count)
    else:
        raise DecoderError(f"ssd expects {_EXPECTED} with the same N, got {_describe(shapes)}")
    pair = (rows[0], rows[1])
    found = _classes_by_name((shapes[pair[0]][0], shapes[pair[1]][0]))
    return _Layout(b, count, pair, None if found is None else pair[found])


def _integral(x: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(x)) and np.all(x == np.round(x)))


def _unit(x: np.ndarray) -> bool:
    return bool(np.all((x >= 0.0) & (x <= 1.0)))


def _classes_by_value(a: np.ndarray, b: np.ndarray, shapes: OutputShapes) -> int:
    """0 when ``a`` holds the classes, 1 when ``b`` does: classes are integer-valued, scores
    lie in [0, 1] and are not all integers."""
    if _integral(a) and _unit(b) and not _integral(b):
        return 0
    if _integral(b) and _unit(a) and not _integral(a):
        return 1
    raise DecoderError(
        "ssd cannot tell the classes output from the scores output by name or by value; "
        f"name them (e.g. detection_classes, detection_scores): {_describe(shapes)}"
    )


def decode(outputs: Sequence[OutputTensor], params: SsdParams, options: DecodeOptions) -> List[Detection]:
    shapes = [(o.name, tuple(o.data.shape)) for o in outputs]
    layout = _layout(shapes)
    boxes = outputs[layout.boxes].dequantized().reshape(-1, 4)
    count = int(np.round(float(outputs[layout.count].dequantized().reshape(-1)[0])))
    count = max(0, min(count, boxes.shape[0]))
    if count == 0:
        return []
    a = outputs[layout.pair[0]].dequantized().reshape(-1)[:count]
    b = outputs[layout.pair[1]].dequantized().reshape(-1)[:count]
    if layout.classes is None:
        which = _classes_by_value(a, b, shapes)
    else:
        which = 0 if layout.classes == layout.pair[0] else 1
    classes_f, scores = (a, b) if which == 0 else (b, a)
    classes = np.round(classes_f).astype(np.int64) - params.label_offset
    keep = (classes >= 0) & (classes < options.num_classes)
    xyxy = boxes[:count][:, [1, 0, 3, 2]]
    # The op already ran NMS: an IoU threshold of 1 makes finish() keep every box while still
    # applying the score threshold, the score order and max_detections.
    return finish(xyxy[keep], scores[keep], classes[keep], dataclasses.replace(options, iou_threshold=1.0))


def check(output_shapes: OutputShapes, params: SsdParams, num_classes: int) -> None:
    # Class ids are values, not shapes: the label count cannot be checked before a frame.
    _layout(output_shapes)


DECODER = Decoder(type=TYPE, params=SsdParams, decode=decode, check=check)
