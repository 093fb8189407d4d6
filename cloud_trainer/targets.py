"""Which output cells learn which object, and the loss.

A cell is positive for an object when the cell's centre lies within one cell of the object's
centre (both axes) and inside its box, on each head whose stride suits the object's size; a
cell claimed by two objects goes to the smaller. Positives learn the class (against
every other cell: binary cross-entropy) and the box (L1 + GIoU on the decoded, normalised box).

The other cells inside an object see nearly what its positive cells see. Calling them plain
negatives teaches the model that the object is half background, and its scores stall near 0.5;
so, as YOLOv3 does, a non-positive cell inside an object whose predicted box already overlaps
that object (IoU > 0.5) is left out of the class loss.

Target layout per cell: box (cx, cy, w, h), one-hot class (C), positive flag, the box of the
object the cell lies inside (4), inside flag.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .model import STRIDES, ModelSpec

# The object sizes (max side, fraction of the input) each head learns; they overlap.
SIZE_RANGES = {8: (0.0, 0.2), 16: (0.1, 0.45), 32: (0.25, 1.01)}


def encode(boxes: np.ndarray, spec: ModelSpec, grid: np.ndarray) -> np.ndarray:
    """``boxes`` [K,5] (class, xmin, ymin, xmax, ymax) in input pixels -> targets [N, 4+C+1]:
    normalised (cx, cy, w, h), one-hot class, positive flag."""
    n, c = len(grid), spec.num_classes
    target = np.zeros((n, width(spec)), np.float32)
    if len(boxes) == 0:
        return target
    size = float(spec.img_size)
    col, row, g = grid[:, 0], grid[:, 1], grid[:, 2]
    cell_cx, cell_cy = (col + 0.5) / g, (row + 0.5) / g
    stride_of_cell = size / g
    best_area = np.full(n, np.inf, np.float32)
    inside_area = np.full(n, np.inf, np.float32)
    for cls, x0, y0, x1, y1 in boxes:
        x0, y0, x1, y1 = x0 / size, y0 / size, x1 / size, y1 / size
        bw, bh = x1 - x0, y1 - y0
        if bw <= 0 or bh <= 0:
            continue
        cx, cy, side = (x0 + x1) / 2, (y0 + y1) / 2, max(bw, bh)
        heads = np.zeros(n, bool)
        for stride in STRIDES:
            lo, hi = SIZE_RANGES[stride]
            if lo <= side < hi:
                heads |= np.isclose(stride_of_cell, stride)
        near = (np.abs(cell_cx - cx) < 1.0 / g) & (np.abs(cell_cy - cy) < 1.0 / g)
        inside = (cell_cx > x0) & (cell_cx < x1) & (cell_cy > y0) & (cell_cy < y1)
        # The cell holding the centre always learns the object, however thin it is.
        home = (np.floor(cx * g) == col) & (np.floor(cy * g) == row)
        pos = heads & ((near & inside) | home)
        area = bw * bh
        region = inside & (area < inside_area)
        inside_area[region] = area
        target[region, 5 + c : 9 + c] = (cx, cy, bw, bh)
        target[region, 9 + c] = 1.0
        pos &= area < best_area
        best_area[pos] = area
        target[pos, :4] = (cx, cy, bw, bh)
        target[pos, 4 : 4 + c] = 0.0
        target[pos, 4 + int(cls)] = 1.0
        target[pos, 4 + c] = 1.0
    return target


def width(spec: ModelSpec) -> int:
    """Values per cell in a target: box 4, classes C, positive 1, enclosing box 4, inside 1."""
    return 4 + spec.num_classes + 1 + 5


def make_loss(spec: ModelSpec, box_weight: float = 5.0) -> Any:
    import tensorflow as tf

    c = spec.num_classes

    def loss(y_true: Any, y_pred: Any) -> Any:
        pos = y_true[..., 4 + c]
        npos = tf.maximum(tf.reduce_sum(pos), 1.0)
        # Binary cross-entropy on every cell's classes; a negative cell weighs 1/20 of a positive
        # one, since an image has ~100 times more of them.
        # A positive's class target is the IoU its own box reaches (IoU-aware scores, as in
        # VarifocalNet/TOOD): the best-placed cell of an object then also scores highest, so NMS
        # keeps the same box whatever the precision the model runs at.
        quality = tf.stop_gradient(tf.clip_by_value(_iou(y_true[..., :4], y_pred[..., :4]), 0.05, 1.0))
        t = y_true[..., 4 : 4 + c] * quality[..., None]
        p = tf.clip_by_value(y_pred[..., 4:], 1e-6, 1 - 1e-6)
        ce = -(t * tf.math.log(p) + (1 - t) * tf.math.log(1 - p))
        # Non-positive cells inside an object whose predicted box already fits it: no class loss.
        fits = _iou(y_true[..., 5 + c : 9 + c], y_pred[..., :4]) > 0.5
        ignore = y_true[..., 9 + c] * (1.0 - pos) * tf.cast(fits, tf.float32)
        weight = pos + 0.05 * (1.0 - pos) * (1.0 - ignore)
        cls_loss = tf.reduce_sum(weight[..., None] * ce) / npos
        # Box: L1 on (cx, cy, w, h) and GIoU, positives only.
        tb, pb = y_true[..., :4], y_pred[..., :4]
        l1 = tf.reduce_sum(tf.abs(tb - pb), -1)
        giou = 1.0 - _giou(tb, pb)
        box_loss = tf.reduce_sum((l1 + giou) * pos) / npos
        return cls_loss + box_weight * box_loss

    return loss


def _iou(a: Any, b: Any) -> Any:
    import tensorflow as tf

    iw = tf.maximum(
        tf.minimum(a[..., 0] + a[..., 2] / 2, b[..., 0] + b[..., 2] / 2)
        - tf.maximum(a[..., 0] - a[..., 2] / 2, b[..., 0] - b[..., 2] / 2),
        0.0,
    )
    ih = tf.maximum(
        tf.minimum(a[..., 1] + a[..., 3] / 2, b[..., 1] + b[..., 3] / 2)
        - tf.maximum(a[..., 1] - a[..., 3] / 2, b[..., 1] - b[..., 3] / 2),
        0.0,
    )
    inter = iw * ih
    return inter / (a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter + 1e-9)


def _giou(a: Any, b: Any) -> Any:
    import tensorflow as tf

    def corners(x: Any) -> Any:
        return (
            x[..., 0] - x[..., 2] / 2,
            x[..., 1] - x[..., 3] / 2,
            x[..., 0] + x[..., 2] / 2,
            x[..., 1] + x[..., 3] / 2,
        )

    ax0, ay0, ax1, ay1 = corners(a)
    bx0, by0, bx1, by1 = corners(b)
    iw = tf.maximum(tf.minimum(ax1, bx1) - tf.maximum(ax0, bx0), 0.0)
    ih = tf.maximum(tf.minimum(ay1, by1) - tf.maximum(ay0, by0), 0.0)
    inter = iw * ih
    union = a[..., 2] * a[..., 3] + b[..., 2] * b[..., 3] - inter + 1e-9
    iou = inter / union
    cw = tf.maximum(ax1, bx1) - tf.minimum(ax0, bx0)
    ch = tf.maximum(ay1, by1) - tf.minimum(ay0, by0)
    hull = cw * ch + 1e-9
    return iou - (hull - union) / hull
