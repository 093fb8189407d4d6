"""Decoders on tensors whose right answer is known: each test encodes specific boxes, classes and
scores the way the model's output layer would, and checks that decoding gives them back."""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

from edge_agent.decoders import DECODERS, get_decoder, parse_params
from edge_agent.decoders.base import DecodeOptions, OutputTensor
from edge_agent.decoders.openvino_ssd import OpenVinoSsdParams
from edge_agent.decoders.ssd import SsdParams
from edge_agent.decoders.yolov2 import Yolov2Params
from edge_agent.decoders.yolov3 import Yolov3Params
from edge_agent.decoders.yolov8 import Yolov8Params
from edge_agent.detection import Detection
from edge_agent.errors import DecoderError

Expected = Tuple[int, float, Tuple[float, float, float, float]]


def options(**kw: Any) -> DecodeOptions:
    base: Dict[str, Any] = dict(
        num_classes=3,
        input_width=320,
        input_height=256,
        score_threshold=0.4,
        iou_threshold=0.5,
        max_detections=100,
    )
    base.update(kw)
    return DecodeOptions(**base)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def assert_detections(got: List[Detection], expected: Sequence[Expected], tol: float = 1e-4) -> None:
    assert len(got) == len(expected), got
    for det, (class_id, score, box) in zip(got, expected):
        assert det.class_id == class_id, (det, class_id)
        assert det.score == pytest.approx(score, abs=tol), (det, score)
        b = det.box
        assert (b.xmin, b.ymin, b.xmax, b.ymax) == pytest.approx(box, abs=tol), (det, box)


def quantize(x: np.ndarray, dtype: Any) -> Tuple[np.ndarray, float, int]:
    info = np.iinfo(dtype)
    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / (int(info.max) - int(info.min))
    zero_point = int(round(info.min - lo / scale))
    q = np.clip(np.round(x / scale) + zero_point, info.min, info.max).astype(dtype)
    return q, scale, zero_point


def assert_quantized_same(
    decode: Any, data: np.ndarray, params: Any, opts: DecodeOptions, dtype: Any
) -> None:
    """The quantized tensor decodes exactly like its dequantized float twin."""
    q, scale, zp = quantize(data, dtype)
    real = (q.astype(np.float32) - np.float32(zp)) * np.float32(scale)
    got = decode([OutputTensor("out", q, scale, zp)], params, opts)
    want = decode([OutputTensor("out", real)], params, opts)
    assert got and got == want


# ---------------------------------------------------------------- yolov8

# Three objects, normalised to the model input: (class, score, (cx, cy, w, h)).
YOLOV8_OBJECTS = [
    (2, 0.9, (0.30, 0.40, 0.20, 0.10)),
    (0, 0.8, (0.70, 0.25, 0.10, 0.30)),
    (1, 0.6, (0.50, 0.80, 0.40, 0.20)),
]
YOLOV8_EXPECTED: List[Expected] = [
    (2, 0.9, (0.20, 0.35, 0.40, 0.45)),
    (0, 0.8, (0.65, 0.10, 0.75, 0.40)),
    (1, 0.6, (0.30, 0.70, 0.70, 0.90)),
]


