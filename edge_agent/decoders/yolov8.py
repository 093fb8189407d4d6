"""``yolov8``: one output ``[1, 4+C, N]`` (as Ultralytics exports it) or ``[1, N, 4+C]``; boxes
cx, cy, w, h; class scores already in 0..1, no objectness."""

from __future__ import annotations

from typing import List, Literal, Sequence, Tuple

import numpy as np

from ..detection import Detection
from .base import (
    DecodeOptions,
    Decoder,
    DecoderParams,
    OutputShapes,
    OutputTensor,
    cxcywh_to_xyxy,
    require,
    select,
)

TYPE = "yolov8"


class Yolov8Params(DecoderParams):
    boxes: Literal["pixels", "normalized"] = "pixels"


def _channels_first(output_shapes: OutputShapes, num_classes: int) -> bool:
    """True for ``[1, 4+C, N]``, False for ``[1, N, 4+C]``; DecoderError when neither fits."""
    width = 4 + num_classes
    shape: Tuple[int, ...] = tuple(output_shapes[0][1]) if len(output_shapes) == 1 else ()
    fits = len(shape) == 3 and shape[0] == 1 and width in (shape[1], shape[2])
    require(
        fits,
        f"yolov8 expects one output [1, 4+{num_classes}, N] or [1, N, 4+{num_classes}] "
        f"for {num_classes} labels, got " + ", ".join(str(list(s)) for _, s in output_shapes),
    )
    return shape[1] == width  # both fit: prefer [1, 4+C, N] as Ultralytics exports


def decode(outputs: Sequence[OutputTensor], params: Yolov8Params, options: DecodeOptions) -> List[Detection]:
    first = _channels_first([(o.name, tuple(o.data.shape)) for o in outputs], options.num_classes)
    x = outputs[0].dequantized()[0]
    if first:
        # Filter on the contiguous [4+C, N] layout before transposing the few survivors.
        keep = np.max(x[4:], axis=0) >= options.score_threshold
        cand = x[:, keep].T
    else:
        keep = np.max(x[:, 4:], axis=1) >= options.score_threshold
        cand = x[keep]
    boxes = cand[:, :4]
    if params.boxes == "pixels":
        w, h = float(options.input_width), float(options.input_height)
        boxes = boxes / np.asarray([w, h, w, h], dtype=np.float32)
    return select(cxcywh_to_xyxy(boxes), cand[:, 4:], options)


def check(output_shapes: OutputShapes, params: Yolov8Params, num_classes: int) -> None:
    _channels_first(output_shapes, num_classes)


DECODER = Decoder(type=TYPE, params=Yolov8Params, decode=decode, check=check)
