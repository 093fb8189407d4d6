"""What every decoder shares: the output tensor as a backend hands it over, the options that
come from the manifest and the config, dequantisation and class-aware NMS.

Decoders are pure functions ``(outputs, params, options) -> list[Detection]`` with boxes
normalised to the *model input*; mapping back to the frame is the pre-processor's job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generic, List, Optional, Sequence, Tuple, Type, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..detection import Box, Detection
from ..errors import DecoderError


@dataclass(frozen=True)
class OutputTensor:
    """One raw model output. ``scale``/``zero_point`` are set when the tensor is quantized."""

    name: str
    data: np.ndarray
    scale: Optional[float] = None
    zero_point: int = 0

    def dequantized(self) -> np.ndarray:
        if self.scale is not None and self.scale != 0.0 and np.issubdtype(self.data.dtype, np.integer):
            return (self.data.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)
        return self.data.astype(np.float32, copy=False)


@dataclass(frozen=True)
class DecodeOptions:
    num_classes: int
    input_width: int
    input_height: int
    score_threshold: float = 0.4
    iou_threshold: float = 0.5
    max_detections: int = 100


class DecoderParams(BaseModel):
    """Base of each decoder's ``params`` model: unknown keys are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)


P = TypeVar("P", bound=DecoderParams)

OutputShapes = Sequence[Tuple[str, Tuple[int, ...]]]


@dataclass(frozen=True)
class Decoder(Generic[P]):
    """A registered decoder type: its params model, the decode function, and a shape check
    run at load time (before any frame) that raises DecoderError when outputs do not fit."""

    type: str
    params: Type[P]
    decode: Callable[[Sequence[OutputTensor], P, DecodeOptions], List[Detection]]
    check: Callable[[OutputShapes, P, int], None]


# Up to this many candidates NMS compares them all at once (a 512 x 512 IoU matrix is 1 MiB);
# above it (a very low score threshold) the greedy loop, whose work shrinks as boxes go.
NMS_MATRIX_MAX = 512


def nms(
    boxes: np.ndarray,
    scores: np.ndarray,
    class_ids: np.ndarray,
    iou_threshold: float,
    max_detections: int,
) -> np.ndarray:
    """Class-aware greedy NMS. ``boxes`` is ``[N,4]`` (xmin, ymin, xmax, ymax).
    Returns kept indices, highest score first."""
    if len(scores) == 0:
        return np.zeros((0,), dtype=np.int64)
    # Offsetting each class into its own region makes one pass class-aware.
    offset = class_ids.astype(np.float32)[:, None] * (float(np.max(np.abs(boxes))) + 1.0) * 2.0
    b = boxes.astype(np.float32) + offset
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    order = np.argsort(-scores, kind="stable")
    if len(order) <= NMS_MATRIX_MAX:
        return _nms_matrix(
            x1[order], y1[order], x2[order], y2[order], areas[order], order, iou_threshold, max_detections
        )
    keep: List[int] = []
    while order.size > 0 and len(keep) < max_detections:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        iw = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        ih = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = iw * ih
        union = areas[i] + areas[rest] - inter
        iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


def _nms_matrix(
    x1: np.ndarray,
    y1: np.ndarray,
    x2: np.ndarray,
    y2: np.ndarray,
    areas: np.ndarray,
    order: np.ndarray,
    iou_threshold: float,
    max_detections: int,
) -> np.ndarray:
    """The greedy loop's result from one IoU matrix (the same float32 arithmetic, so the same
    boxes survive): per kept box one row lookup instead of a dozen numpy calls."""
    iw = np.clip(np.minimum(x2[:, None], x2[None, :]) - np.maximum(x1[:, None], x1[None, :]), 0, None)
    ih = np.clip(np.minimum(y2[:, None], y2[None, :]) - np.maximum(y1[:, None], y1[None, :]), 0, None)
    inter = iw * ih
    union = areas[:, None] + areas[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)
    # Row i: the boxes that box i removes (written as the loop's test, so a NaN IoU removes too).
    suppresses = ~(iou <= iou_threshold)
    removed = np.zeros(len(order), dtype=bool)
    keep: List[int] = []
    for i in range(len(order)):
        if len(keep) >= max_detections:
            break
        if removed[i]:
            continue
        keep.append(i)
        removed |= suppresses[i]
    return order[np.asarray(keep, dtype=np.int64)]


def select(
    boxes_xyxy: np.ndarray,
    class_scores: np.ndarray,
    options: DecodeOptions,
) -> List[Detection]:
    """Best class per candidate, score threshold, NMS, max_detections.

    ``boxes_xyxy`` ``[N,4]`` normalised to the model input; ``class_scores`` ``[N,C]`` in 0..1.
    """
    if class_scores.shape[0] == 0:
        return []
    class_ids = np.argmax(class_scores, axis=1)
    scores = class_scores[np.arange(class_scores.shape[0]), class_ids]
    return finish(boxes_xyxy, scores, class_ids, options)


def finish(
    boxes_xyxy: np.ndarray, scores: np.ndarray, class_ids: np.ndarray, options: DecodeOptions
) -> List[Detection]:
    """Threshold, NMS and packaging for candidates that already have one class each."""
    mask = scores >= options.score_threshold
    boxes_xyxy, scores, class_ids = boxes_xyxy[mask], scores[mask], class_ids[mask]
    keep = nms(boxes_xyxy, scores, class_ids, options.iou_threshold, options.max_detections)
    return [
        Detection(class_id=c, score=s, box=Box(*b))
        for c, s, b in zip(class_ids[keep].tolist(), scores[keep].tolist(), clip01(boxes_xyxy[keep]).tolist())
    ]


def clip01(x: np.ndarray) -> np.ndarray:
    """``Box.clipped`` for an array: ``min(1, max(0, v))`` per value, NaN to 0 as Python does."""
    x = np.where(x > 0.0, x, 0.0).astype(x.dtype, copy=False)
    return np.where(x < 1.0, x, 1.0).astype(x.dtype, copy=False)


def cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
    cx, cy, w, h = b[..., 0], b[..., 1], b[..., 2], b[..., 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=-1)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def require(condition: bool, message: str) -> None:
    if not condition:
        raise DecoderError(message)
