"""Frame -> model input tensor, shared by every backend, and the way back for boxes.

One mechanism covers every input type: pixel value p (0..255) maps to the real value
``lo + p * (hi - lo) / 255`` (the manifest's ``input.range``), and a quantized input takes that
real value through its own scale and zero point. Both steps are a function of p alone, so they
are folded into a 256-entry lookup table computed once per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import cv2
import numpy as np

from .bundle.manifest import InputSpec
from .detection import Box
from .errors import BackendError


@dataclass(frozen=True)
class TensorSpec:
    """What a backend reports about one of its model's tensors, read from the model file."""

    name: str
    shape: Tuple[int, ...]
    dtype: np.dtype
    scale: Optional[float] = None
    zero_point: int = 0
    # The runtime does the model's own pre-processing (OpenVINO's PrePostProcessor): it takes
    # the placed frame as it is, BGR uint8 NHWC, and applies colour, range and layout itself.
    takes_bgr_frame: bool = False

    @property
    def quantized(self) -> bool:
        return self.scale is not None and self.scale != 0.0 and np.issubdtype(self.dtype, np.integer)

    @property
    def layout(self) -> str:
        """NHWC or NCHW, from where the 1- or 3-channel axis sits in a 4-D image input."""
        if len(self.shape) != 4:
            raise BackendError(f"input {self.name!r} has shape {list(self.shape)}, not a 4-D image tensor")
        c_last, c_first = self.shape[3], self.shape[1]
        if c_last in (1, 3) and c_first not in (1, 3):
            return "NHWC"
        if c_first in (1, 3) and c_last not in (1, 3):
            return "NCHW"
        if c_last == 3:
            return "NHWC"
        raise BackendError(
            f"input {self.name!r} shape {list(self.shape)}: cannot tell where the channels are"
        )

    @property
    def hw(self) -> Tuple[int, int]:
        if self.layout == "NHWC":
            return int(self.shape[1]), int(self.shape[2])
        return int(self.shape[2]), int(self.shape[3])

    @property
    def channels(self) -> int:
        return int(self.shape[3] if self.layout == "NHWC" else self.shape[1])


@dataclass(frozen=True)
class Transform:
    """How a frame was placed in the model input: input = frame * scale + pad (per axis, pixels)."""

    frame_width: int
    frame_height: int
    input_width: int
    input_height: int
    scale_x: float
    scale_y: float
    pad_x: float
    pad_y: float

    def to_frame(self, box: Box) -> Box:
        """A box normalised to the model input -> normalised to the original frame, clipped."""
        return Box(*self.xyxy_to_frame(box.xmin, box.ymin, box.xmax, box.ymax))

    def xyxy_to_frame(
        self, xmin: float, ymin: float, xmax: float, ymax: float
    ) -> Tuple[float, float, float, float]:
        """``to_frame`` on bare coordinates: the per-detection path, without intermediate boxes."""
        iw, px, sx, fw = self.input_width, self.pad_x, self.scale_x, self.frame_width
        ih, py, sy, fh = self.input_height, self.pad_y, self.scale_y, self.frame_height
        return (
            min(1.0, max(0.0, (xmin * iw - px) / sx / fw)),
            min(1.0, max(0.0, (ymin * ih - py) / sy / fh)),
            min(1.0, max(0.0, (xmax * iw - px) / sx / fw)),
            min(1.0, max(0.0, (ymax * ih - py) / sy / fh)),
        )

    def to_input(self, box: Box) -> Box:
        """The inverse of ``to_frame`` (without clipping): used by tests and by training code."""

        def fx(v: float) -> float:
            return (v * self.frame_width * self.scale_x + self.pad_x) / self.input_width

        def fy(v: float) -> float:
            return (v * self.frame_height * self.scale_y + self.pad_y) / self.input_height

        return Box(fx(box.xmin), fy(box.ymin), fx(box.xmax), fy(box.ymax))


def value_lut(spec: InputSpec, tensor: TensorSpec) -> np.ndarray:
    """The 256-entry table taking a pixel value to the tensor's element value."""
    lo, hi = spec.range
    real = lo + np.arange(256, dtype=np.float64) * (hi - lo) / 255.0
    if tensor.quantized:
        assert tensor.scale is not None
        info = np.iinfo(tensor.dtype)
        q = np.round(real / tensor.scale + tensor.zero_point)
        return np.clip(q, info.min, info.max).astype(tensor.dtype)
    if np.issubdtype(tensor.dtype, np.integer):
        # An integer input without quantization parameters takes the real values as they are.
        info = np.iinfo(tensor.dtype)
        return np.clip(np.round(real), info.min, info.max).astype(tensor.dtype)
    return real.astype(tensor.dtype)


@dataclass(frozen=True)
class _Geometry:
    """Where a frame of one size lands in the model input: computed once per frame size."""

    width: int  # the resized frame
    height: int
    left: int  # its offset in the input
    top: int
    transform: Transform


