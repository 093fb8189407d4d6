"""Frame -> model input tensor, shared by every backend, and the way back for boxes.

One mechanism covers every input type: pixel value p (0..255) maps to the real value
``lo + p * (hi - lo) / 255`` (the manifest's ``input.range``), and a quantized input takes that
real value through its own scale and zero point. Both steps are a function of p alone, so they
are folded into a 256-entry lookup table computed once per model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

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

        def fx(v: float) -> float:
            return (v * self.input_width - self.pad_x) / self.scale_x / self.frame_width

        def fy(v: float) -> float:
            return (v * self.input_height - self.pad_y) / self.scale_y / self.frame_height

        return Box(fx(box.xmin), fy(box.ymin), fx(box.xmax), fy(box.ymax)).clipped()

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


def place(
    image: np.ndarray, width: int, height: int, resize: str, pad_value: int
) -> Tuple[np.ndarray, Transform]:
    """Resize ``image`` into ``width`` x ``height`` (letterbox or stretch)."""
    fh, fw = image.shape[:2]
    if resize == "stretch":
        out = (
            image
            if (fw, fh) == (width, height)
            else cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
        )
        return out, Transform(fw, fh, width, height, width / fw, height / fh, 0.0, 0.0)
    r = min(width / fw, height / fh)
    nw, nh = max(1, int(round(fw * r))), max(1, int(round(fh * r)))
    resized = image if (nw, nh) == (fw, fh) else cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    left, top = (width - nw) // 2, (height - nh) // 2
    if (nw, nh) == (width, height):
        out = resized
    else:
        out = cv2.copyMakeBorder(
            resized,
            top,
            height - nh - top,
            left,
            width - nw - left,
            cv2.BORDER_CONSTANT,
            value=(pad_value,) * 3,
        )
    # The exact per-axis scale (nw/fw, not r) keeps the round trip exact after rounding.
    return out, Transform(fw, fh, width, height, nw / fw, nh / fh, float(left), float(top))


class Preprocessor:
    """Built once per loaded model; ``__call__`` runs per frame."""

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

    def __call__(self, frame_bgr: np.ndarray) -> Tuple[np.ndarray, Transform]:
        placed, transform = place(frame_bgr, self.width, self.height, self.spec.resize, self.spec.pad_value)
        if self.tensor.takes_bgr_frame:
            return np.ascontiguousarray(placed[None]), transform
        if self.spec.color == "rgb":
            placed = cv2.cvtColor(placed, cv2.COLOR_BGR2RGB)
        values = self.lut[placed]  # fancy indexing: one table look-up per element
        if self.nchw:
            values = values.transpose(2, 0, 1)
        return np.ascontiguousarray(values[None]), transform
