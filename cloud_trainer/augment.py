"""Training images as the model sees them: letterboxed like the agent does it, with random
scale/crop, horizontal flip and colour jitter, boxes transformed alongside (numpy + OpenCV)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import cv2
import numpy as np

from edge_agent.preprocess import place

PAD = 114


@dataclass(frozen=True)
class Augment:
    scale: Tuple[float, float] = (0.75, 1.25)  # relative to the letterbox fit
    translate: float = 0.1  # of the canvas, each way
    flip: float = 0.5
    hue: int = 8  # OpenCV hue units (0..180)
    saturation: Tuple[float, float] = (0.6, 1.4)
    value: Tuple[float, float] = (0.6, 1.4)
    min_visible: float = 0.4  # keep a box only if this much of it stays in the picture


def letterbox_matrix(
    w: int, h: int, size: int, scale: float = 1.0, dx: float = 0.0, dy: float = 0.0
) -> np.ndarray:
    """2x3 affine: the frame scaled to fit ``size`` (times ``scale``), centred, shifted by dx, dy."""
    r = min(size / w, size / h) * scale
    tx = (size - w * r) / 2 + dx
    ty = (size - h * r) / 2 + dy
    return np.array([[r, 0, tx], [0, r, ty]], np.float64)


def transform_boxes(boxes: np.ndarray, m: np.ndarray, size: int, min_visible: float) -> np.ndarray:
    """``boxes`` [K, 5] (class, xmin, ymin, xmax, ymax) pixels -> same in canvas pixels, clipped,
    dropping boxes that are mostly outside."""
    if len(boxes) == 0:
        return boxes.reshape(0, 5)
    out = boxes.copy()
    out[:, [1, 3]] = boxes[:, [1, 3]] * m[0, 0] + m[0, 2]
    out[:, [2, 4]] = boxes[:, [2, 4]] * m[1, 1] + m[1, 2]
    area = (out[:, 3] - out[:, 1]) * (out[:, 4] - out[:, 2])
    out[:, 1:] = np.clip(out[:, 1:], 0, size)
    kept = (out[:, 3] - out[:, 1]) * (out[:, 4] - out[:, 2])
    ok = (
        (kept >= min_visible * np.maximum(area, 1e-9))
        & (out[:, 3] - out[:, 1] >= 2)
        & (out[:, 4] - out[:, 2] >= 2)
    )
    return out[ok]


def colour_jitter(image: np.ndarray, rng: np.random.Generator, aug: Augment) -> np.ndarray:
    hsv = cv2.cvtColor(image, cv2.COLOR_BGR2HSV)
    h = rng.integers(-aug.hue, aug.hue + 1)
    s = rng.uniform(*aug.saturation)
    v = rng.uniform(*aug.value)
    x = np.arange(256, dtype=np.float32)
    lut_h = ((x + h) % 180).astype(np.uint8)
    lut_s = np.clip(x * s, 0, 255).astype(np.uint8)
    lut_v = np.clip(x * v, 0, 255).astype(np.uint8)
    hsv = cv2.merge((cv2.LUT(hsv[..., 0], lut_h), cv2.LUT(hsv[..., 1], lut_s), cv2.LUT(hsv[..., 2], lut_v)))
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)


def prepare(
    image: np.ndarray,
    boxes: np.ndarray,
    size: int,
    rng: Optional[np.random.Generator] = None,
    aug: Optional[Augment] = None,
) -> Tuple[np.ndarray, np.ndarray]:
    """BGR frame + boxes [K,5] pixels -> BGR ``size``x``size`` canvas + boxes in canvas pixels.
    Without ``rng`` it is the agent's plain letterbox (validation, evaluation)."""
    h, w = image.shape[:2]
    if rng is None or aug is None:
        # Exactly the agent's own letterbox, so calibration and validation see what devices see.
        canvas, fit = place(image, size, size, "letterbox", PAD)
        m = np.array([[fit.scale_x, 0, fit.pad_x], [0, fit.scale_y, fit.pad_y]], np.float64)
        return np.ascontiguousarray(canvas), transform_boxes(boxes, m, size, 0.0)
    t = aug.translate * size
    m = letterbox_matrix(w, h, size, rng.uniform(*aug.scale), rng.uniform(-t, t), rng.uniform(-t, t))
    canvas = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(PAD, PAD, PAD))
    out = transform_boxes(boxes, m, size, aug.min_visible)
    if rng.random() < aug.flip:
        canvas = canvas[:, ::-1]
        out = out.copy()
        out[:, [1, 3]] = size - out[:, [3, 1]]
    canvas = colour_jitter(np.ascontiguousarray(canvas), rng, aug)
    return np.ascontiguousarray(canvas), out
