"""``yolov2``: a darknet region layer ``[1, S, S, A*(5+C)]`` (or NCHW ``[1, A*(5+C), S, S]``).

Per anchor: tx, ty, tw, th, objectness, then C class logits (softmax). Anchors are in grid
cells. The helpers for darknet's cell layout are shared with ``yolov3``.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import numpy as np
from pydantic import field_validator

from ..detection import Detection
from ..errors import DecoderError
from .base import (
    DecodeOptions,
    Decoder,
    DecoderParams,
    OutputShapes,
    OutputTensor,
    cxcywh_to_xyxy,
    select,
    sigmoid,
)

TYPE = "yolov2"


def validate_anchors(anchors: List[List[float]]) -> List[List[float]]:
    if not anchors:
        raise ValueError("anchors must list at least one [w, h] pair")
    for i, a in enumerate(anchors):
        if len(a) != 2 or not all(math.isfinite(v) and v > 0 for v in a):
            raise ValueError(f"anchors[{i}] must be [w, h] with two positive numbers, got {a}")
    return anchors


class Yolov2Params(DecoderParams):
    anchors: List[List[float]]

    @field_validator("anchors")
    @classmethod
    def _anchors(cls, v: List[List[float]]) -> List[List[float]]:
        return validate_anchors(v)


def darknet_grid(shape: Sequence[int], channels: Sequence[int]) -> Optional[Tuple[bool, int, int, int]]:
    """``(nchw, height, width, channels)`` for a 4-D darknet output whose channel axis (last
    for NHWC, second for NCHW) is one of ``channels``; NHWC wins when both fit. None if neither."""
    if len(shape) != 4 or shape[0] != 1:
        return None
    if shape[3] in channels:
        return False, int(shape[1]), int(shape[2]), int(shape[3])
    if shape[1] in channels:
        return True, int(shape[2]), int(shape[3]), int(shape[1])
    return None


def darknet_cells(data: np.ndarray, nchw: bool, num_anchors: int) -> np.ndarray:
    """``[H, W, A, 5+C]`` view of one darknet output (channel = anchor * (5+C) + field)."""
    if nchw:
        _, ch, h, w = data.shape
        return data.reshape(num_anchors, ch // num_anchors, h, w).transpose(2, 3, 0, 1)
    _, h, w, ch = data.shape
    return data.reshape(h, w, num_anchors, ch // num_anchors)


def candidates(
    cells: np.ndarray, threshold: float
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cells whose objectness reaches ``threshold`` (no class score can beat its objectness):
    ``(rows, cols, anchor indices, objectness, fields [K, 5+C])``."""
    obj = sigmoid(cells[..., 4])
    mask = obj >= threshold
    rows, cols, anchors = np.nonzero(mask)
    return rows, cols, anchors, obj[mask], cells[mask]


def _expectation(params: Yolov2Params, num_classes: int) -> Tuple[int, str]:
    a = len(params.anchors)
    ch = a * (5 + num_classes)
    return ch, (
        f"yolov2 expects one output [1, S, S, {a}*(5+{num_classes})={ch}] "
        f"(or NCHW [1, {ch}, S, S]) for {a} anchors and {num_classes} labels"
    )


def _grid(output_shapes: OutputShapes, params: Yolov2Params, num_classes: int) -> Tuple[bool, int, int]:
    ch, expected = _expectation(params, num_classes)
    grid = darknet_grid(output_shapes[0][1], [ch]) if len(output_shapes) == 1 else None
    if grid is None:
        raise DecoderError(f"{expected}, got " + ", ".join(str(list(s)) for _, s in output_shapes))
    return grid[0], grid[1], grid[2]


def decode(outputs: Sequence[OutputTensor], params: Yolov2Params, options: DecodeOptions) -> List[Detection]:
    nchw, h, w = _grid([(o.name, tuple(o.data.shape)) for o in outputs], params, options.num_classes)
    anchors = np.asarray(params.anchors, dtype=np.float32)
    cells = darknet_cells(outputs[0].dequantized(), nchw, len(anchors))
    rows, cols, idx, obj, f = candidates(cells, options.score_threshold)
    cx = (cols + sigmoid(f[:, 0])) / w
    cy = (rows + sigmoid(f[:, 1])) / h
    bw = anchors[idx, 0] * np.exp(np.clip(f[:, 2], -60.0, 60.0)) / w
    bh = anchors[idx, 1] * np.exp(np.clip(f[:, 3], -60.0, 60.0)) / h
    logits = f[:, 5:]
    e = np.exp(logits - np.max(logits, axis=1, keepdims=True))
    scores = obj[:, None] * (e / np.sum(e, axis=1, keepdims=True))
    return select(cxcywh_to_xyxy(np.stack([cx, cy, bw, bh], axis=-1)), scores, options)


def check(output_shapes: OutputShapes, params: Yolov2Params, num_classes: int) -> None:
    _grid(output_shapes, params, num_classes)


DECODER = Decoder(type=TYPE, params=Yolov2Params, decode=decode, check=check)
