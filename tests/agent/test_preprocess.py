from __future__ import annotations

import numpy as np
import pytest

from edge_agent.bundle.manifest import InputSpec
from edge_agent.detection import Box
from edge_agent.errors import BackendError
from edge_agent.preprocess import Preprocessor, TensorSpec, place, value_lut


def spec(**kw: object) -> InputSpec:
    base = {"width": 160, "height": 160}
    base.update(kw)
    return InputSpec(**base)  # type: ignore[arg-type]


def bbox_of(mask: np.ndarray) -> tuple:
    ys, xs = np.nonzero(mask)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
@pytest.mark.parametrize(
    ("frame", "model"),
    [
        ((640, 480), (160, 160)),
        ((480, 640), (320, 320)),
        ((1920, 1080), (300, 300)),
        ((100, 333), (224, 160)),
    ],
)
def test_known_box_survives_round_trip(resize: str, frame: tuple, model: tuple) -> None:
    fw, fh = frame
    mw, mh = model
    image = np.zeros((fh, fw, 3), np.uint8)
    x0, y0, x1, y1 = int(fw * 0.31), int(fh * 0.22), int(fw * 0.77), int(fh * 0.64)
    image[y0:y1, x0:x1] = 255
    placed, transform = place(image, mw, mh, resize, 0)
    assert placed.shape == (mh, mw, 3)
    # Find the box as the model sees it, then map it back the way the detector does.
    bx0, by0, bx1, by1 = bbox_of(placed[..., 0] > 127)
    back = transform.to_frame(Box(bx0 / mw, by0 / mh, bx1 / mw, by1 / mh))
    # Within one pixel of the model input (what the model can resolve), in frame pixels.
    tx, ty = max(1.0, 1 / transform.scale_x), max(1.0, 1 / transform.scale_y)
    assert abs(back.xmin * fw - x0) <= tx
    assert abs(back.ymin * fh - y0) <= ty
    assert abs(back.xmax * fw - x1) <= tx
    assert abs(back.ymax * fh - y1) <= ty


def test_letterbox_centres_and_pads() -> None:
    image = np.full((100, 200, 3), 7, np.uint8)
    placed, t = place(image, 100, 100, "letterbox", 114)
    assert t.pad_x == 0 and t.pad_y == 25
    assert (placed[:25] == 114).all() and (placed[75:] == 114).all() and (placed[25:75] == 7).all()


def test_to_input_inverts_to_frame() -> None:
    _, t = place(np.zeros((480, 640, 3), np.uint8), 320, 320, "letterbox", 114)
    b = Box(0.1, 0.2, 0.6, 0.9)
    back = t.to_frame(t.to_input(b))
    assert np.allclose([back.xmin, back.ymin, back.xmax, back.ymax], [0.1, 0.2, 0.6, 0.9], atol=1e-9)


@pytest.mark.parametrize(
    ("rng", "dtype", "scale", "zp", "expect"),
    [
        ((0, 1), np.float32, None, 0, lambda p: p / 255.0),
        ((-1, 1), np.float32, None, 0, lambda p: p / 127.5 - 1),
        ((0, 255), np.float32, None, 0, lambda p: p.astype(np.float64)),
        ((0, 1), np.float16, None, 0, lambda p: p / 255.0),
        ((0, 1), np.uint8, 1 / 255, 0, lambda p: p),
        ((0, 1), np.int8, 1 / 255, -128, lambda p: p - 128),
        ((-1, 1), np.int8, 1 / 128, 0, lambda p: np.clip(np.round((p / 127.5 - 1) * 128), -128, 127)),
        ((0, 255), np.uint8, None, 0, lambda p: p),
    ],
)
def test_value_lut(rng: tuple, dtype: type, scale: float, zp: int, expect: object) -> None:
    lut = value_lut(spec(range=rng), TensorSpec("x", (1, 8, 8, 3), np.dtype(dtype), scale, zp))
    assert lut.dtype == np.dtype(dtype)
    p = np.arange(256)
    assert np.allclose(lut.astype(np.float64), expect(p), atol=1e-3 if dtype == np.float16 else 1e-6)  # type: ignore[operator]