def _geometry(fw: int, fh: int, width: int, height: int, resize: str) -> _Geometry:
    if resize == "stretch":
        return _Geometry(
            width, height, 0, 0, Transform(fw, fh, width, height, width / fw, height / fh, 0.0, 0.0)
        )
    r = min(width / fw, height / fh)
    nw, nh = max(1, int(round(fw * r))), max(1, int(round(fh * r)))
    left, top = (width - nw) // 2, (height - nh) // 2
    # The exact per-axis scale (nw/fw, not r) keeps the round trip exact after rounding.
    return _Geometry(
        nw, nh, left, top, Transform(fw, fh, width, height, nw / fw, nh / fh, float(left), float(top))
    )


def _resize_into(image: np.ndarray, out: np.ndarray) -> None:
    """``image`` resized to fill ``out`` (a view), written in place."""
    h, w = out.shape[:2]
    if image.shape[:2] == (h, w):
        np.copyto(out, image)
        return
    _into(cv2.resize(image, (w, h), dst=out, interpolation=cv2.INTER_LINEAR), out)


def _canvas(
    image: np.ndarray, g: _Geometry, width: int, height: int, pad_value: int, dtype: np.dtype
) -> np.ndarray:
    """A new ``[1, height, width, C]`` array of ``pad_value`` with ``image`` resized into its place."""
    out = np.full((1, height, width) + image.shape[2:], pad_value, dtype)
    _resize_into(image, out[0, g.top : g.top + g.height, g.left : g.left + g.width])
    return out


def place(
    image: np.ndarray, width: int, height: int, resize: str, pad_value: int
) -> Tuple[np.ndarray, Transform]:
    """Resize ``image`` into ``width`` x ``height`` (letterbox or stretch), in a new array."""
    fh, fw = image.shape[:2]
    g = _geometry(fw, fh, width, height, resize)
    if (g.width, g.height) == (width, height) and (fw, fh) == (width, height):
        return image, g.transform
    return _canvas(image, g, width, height, pad_value, image.dtype)[0], g.transform


def _into(done: np.ndarray, out: np.ndarray) -> None:
    """Make sure an OpenCV result asked for in ``out`` is there (OpenCV allocates anew when
    ``out`` does not fit, rather than fail)."""
    if not np.shares_memory(done, out):
        np.copyto(out, done)


class Preprocessor:
    """Built once per loaded model; ``__call__`` runs per frame.

    Per frame the work is OpenCV's, which releases the GIL while it runs: the frame is resized
    straight into the letterboxed input, and the value table runs as ``cv2.LUT`` (a quarter of
    the time numpy's fancy indexing takes). Every call returns new arrays, which the caller may
    keep as long as it likes (reusing buffers across calls saved under 10 % of this, measured,
    not worth a tensor that changes under a request still in flight).
    """

    def __init__(self, spec: InputSpec, tensor: TensorSpec):
        self.spec = spec
        self.tensor = tensor
        self.height, self.width = tensor.hw
        if (self.width, self.height) != (spec.width, spec.height):
            raise BackendError(
                f"the model's input is {self.width}x{self.height} but the manifest says "
                f"input {spec.width}x{spec.height}"
            )
        if tensor.channels != 3:
            raise BackendError(f"the model's input has {tensor.channels} channels; colour models need 3")
        self.lut = value_lut(spec, tensor)
        self.nchw = tensor.layout == "NCHW"
        # A uint8 input taking pixels as they are (range 0..1 at scale 1/255, or 0..255) needs
        # no table: the placed frame (colour-converted) is the tensor.
        self._identity = self.lut.dtype == np.uint8 and bool(np.array_equal(self.lut, np.arange(256)))
        self._rgb = spec.color == "rgb" and not tensor.takes_bgr_frame
        self._table = self.lut.reshape(1, 256)
        self._geometries: Dict[Tuple[int, int], _Geometry] = {}

    def _geometry(self, fw: int, fh: int) -> _Geometry:
        g = self._geometries.get((fw, fh))
        if g is None:
            g = self._geometries[(fw, fh)] = _geometry(fw, fh, self.width, self.height, self.spec.resize)
        return g

    def __call__(self, frame_bgr: np.ndarray) -> Tuple[np.ndarray, Transform]:
        fh, fw = frame_bgr.shape[:2]
        g = self._geometry(fw, fh)
        h, w = self.height, self.width
        placed = _canvas(frame_bgr, g, w, h, self.spec.pad_value, np.dtype(np.uint8))
        if self.tensor.takes_bgr_frame or (self._identity and not self._rgb and not self.nchw):
            return placed, g.transform
        if self._identity and not self.nchw:  # only the colour order changes
            out = np.empty((1, h, w, 3), np.uint8)
            _into(cv2.cvtColor(placed[0], cv2.COLOR_BGR2RGB, dst=out[0]), out[0])
            return out, g.transform
        src = cv2.cvtColor(placed[0], cv2.COLOR_BGR2RGB) if self._rgb else placed[0]
        if self.nchw:
            out = np.empty((1, 3, h, w), self.lut.dtype)
            np.copyto(out[0], cv2.LUT(src, self._table).transpose(2, 0, 1))
        else:
            out = np.empty((1, h, w, 3), self.lut.dtype)
            _into(cv2.LUT(src, self._table, dst=out[0]), out[0])
        return out, g.transform
