"""``yolov3``: darknet yolo layers, one output per scale, each ``[1, S, S, A*(5+C)]`` (or NCHW).

``anchors`` are ``[w, h]`` in input pixels; ``masks`` lists the anchor indices of each output in
darknet's order: outputs sorted by grid size ascending (the coarsest grid, e.g. 13x13, takes
the first mask, usually the largest anchors: ``[[6,7,8],[3,4,5],[0,1,2]]`` for 13, 26, 52).
Classes are independent logistic scores multiplied by objectness.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
from pydantic import field_validator, model_validator

from ..detection import Detection
from ..errors import DecoderError
from .base import (
    DecodeOptions,
    Decoder,
    DecoderParams,
    OutputShapes,
    OutputTensor,
    cxcywh_to_xyxy,
    require,
    select,
    sigmoid,
)
from .yolov2 import candidates, darknet_cells, darknet_grid, validate_anchors

TYPE = "yolov3"


class Yolov3Params(DecoderParams):
    anchors: List[List[float]]
    masks: List[List[int]]

    @field_validator("anchors")
    @classmethod
    def _anchors(cls, v: List[List[float]]) -> List[List[float]]:
        return validate_anchors(v)

    @model_validator(mode="after")
    def _masks(self) -> Yolov3Params:
        if not self.masks or not all(self.masks):
            raise ValueError("masks must list, for each output, at least one anchor index")
        n = len(self.anchors)
        for i, mask in enumerate(self.masks):
            bad = [j for j in mask if not 0 <= j < n]
            if bad:
                raise ValueError(f"masks[{i}] = {mask} names anchors {bad} but only 0..{n - 1} exist")
        return self


# (output index, nchw, height, width, mask)
_Scale = Tuple[int, bool, int, int, List[int]]


def _scales(output_shapes: OutputShapes, params: Yolov3Params, num_classes: int) -> List[_Scale]:
    """Pair each output with its mask: outputs sorted by grid size ascending take the masks in
    the order listed. DecoderError when the outputs do not fit the masks and labels."""
    got = ", ".join(str(list(s)) for _, s in output_shapes)
    chans = [len(m) * (5 + num_classes) for m in params.masks]
    per = " / ".join(f"{len(m)}*(5+{num_classes})={c}" for m, c in zip(params.masks, chans))
    expected = (
        f"yolov3 expects {len(params.masks)} outputs [1, S, S, A*(5+C)] (or NCHW [1, A*(5+C), S, S]) "
        f"with A*(5+C) = {per} for masks {params.masks} and {num_classes} labels, got {got}"
    )
    require(len(output_shapes) == len(params.masks), expected)
    grids = [darknet_grid(shape, chans) for _, shape in output_shapes]
    found = [(i, g) for i, g in enumerate(grids) if g is not None]
    require(len(found) == len(grids), expected)
    found.sort(key=lambda ig: ig[1][1] * ig[1][2])  # stable: by grid size, ascending
    sizes = [g[1] * g[2] for _, g in found]
    require(
        len(set(sizes)) == len(sizes),
        f"yolov3 cannot match outputs to masks: two outputs have the same grid size, got {got}",
    )
    scales: List[_Scale] = []
    for mask, chan, (i, (nchw, h, w, c)) in zip(params.masks, chans, found):
        if c != chan:
            raise DecoderError(
                f"{expected} (the {h}x{w} output takes mask {mask} and needs {chan} channels, has {c})"
            )
        scales.append((i, nchw, h, w, mask))
    return scales


def decode(outputs: Sequence[OutputTensor], params: Yolov3Params, options: DecodeOptions) -> List[Detection]:
    scales = _scales([(o.name, tuple(o.data.shape)) for o in outputs], params, options.num_classes)
    all_anchors = np.asarray(params.anchors, dtype=np.float32)
    boxes: List[np.ndarray] = []
    scores: List[np.ndarray] = []
    for i, nchw, h, w, mask in scales:  # one iteration per output (3), vectorised within
        anchors = all_anchors[mask]
        cells = darknet_cells(outputs[i].dequantized(), nchw, len(mask))
        rows, cols, idx, obj, f = candidates(cells, options.score_threshold)
        cx = (cols + sigmoid(f[:, 0])) / w
        cy = (rows + sigmoid(f[:, 1])) / h
        bw = anchors[idx, 0] * np.exp(np.clip(f[:, 2], -60.0, 60.0)) / options.input_width
        bh = anchors[idx, 1] * np.exp(np.clip(f[:, 3], -60.0, 60.0)) / options.input_height
        boxes.append(cxcywh_to_xyxy(np.stack([cx, cy, bw, bh], axis=-1)))
        scores.append(obj[:, None] * sigmoid(f[:, 5:]))
    return select(np.concatenate(boxes), np.concatenate(scores), options)


def check(output_shapes: OutputShapes, params: Yolov3Params, num_classes: int) -> None:
    _scales(output_shapes, params, num_classes)


DECODER = Decoder(type=TYPE, params=Yolov3Params, decode=decode, check=check)