def test_preprocessor_layout_and_colour() -> None:
    frame = np.zeros((10, 10, 3), np.uint8)
    frame[..., 0] = 10  # B
    frame[..., 2] = 200  # R
    nhwc = Preprocessor(
        spec(width=10, height=10, color="rgb", range=(0, 255)),
        TensorSpec("x", (1, 10, 10, 3), np.dtype(np.uint8)),
    )
    t, _ = nhwc(frame)
    assert t.shape == (1, 10, 10, 3) and t[0, 0, 0, 0] == 200 and t[0, 0, 0, 2] == 10
    nchw = Preprocessor(
        spec(width=10, height=10, color="bgr", range=(0, 255)),
        TensorSpec("x", (1, 3, 10, 10), np.dtype(np.float32)),
    )
    t, _ = nchw(frame)
    assert t.shape == (1, 3, 10, 10) and t.dtype == np.float32
    assert t[0, 0, 0, 0] == 10 and t[0, 2, 0, 0] == 200
    assert t.flags["C_CONTIGUOUS"]


def test_preprocessor_refuses_size_mismatch() -> None:
    with pytest.raises(BackendError, match="input is 320x320 but the manifest says input 160x160"):
        Preprocessor(spec(), TensorSpec("x", (1, 320, 320, 3), np.dtype(np.float32)))


def test_layout_ambiguity_is_an_error() -> None:
    with pytest.raises(BackendError, match="cannot tell where the channels are"):
        _ = TensorSpec("x", (1, 4, 8, 4), np.dtype(np.float32)).layout


def reference_tensor(p: Preprocessor, frame: np.ndarray) -> np.ndarray:
    """The plain numpy way: place, colour, table look-up per element, layout."""
    placed, _ = place(frame, p.width, p.height, p.spec.resize, p.spec.pad_value)
    if p.spec.color == "rgb" and not p.tensor.takes_bgr_frame:
        placed = placed[..., ::-1]
    values = placed if p.tensor.takes_bgr_frame else p.lut[placed]
    if p.nchw:
        values = values.transpose(2, 0, 1)
    return values[None]


@pytest.mark.parametrize(
    ("shape", "dtype", "scale", "zp", "rng", "color"),
    [
        ((1, 96, 128, 3), np.uint8, 1 / 255, 0, (0, 1), "rgb"),  # the table is the identity
        ((1, 96, 128, 3), np.uint8, 1 / 255, 0, (0, 1), "bgr"),
        ((1, 96, 128, 3), np.int8, 1 / 255, -128, (0, 1), "rgb"),
        ((1, 96, 128, 3), np.float32, None, 0, (-1, 1), "rgb"),
        ((1, 96, 128, 3), np.float16, None, 0, (0, 1), "bgr"),
        ((1, 3, 96, 128), np.float32, None, 0, (0, 1), "rgb"),
    ],
)
@pytest.mark.parametrize("resize", ["letterbox", "stretch"])
def test_preprocessor_matches_the_plain_numpy_way_and_returns_new_arrays(
    shape: tuple, dtype: type, scale: float, zp: int, rng: tuple, color: str, resize: str
) -> None:
    p = Preprocessor(
        spec(width=128, height=96, color=color, range=rng, resize=resize, pad_value=114),
        TensorSpec("x", shape, np.dtype(dtype), scale, zp),
    )
    frames = np.random.default_rng(3).integers(0, 256, (5, 480, 640, 3), dtype=np.uint8)
    other = np.random.default_rng(4).integers(0, 256, (333, 100, 3), dtype=np.uint8)
    kept = []
    for frame in [frames[0], frames[1], other, frames[2], other[:96, :128], frames[3]]:  # sizes change
        tensor, transform = p(frame)
        expected = reference_tensor(p, frame)
        assert tensor.dtype == expected.dtype and tensor.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(tensor, expected)
        assert transform == place(frame, 128, 96, resize, 114)[1]
        kept.append((tensor, expected))
    # A tensor handed out earlier (one a runtime may still read) is never written again.
    for tensor, expected in kept:
        np.testing.assert_array_equal(tensor, expected)


def test_xyxy_to_frame_undoes_the_placement_and_clips() -> None:
    _, t = place(np.zeros((480, 640, 3), np.uint8), 320, 320, "letterbox", 114)
    assert (t.pad_x, t.pad_y, t.scale_x) == (0.0, 40.0, 0.5)
    # x: v * 320 / 0.5 / 640 = v; y: (v * 320 - 40) / 0.5 / 480
    assert t.xyxy_to_frame(0.25, 0.125, 0.5, 0.875) == (0.25, 0.0, 0.5, 1.0)
    assert t.xyxy_to_frame(-0.5, 0.25, 1.5, 0.5) == (0.0, (80 - 40) / 0.5 / 480, 1.0, (160 - 40) / 0.5 / 480)
    b = t.to_frame(Box(0.1, 0.2, 0.6, 0.9))
    assert (b.xmin, b.ymin, b.xmax, b.ymax) == t.xyxy_to_frame(0.1, 0.2, 0.6, 0.9)
