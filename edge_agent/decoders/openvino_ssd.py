"""``openvino-ssd``: DetectionOutput ``[1, 1, N, 7]``, rows (image_id, label, conf, xmin, ymin,
xmax, ymax) normalised; the first row with image_id < 0 ends the list."""

from __future__ import annotations

from typing import List, Sequence

import numpy as np

from ..detection import Detection
from .base import DecodeOptions, Decoder, DecoderParams, OutputShapes, OutputTensor, finish, require

TYPE = "openvino-ssd"


class OpenVinoSsdParams(DecoderParams):
    label_offset: int = 0


def _check_shapes(output_shapes: OutputShapes) -> None:
    shape = tuple(output_shapes[0][1]) if len(output_shapes) == 1 else ()
    require(
        len(shape) == 4 and shape[0] == 1 and shape[1] == 1 and shape[3] == 7,
        "openvino-ssd expects one DetectionOutput [1, 1, N, 7], got "
        + ", ".join(str(list(s)) for _, s in output_shapes),
    )


def decode(
    outputs: Sequence[OutputTensor], params: OpenVinoSsdParams, options: DecodeOptions
) -> List[Detection]:
    _check_shapes([(o.name, tuple(o.data.shape)) for o in outputs])
    rows = outputs[0].dequantized().reshape(-1, 7)
    end = np.flatnonzero(rows[:, 0] < 0)
    if end.size:
        rows = rows[: end[0]]
    classes = np.round(rows[:, 1]).astype(np.int64) - params.label_offset
    keep = (classes >= 0) & (classes < options.num_classes)
    rows, classes = rows[keep], classes[keep]
    # DetectionOutput has already run NMS, but at the IoU threshold baked into the model.
    # Running class-aware NMS again is cheap (only the rows above the score threshold, at most
    # keep_top_k, usually a handful) and harmless (at a threshold no tighter than the op's it
    # removes nothing), and it makes the configured iou_threshold mean the same here as for
    # every other decoder.
    return finish(rows[:, 3:7], rows[:, 2], classes, options)


def check(output_shapes: OutputShapes, params: OpenVinoSsdParams, num_classes: int) -> None:
    # Labels are values, not shapes: the label count cannot be checked before a frame.
    _check_shapes(output_shapes)


DECODER = Decoder(type=TYPE, params=OpenVinoSsdParams, decode=decode, check=check)