def yolov8_tensor(
    objects: Sequence[Tuple[int, float, Tuple[float, float, float, float]]],
    num_classes: int = 3,
    n: int = 20,
    channels_first: bool = True,
    pixels: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
    rows = np.zeros((n, 4 + num_classes), dtype=np.float32)
    rows[:, :4] = [0.5, 0.5, 0.1, 0.1]
    rows[:, 4:] = 0.01  # background everywhere else
    for i, (cls, score, (cx, cy, w, h)) in enumerate(objects):
        j = 3 * i + 2  # spread among the background candidates
        rows[j, :4] = [cx, cy, w, h]
        rows[j, 4 + cls] = score
        rows[j, 4 + (cls + 1) % num_classes] = score / 2  # a weaker second class
    if pixels is not None:
        rows[:, [0, 2]] *= pixels[0]
        rows[:, [1, 3]] *= pixels[1]
    return (rows.T if channels_first else rows)[None]


@pytest.mark.parametrize("channels_first", [True, False], ids=["4+C,N", "N,4+C"])
@pytest.mark.parametrize("boxes", ["pixels", "normalized"])
def test_yolov8_orientations_and_box_units(channels_first: bool, boxes: str) -> None:
    opts = options()
    pixels = (opts.input_width, opts.input_height) if boxes == "pixels" else None
    data = yolov8_tensor(YOLOV8_OBJECTS, channels_first=channels_first, pixels=pixels)
    assert data.shape == ((1, 7, 20) if channels_first else (1, 20, 7))
    got = DECODERS["yolov8"].decode([OutputTensor("output0", data)], Yolov8Params(boxes=boxes), opts)
    assert_detections(got, YOLOV8_EXPECTED)


def test_yolov8_pixels_default_divides_by_input_size() -> None:
    # Normalised boxes read as pixels shrink by the input size: the default really is pixels.
    data = yolov8_tensor(YOLOV8_OBJECTS[:1], pixels=(320, 256))
    got = DECODERS["yolov8"].decode([OutputTensor("o", data)], Yolov8Params(), options())
    assert_detections(got, YOLOV8_EXPECTED[:1])


def test_yolov8_square_output_prefers_channels_first() -> None:
    # [1, 7, 7] with 3 labels fits both orientations: read it as Ultralytics' [1, 4+C, N].
    data = yolov8_tensor(YOLOV8_OBJECTS[:1], n=7, channels_first=True)
    assert data.shape == (1, 7, 7)
    got = DECODERS["yolov8"].decode([OutputTensor("o", data)], Yolov8Params(boxes="normalized"), options())
    assert_detections(got, YOLOV8_EXPECTED[:1])


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_yolov8_quantized(dtype: Any) -> None:
    data = yolov8_tensor(YOLOV8_OBJECTS)
    params = Yolov8Params(boxes="normalized")
    q, scale, zp = quantize(data, dtype)
    got = DECODERS["yolov8"].decode([OutputTensor("o", q, scale, zp)], params, options())
    assert_detections(got, YOLOV8_EXPECTED, tol=scale)
    assert_quantized_same(DECODERS["yolov8"].decode, data, params, options(), dtype)


def test_nms_is_class_aware() -> None:
    objects = [
        (0, 0.9, (0.30, 0.30, 0.20, 0.20)),
        (1, 0.8, (0.31, 0.30, 0.20, 0.20)),  # overlaps the first, other class: kept
        (0, 0.7, (0.30, 0.31, 0.20, 0.20)),  # overlaps the first, same class: suppressed
        (0, 0.6, (0.70, 0.70, 0.20, 0.20)),  # same class, elsewhere: kept
    ]
    data = yolov8_tensor(objects)
    got = DECODERS["yolov8"].decode([OutputTensor("o", data)], Yolov8Params(boxes="normalized"), options())
    assert [(d.class_id, round(d.score, 4)) for d in got] == [(0, 0.9), (1, 0.8), (0, 0.6)]
    # With a looser IoU threshold the same-class overlap survives.
    loose = options(iou_threshold=0.95)
    got = DECODERS["yolov8"].decode([OutputTensor("o", data)], Yolov8Params(boxes="normalized"), loose)
    assert [(d.class_id, round(d.score, 4)) for d in got] == [(0, 0.9), (1, 0.8), (0, 0.7), (0, 0.6)]


@pytest.mark.parametrize("max_detections", [0, 1, 2, 3, 10])
def test_max_detections_keeps_the_best(max_detections: int) -> None:
    data = yolov8_tensor(YOLOV8_OBJECTS)
    got = DECODERS["yolov8"].decode(
        [OutputTensor("o", data)],
        Yolov8Params(boxes="normalized"),
        options(max_detections=max_detections),
    )
    assert_detections(got, YOLOV8_EXPECTED[:max_detections])


@pytest.mark.parametrize(("threshold", "count"), [(0.0, 20), (0.59, 3), (0.61, 2), (0.85, 1), (0.95, 0)])
def test_score_threshold(threshold: float, count: int) -> None:
    data = yolov8_tensor(YOLOV8_OBJECTS)
    opts = options(score_threshold=threshold, iou_threshold=1.0)
    got = DECODERS["yolov8"].decode([OutputTensor("o", data)], Yolov8Params(boxes="normalized"), opts)
    assert len(got) == count
    assert all(d.score >= threshold for d in got)
    assert_detections(got[: min(count, 3)], YOLOV8_EXPECTED[: min(count, 3)])


def test_boxes_are_clipped_to_the_input() -> None:
    data = yolov8_tensor([(1, 0.9, (0.05, 0.95, 0.3, 0.3))])
    got = DECODERS["yolov8"].decode([OutputTensor("o", data)], Yolov8Params(boxes="normalized"), options())
    assert_detections(got, [(1, 0.9, (0.0, 0.8, 0.2, 1.0))])


@pytest.mark.parametrize(
    ("shapes", "message"),
    [
        (
            [("output0", (1, 9, 2100))],
            "yolov8 expects one output [1, 4+3, N] or [1, N, 4+3] for 3 labels, got [1, 9, 2100]",
        ),
        (
            [("output0", (1, 2100, 84))],
            "yolov8 expects one output [1, 4+3, N] or [1, N, 4+3] for 3 labels, got [1, 2100, 84]",
        ),
        (
            [("a", (1, 7, 2100)), ("b", (1, 7, 2100))],
            "yolov8 expects one output [1, 4+3, N] or [1, N, 4+3] for 3 labels, "
            "got [1, 7, 2100], [1, 7, 2100]",
        ),
        (
            [("output0", (7, 2100))],
            "yolov8 expects one output [1, 4+3, N] or [1, N, 4+3] for 3 labels, got [7, 2100]",
        ),
    ],
)
def test_yolov8_check_errors(shapes: Any, message: str) -> None:
    with pytest.raises(DecoderError) as e:
        DECODERS["yolov8"].check(shapes, Yolov8Params(), 3)
    assert str(e.value) == message


def test_yolov8_decode_rejects_wrong_label_count() -> None:
    data = yolov8_tensor(YOLOV8_OBJECTS)  # 3 classes
    with pytest.raises(DecoderError, match=r"4\+80"):
        DECODERS["yolov8"].decode([OutputTensor("o", data)], Yolov8Params(), options(num_classes=80))


# ---------------------------------------------------------------- yolov2

YOLOV2_ANCHORS = [[1.0, 1.5], [2.5, 2.0]]


def darknet_tensor(
    height: int,
    width: int,
    num_anchors: int,
    num_classes: int,
    cells: Sequence[Tuple[int, int, int, Sequence[float]]],
    nchw: bool,
) -> np.ndarray:
    """A darknet output: ``cells`` are (row, col, anchor, [tx, ty, tw, th, to, class logits...]);
    every other anchor has objectness logit -10."""
    t = np.zeros((height, width, num_anchors, 5 + num_classes), dtype=np.float32)
    t[..., 4] = -10.0
    t[..., 5:] = np.linspace(-1.0, 1.0, num_classes)
    for row, col, anchor, fields in cells:
        t[row, col, anchor] = fields
    x = t.reshape(1, height, width, num_anchors * (5 + num_classes))
    return x.transpose(0, 3, 1, 2).copy() if nchw else x


def yolov2_cell(
    cx: float,
    cy: float,
    w: float,
    h: float,
    anchor: int,
    obj: float,
    logits: Sequence[float],
    h_cells: int,
    w_cells: int,
) -> Tuple[int, int, int, List[float]]:
    """Inverse of the region layer: the raw fields that encode this box."""
    col, row = int(cx * w_cells), int(cy * h_cells)
    aw, ah = YOLOV2_ANCHORS[anchor]
    fields = [
        logit(cx * w_cells - col),
        logit(cy * h_cells - row),
        math.log(w * w_cells / aw),
        math.log(h * h_cells / ah),
        logit(obj),
        *logits,
    ]
    return row, col, anchor, fields


def softmax_p(logits: Sequence[float], i: int) -> float:
    e = [math.exp(v) for v in logits]
    return e[i] / sum(e)


def yolov2_case(nchw: bool, height: int = 5, width: int = 5) -> Tuple[np.ndarray, List[Expected]]:
    cells = [
        yolov2_cell(0.3, 0.52, 0.4, 0.2, 1, 0.9, [0.0, 0.0, 3.0], height, width),
        yolov2_cell(0.75, 0.15, 0.1, 0.25, 0, 0.8, [2.0, 0.5, 0.0], height, width),
    ]
    data = darknet_tensor(height, width, 2, 3, cells, nchw)
    expected: List[Expected] = [
        (2, 0.9 * softmax_p([0.0, 0.0, 3.0], 2), (0.1, 0.42, 0.5, 0.62)),
        (0, 0.8 * softmax_p([2.0, 0.5, 0.0], 0), (0.7, 0.025, 0.8, 0.275)),
    ]
    return data, expected


@pytest.mark.parametrize("nchw", [False, True], ids=["NHWC", "NCHW"])
@pytest.mark.parametrize(("height", "width"), [(5, 5), (13, 13), (4, 6)])
def test_yolov2_decodes_encoded_boxes(nchw: bool, height: int, width: int) -> None:
    data, expected = yolov2_case(nchw, height, width)
    params = Yolov2Params(anchors=YOLOV2_ANCHORS)
    got = DECODERS["yolov2"].decode([OutputTensor("out", data)], params, options())
    assert_detections(got, expected)


@pytest.mark.parametrize("nchw", [False, True], ids=["NHWC", "NCHW"])
@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_yolov2_quantized(nchw: bool, dtype: Any) -> None:
    data, expected = yolov2_case(nchw)
    params = Yolov2Params(anchors=YOLOV2_ANCHORS)
    q, scale, zp = quantize(data, dtype)
    got = DECODERS["yolov2"].decode([OutputTensor("out", q, scale, zp)], params, options())
    assert_detections(got, expected, tol=0.02)
    assert_quantized_same(DECODERS["yolov2"].decode, data, params, options(), dtype)


def test_yolov2_check() -> None:
    params = Yolov2Params(anchors=[[1, 1]] * 5)
    DECODERS["yolov2"].check([("out", (1, 13, 13, 40))], params, 3)
    DECODERS["yolov2"].check([("out", (1, 40, 13, 13))], params, 3)
    with pytest.raises(DecoderError) as e:
        DECODERS["yolov2"].check([("out", (1, 13, 13, 125))], params, 3)
    assert str(e.value) == (
        "yolov2 expects one output [1, S, S, 5*(5+3)=40] (or NCHW [1, 40, S, S]) "
        "for 5 anchors and 3 labels, got [1, 13, 13, 125]"
    )
    with pytest.raises(DecoderError, match="got \\[1, 13, 13, 40\\], \\[1, 13, 13, 40\\]"):
        DECODERS["yolov2"].check([("a", (1, 13, 13, 40)), ("b", (1, 13, 13, 40))], params, 3)


# ---------------------------------------------------------------- yolov3

YOLOV3_ANCHORS = [[10.0, 14.0], [23.0, 27.0], [37.0, 58.0], [81.0, 82.0], [135.0, 169.0], [344.0, 319.0]]
YOLOV3_MASKS = [[3, 4, 5], [0, 1, 2]]  # coarse grid first, as darknet lists them


def yolov3_cell(
    cx: float,
    cy: float,
    w: float,
    h: float,
    anchor: int,
    slot: int,
    obj: float,
    logits: Sequence[float],
    grid: int,
) -> Tuple[int, int, int, List[float]]:
    col, row = int(cx * grid), int(cy * grid)
    aw, ah = YOLOV3_ANCHORS[anchor]
    fields = [
        logit(cx * grid - col),
        logit(cy * grid - row),
        math.log(w * 320 / aw),  # anchors are in input pixels (320x256 here)
        math.log(h * 256 / ah),
        logit(obj),
        *logits,
    ]
    return row, col, slot, fields


def yolov3_case(nchw: bool) -> Tuple[List[OutputTensor], List[Expected]]:
    # 10x10 grid takes mask [3, 4, 5]; 20x20 takes [0, 1, 2].
    coarse = darknet_tensor(
        10, 10, 3, 3, [yolov3_cell(0.55, 0.45, 0.5, 0.6, 4, 1, 0.95, [-3.0, 2.0, -3.0], 10)], nchw
    )
    fine = darknet_tensor(
        20, 20, 3, 3, [yolov3_cell(0.12, 0.83, 0.05, 0.1, 0, 0, 0.7, [-2.0, -2.0, 1.5], 20)], nchw
    )
    # Listed fine first: matching goes by grid size, not by order.
    outputs = [OutputTensor("Identity_1", fine), OutputTensor("Identity", coarse)]
    expected: List[Expected] = [
        (1, 0.95 * sig(2.0), (0.30, 0.15, 0.80, 0.75)),
        (2, 0.7 * sig(1.5), (0.095, 0.78, 0.145, 0.88)),
    ]
    return outputs, expected


@pytest.mark.parametrize("nchw", [False, True], ids=["NHWC", "NCHW"])
def test_yolov3_decodes_encoded_boxes(nchw: bool) -> None:
    outputs, expected = yolov3_case(nchw)
    params = Yolov3Params(anchors=YOLOV3_ANCHORS, masks=YOLOV3_MASKS)
    assert_detections(DECODERS["yolov3"].decode(outputs, params, options()), expected)
    assert_detections(DECODERS["yolov3"].decode(outputs[::-1], params, options()), expected)


def test_yolov3_masks_follow_grid_size_not_output_order() -> None:
    # Swapping the masks makes the anchors wrong: the decoded boxes must change.
    outputs, expected = yolov3_case(False)
    params = Yolov3Params(anchors=YOLOV3_ANCHORS, masks=YOLOV3_MASKS[::-1])
    got = DECODERS["yolov3"].decode(outputs, params, options())
    assert [d.class_id for d in got] == [1, 2]
    assert got[0].box.xmax - got[0].box.xmin < 0.1


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_yolov3_quantized(dtype: Any) -> None:
    outputs, expected = yolov3_case(False)
    params = Yolov3Params(anchors=YOLOV3_ANCHORS, masks=YOLOV3_MASKS)
    quantized, real = [], []
    for o in outputs:
        q, scale, zp = quantize(o.data, dtype)
        quantized.append(OutputTensor(o.name, q, scale, zp))
        real.append(OutputTensor(o.name, (q.astype(np.float32) - np.float32(zp)) * np.float32(scale)))
    got = DECODERS["yolov3"].decode(quantized, params, options())
    assert_detections(got, expected, tol=0.02)
    assert got == DECODERS["yolov3"].decode(real, params, options())


def test_yolov3_check() -> None:
    params = Yolov3Params(anchors=YOLOV3_ANCHORS, masks=YOLOV3_MASKS)
    check = DECODERS["yolov3"].check
    check([("a", (1, 20, 20, 24)), ("b", (1, 10, 10, 24))], params, 3)
    check([("a", (1, 24, 20, 20)), ("b", (1, 24, 10, 10))], params, 3)
    with pytest.raises(DecoderError) as e:
        check([("a", (1, 10, 10, 255)), ("b", (1, 20, 20, 255))], params, 3)
    assert str(e.value) == (
        "yolov3 expects 2 outputs [1, S, S, A*(5+C)] (or NCHW [1, A*(5+C), S, S]) with "
        "A*(5+C) = 3*(5+3)=24 / 3*(5+3)=24 for masks [[3, 4, 5], [0, 1, 2]] and 3 labels, "
        "got [1, 10, 10, 255], [1, 20, 20, 255]"
    )
    with pytest.raises(DecoderError, match="expects 2 outputs"):
        check([("a", (1, 10, 10, 24))], params, 3)
    with pytest.raises(DecoderError, match="same grid size"):
        check([("a", (1, 10, 10, 24)), ("b", (1, 10, 10, 24))], params, 3)
    # Masks of different lengths: the 10x10 output takes [3, 4, 5] and must have 3*(5+3) channels.
    uneven = Yolov3Params(anchors=YOLOV3_ANCHORS, masks=[[3, 4, 5], [0, 1]])
    check([("a", (1, 20, 20, 16)), ("b", (1, 10, 10, 24))], uneven, 3)
    with pytest.raises(DecoderError, match="the 10x10 output takes mask \\[3, 4, 5\\] and needs 24 channels"):
        check([("a", (1, 20, 20, 24)), ("b", (1, 10, 10, 16))], uneven, 3)


# ---------------------------------------------------------------- ssd

SSD_NAMES = {
    "op": ["TFLite_Detection_PostProcess", *(f"TFLite_Detection_PostProcess:{i}" for i in (1, 2, 3))],
    "partitioned": [f"PartitionedCall:{i}" for i in range(4)],
    "stateful": [f"StatefulPartitionedCall:{i}" for i in range(4)],
    "signature": ["detection_boxes", "detection_classes", "detection_scores", "num_detections"],
}
SSD_ORDERS = [(0, 1, 2, 3), (2, 0, 3, 1), (3, 2, 1, 0), (1, 3, 0, 2)]
SSD_EXPECTED: List[Expected] = [
    (0, 0.9, (0.2, 0.1, 0.6, 0.5)),
    (2, 0.75, (0.1, 0.3, 0.4, 0.7)),
]


def ssd_outputs(
    names: Sequence[str],
    order: Sequence[int],
    classes: Sequence[float] = (0, 2, 1, 1, 0),
    scores: Sequence[float] = (0.9, 0.75, 0.3, 0.95, 0.0),
    count: float = 3,
) -> List[OutputTensor]:
    boxes = np.array(
        [
            [0.1, 0.2, 0.5, 0.6],
            [0.3, 0.1, 0.7, 0.4],
            [0.0, 0.0, 1.0, 1.0],
            [0.2, 0.2, 0.3, 0.3],  # beyond count: ignored even with a high score
            [0.0, 0.0, 0.0, 0.0],
        ],
        dtype=np.float32,
    )[None]
    tensors = [
        boxes,
        np.array([classes], dtype=np.float32),
        np.array([scores], dtype=np.float32),
        np.array([count], dtype=np.float32),
    ]
    return [OutputTensor(names[i], tensors[i]) for i in order]


@pytest.mark.parametrize("order", SSD_ORDERS)
@pytest.mark.parametrize("naming", sorted(SSD_NAMES))
def test_ssd_found_by_name_in_any_order(naming: str, order: Sequence[int]) -> None:
    outputs = ssd_outputs(SSD_NAMES[naming], order)
    assert_detections(DECODERS["ssd"].decode(outputs, SsdParams(), options()), SSD_EXPECTED)
    # Scores that are whole numbers make values useless: the names alone must tell.
    outputs = ssd_outputs(SSD_NAMES[naming], order, scores=(1.0, 1.0, 0.0, 1.0, 0.0))
    got = DECODERS["ssd"].decode(outputs, SsdParams(), options())
    assert [(d.class_id, d.score) for d in got] == [(0, 1.0), (2, 1.0)]


@pytest.mark.parametrize("order", SSD_ORDERS)
def test_ssd_found_by_value_when_names_say_nothing(order: Sequence[int]) -> None:
    outputs = ssd_outputs(["a", "b", "c", "d"], order)
    assert_detections(DECODERS["ssd"].decode(outputs, SsdParams(), options()), SSD_EXPECTED)
    # Classes 0/1 only still read as classes: the scores are the ones that are not integers.
    outputs = ssd_outputs(["a", "b", "c", "d"], order, classes=(1, 0, 1, 1, 0))
    got = DECODERS["ssd"].decode(outputs, SsdParams(), options())
    assert [(d.class_id, d.score) for d in got] == [(1, pytest.approx(0.9)), (0, pytest.approx(0.75))]


def test_ssd_ambiguous_classes_and_scores() -> None:
    outputs = ssd_outputs(["a", "b", "c", "d"], (0, 1, 2, 3), scores=(1.0, 1.0, 0.0, 1.0, 0.0))
    with pytest.raises(DecoderError, match="cannot tell the classes output from the scores"):
        DECODERS["ssd"].decode(outputs, SsdParams(), options())
    # Names with the ":1"/":2" convention but different ops do not count as telling.
    names = ["x:0", "x:1", "y:2", "x:3"]
    with pytest.raises(DecoderError, match="cannot tell"):
        DECODERS["ssd"].decode(
            ssd_outputs(names, (0, 1, 2, 3), scores=(1.0, 1.0, 0.0, 1.0, 0.0)), SsdParams(), options()
        )


def test_ssd_label_offset_count_and_range() -> None:
    # With label_offset 1, label 0 is the background and label 4 is past the 3 labels.
    outputs = ssd_outputs(
        SSD_NAMES["signature"],
        (0, 1, 2, 3),
        classes=(1, 3, 0, 4, 0),
        scores=(0.9, 0.75, 0.8, 0.85, 0.7),
        count=5,
    )
    got = DECODERS["ssd"].decode(outputs, SsdParams(label_offset=1), options())
    assert [(d.class_id, d.score) for d in got] == [(0, pytest.approx(0.9)), (2, pytest.approx(0.75))]
    # count 0 and count beyond N
    assert (
        DECODERS["ssd"].decode(ssd_outputs(SSD_NAMES["op"], (0, 1, 2, 3), count=0), SsdParams(), options())
        == []
    )
    got = DECODERS["ssd"].decode(ssd_outputs(SSD_NAMES["op"], (0, 1, 2, 3), count=99), SsdParams(), options())
    assert [d.score for d in got] == pytest.approx([0.95, 0.9, 0.75])


def test_ssd_threshold_and_max_detections_without_extra_nms() -> None:
    boxes = [[0.1, 0.1, 0.5, 0.5], [0.1, 0.1, 0.5, 0.52], [0.6, 0.6, 0.9, 0.9]]
    outputs = [
        OutputTensor("detection_boxes", np.array([boxes], dtype=np.float32)),
        OutputTensor("detection_scores", np.array([[0.6, 0.8, 0.5]], dtype=np.float32)),
        OutputTensor("detection_classes", np.array([[1, 1, 0]], dtype=np.float32)),
        OutputTensor("num_detections", np.array([3], dtype=np.float32)),
    ]
    got = DECODERS["ssd"].decode(outputs, SsdParams(), options())
    # The op already ran NMS: overlapping same-class boxes it kept stay; order is by score.
    assert [d.score for d in got] == pytest.approx([0.8, 0.6, 0.5])
    got = DECODERS["ssd"].decode(outputs, SsdParams(), options(max_detections=2, score_threshold=0.55))
    assert [d.score for d in got] == pytest.approx([0.8, 0.6])
    got = DECODERS["ssd"].decode(outputs, SsdParams(), options(score_threshold=0.7))
    assert_detections(got, [(1, 0.8, (0.1, 0.1, 0.52, 0.5))])


def test_ssd_single_detection_model() -> None:
    outputs = [
        OutputTensor("StatefulPartitionedCall:3", np.array([1], dtype=np.float32)),
        OutputTensor("StatefulPartitionedCall:1", np.array([[2]], dtype=np.float32)),
        OutputTensor("StatefulPartitionedCall:0", np.array([[[0.1, 0.2, 0.3, 0.4]]], dtype=np.float32)),
        OutputTensor("StatefulPartitionedCall:2", np.array([[0.5]], dtype=np.float32)),
    ]
    got = DECODERS["ssd"].decode(outputs, SsdParams(), options())
    assert_detections(got, [(2, 0.5, (0.2, 0.1, 0.4, 0.3))])


@pytest.mark.parametrize(
    ("shapes", "match"),
    [
        ([("a", (1, 10, 4)), ("b", (1, 10)), ("c", (1, 10))], "four outputs .* got 3"),
        ([("a", (1, 10, 5)), ("b", (1, 10)), ("c", (1, 10)), ("d", (1,))], "exactly one boxes output"),
        ([("a", (1, 10, 4)), ("b", (1, 10)), ("c", (1, 12)), ("d", (1,))], "with the same N"),
        ([("a", (1, 10, 4)), ("b", (1, 10)), ("c", (1, 10)), ("d", (1, 10))], "with the same N"),
    ],
)
def test_ssd_check_errors(shapes: Any, match: str) -> None:
    with pytest.raises(DecoderError, match=match):
        DECODERS["ssd"].check(shapes, SsdParams(), 3)


def test_ssd_check_accepts_shuffled_outputs() -> None:
    DECODERS["ssd"].check(
        [
            ("PartitionedCall:3", (1,)),
            ("PartitionedCall:2", (1, 10)),
            ("PartitionedCall:0", (1, 10, 4)),
            ("PartitionedCall:1", (1, 10)),
        ],
        SsdParams(),
        3,
    )


# ---------------------------------------------------------------- openvino-ssd


def detection_output(rows: Sequence[Sequence[float]]) -> np.ndarray:
    return np.array(rows, dtype=np.float32).reshape(1, 1, len(rows), 7)


OV_ROWS: List[List[float]] = [
    [0, 1, 0.9, 0.1, 0.2, 0.5, 0.6],
    [0, 3, 0.8, 0.12, 0.2, 0.5, 0.6],  # overlaps the first, other class: kept
    [0, 1, 0.7, 0.11, 0.21, 0.5, 0.6],  # overlaps the first, same class: suppressed by NMS
    [0, 0, 0.95, 0.0, 0.0, 0.3, 0.3],  # background with label_offset 1
    [0, 4, 0.95, 0.0, 0.0, 0.3, 0.3],  # beyond the 3 labels
    [0, 2, 0.3, 0.6, 0.6, 0.9, 0.9],  # below threshold
    [0, 2, 0.6, 0.6, 0.6, 1.2, 0.9],  # clipped
    [-1, 0, 0, 0, 0, 0, 0],  # ends the list
    [0, 1, 0.99, 0.0, 0.0, 0.2, 0.2],
]
OV_EXPECTED: List[Expected] = [
    (0, 0.9, (0.1, 0.2, 0.5, 0.6)),
    (2, 0.8, (0.12, 0.2, 0.5, 0.6)),
    (1, 0.6, (0.6, 0.6, 1.0, 0.9)),
]


def test_openvino_ssd() -> None:
    data = detection_output(OV_ROWS)
    got = DECODERS["openvino-ssd"].decode(
        [OutputTensor("detection_out", data)], OpenVinoSsdParams(label_offset=1), options()
    )
    assert_detections(got, OV_EXPECTED)
    got = DECODERS["openvino-ssd"].decode(
        [OutputTensor("detection_out", data)], OpenVinoSsdParams(label_offset=1), options(max_detections=2)
    )
    assert_detections(got, OV_EXPECTED[:2])
    # Without the offset label 0 is a class and label 3 is beyond the labels.
    got = DECODERS["openvino-ssd"].decode(
        [OutputTensor("detection_out", data)], OpenVinoSsdParams(), options()
    )
    assert [(d.class_id, round(d.score, 4)) for d in got] == [(0, 0.95), (1, 0.9), (2, 0.6)]


def test_openvino_ssd_without_terminator_and_empty() -> None:
    data = detection_output(OV_ROWS[:7])
    got = DECODERS["openvino-ssd"].decode(
        [OutputTensor("o", data)], OpenVinoSsdParams(label_offset=1), options()
    )
    assert_detections(got, OV_EXPECTED)
    data = detection_output([[-1.0, 0, 0, 0, 0, 0, 0], *OV_ROWS])
    assert DECODERS["openvino-ssd"].decode([OutputTensor("o", data)], OpenVinoSsdParams(), options()) == []


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_openvino_ssd_quantized(dtype: Any) -> None:
    data = detection_output(OV_ROWS)
    assert_quantized_same(
        DECODERS["openvino-ssd"].decode, data, OpenVinoSsdParams(label_offset=1), options(), dtype
    )


def test_openvino_ssd_check() -> None:
    DECODERS["openvino-ssd"].check([("detection_out", (1, 1, 200, 7))], OpenVinoSsdParams(), 3)
    with pytest.raises(DecoderError) as e:
        DECODERS["openvino-ssd"].check([("detection_out", (1, 200, 7))], OpenVinoSsdParams(), 3)
    assert str(e.value) == "openvino-ssd expects one DetectionOutput [1, 1, N, 7], got [1, 200, 7]"


# ---------------------------------------------------------------- registry and params


def test_registry() -> None:
    assert sorted(DECODERS) == ["openvino-ssd", "ssd", "yolov2", "yolov3", "yolov8"]
    for name, decoder in DECODERS.items():
        assert decoder.type == name
        assert get_decoder(name) is decoder


def test_unknown_decoder_type() -> None:
    with pytest.raises(DecoderError) as e:
        get_decoder("yolov5")
    assert (
        str(e.value)
        == "unknown decoder type 'yolov5'; known types: openvino-ssd, ssd, yolov2, yolov3, yolov8"
    )
    with pytest.raises(DecoderError, match="unknown decoder type 'nope'"):
        parse_params("nope", {})


@pytest.mark.parametrize(
    ("type_name", "params", "expected"),
    [
        ("ssd", None, SsdParams()),
        ("ssd", {"label_offset": 1}, SsdParams(label_offset=1)),
        ("yolov8", {}, Yolov8Params(boxes="pixels")),
        ("yolov8", {"boxes": "normalized"}, Yolov8Params(boxes="normalized")),
        ("yolov2", {"anchors": [[1, 2], [3.5, 4]]}, Yolov2Params(anchors=[[1.0, 2.0], [3.5, 4.0]])),
        (
            "yolov3",
            {"anchors": YOLOV3_ANCHORS, "masks": YOLOV3_MASKS},
            Yolov3Params(anchors=YOLOV3_ANCHORS, masks=YOLOV3_MASKS),
        ),
        ("openvino-ssd", {"label_offset": 1}, OpenVinoSsdParams(label_offset=1)),
    ],
)
def test_parse_params(type_name: str, params: Any, expected: Any) -> None:
    got = parse_params(type_name, params)
    assert type(got) is type(expected)
    assert got == expected


@pytest.mark.parametrize(
    ("type_name", "params", "message"),
    [
        (
            "yolov8",
            {"boxes": "meters"},
            r"^yolov8 decoder: param 'boxes': Input should be 'pixels' or 'normalized'",
        ),
        ("yolov8", {"box": "pixels"}, r"^yolov8 decoder: unknown param 'box' \(known: boxes\)$"),
        ("ssd", {"label_offset": "one"}, r"^ssd decoder: param 'label_offset': "),
        ("yolov2", {}, r"^yolov2 decoder: param 'anchors' is required$"),
        ("yolov2", {"anchors": []}, r"anchors must list at least one \[w, h\] pair"),
        ("yolov2", {"anchors": [[1, 2], [3]]}, r"anchors\[1\] must be \[w, h\] with two positive numbers"),
        ("yolov2", {"anchors": [[1, -2]]}, r"anchors\[0\] must be \[w, h\]"),
        ("yolov3", {"anchors": [[1, 2]]}, r"^yolov3 decoder: param 'masks' is required$"),
        (
            "yolov3",
            {"anchors": [[1, 2], [3, 4]], "masks": [[0, 1], [2]]},
            r"^yolov3 decoder: masks\[1\] = \[2\] names anchors \[2\] but only 0\.\.1 exist$",
        ),
        ("yolov3", {"anchors": [[1, 2]], "masks": [[0], []]}, r"masks must list, for each output"),
        ("yolov3", {"anchors": [[1, 2]], "masks": [["a"]]}, r"param 'masks\.0\.0'"),
        ("openvino-ssd", ["label_offset"], r"^openvino-ssd decoder params must be an object, got list$"),
    ],
)
def test_bad_params(type_name: str, params: Any, message: str) -> None:
    with pytest.raises(DecoderError, match=message):
        parse_params(type_name, params)


def _greedy_nms_reference(
    boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_detections: int
) -> List[int]:
    """Greedy NMS as written down, one box at a time (single class)."""
    keep: List[int] = []
    for i in sorted(range(len(scores)), key=lambda k: -scores[k]):  # sorted() is stable
        if len(keep) >= max_detections:
            break
        a = boxes[i]
        ok = True
        for j in keep:
            b = boxes[j]
            iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
            ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
            inter = iw * ih
            union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
            if union > 0 and inter / union > iou_threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("seed", range(6))
def test_nms_matrix_and_loop_paths_agree_with_greedy_nms(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Few candidates take the IoU-matrix path, many the loop: both are the greedy algorithm,
    tied scores kept in their order, and boxes of other classes never suppress each other."""
    from edge_agent.decoders import base

    rng = np.random.default_rng(seed)
    n = 150
    xy = rng.random((n, 2)) * 0.8
    boxes = np.concatenate([xy, xy + 0.05 + rng.random((n, 2)) * 0.2], axis=1).astype(np.float64)
    scores = np.round(rng.random(n), 2)  # ties on purpose
    classes = rng.integers(0, 3, n)
    for iou, most in ((0.5, 100), (0.3, 7), (0.9, 0)):
        matrix = base.nms(boxes, scores, classes, iou, most)
        monkeypatch.setattr(base, "NMS_MATRIX_MAX", 0)
        loop = base.nms(boxes, scores, classes, iou, most)
        monkeypatch.undo()
        assert matrix.tolist() == loop.tolist()
        # per class, the survivors are greedy NMS's within that class, best score first
        for c in range(3):
            idx = np.nonzero(classes == c)[0]
            expected = [int(idx[k]) for k in _greedy_nms_reference(boxes[idx], scores[idx], iou, len(idx))]
            got = [i for i in matrix.tolist() if classes[i] == c]
            assert got == expected[: len(got)]
        assert [scores[i] for i in matrix] == sorted((scores[i] for i in matrix), reverse=True)
        assert len(matrix) <= most
