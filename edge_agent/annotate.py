"""Snapshots: a frame with its detections drawn on it, as the live view and ``P/D/snapshot`` show."""

from __future__ import annotations

import colorsys
from typing import Optional, Sequence, Tuple

import cv2
import numpy as np

from .messages import DetectionOut

Color = Tuple[int, int, int]

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_GOLDEN = 0.6180339887498949  # hue step between class ids: neighbouring ids get distant colours
# OpenCV's Hershey fonts draw ASCII only; the usual typographic characters get an ASCII stand-in.
_ASCII_STAND_INS = str.maketrans({"·": "|", "•": "|", "–": "-", "—": "-", "…": "...", "µ": "u"})


def class_color(class_id: int) -> Color:
    """A bright BGR colour that is the same for a class id in every frame and every process."""
    hue = (0.1 + class_id * _GOLDEN) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(b * 255), int(g * 255), int(r * 255)


def _ascii(text: str) -> str:
    return text.translate(_ASCII_STAND_INS).encode("ascii", "replace").decode("ascii")


def _text_color(background: Color) -> Color:
    """Black on light backgrounds, white on dark ones (luma of the BGR colour)."""
    b, g, r = background
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


def _label(
    image: np.ndarray, text: str, x: int, y: int, background: Color, scale: float, thickness: int
) -> None:
    """``text`` on a filled box whose top-left corner is (x, y), kept inside the image."""
    height, width = image.shape[:2]
    (tw, th), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    pad = max(2, thickness + 1)
    box_w, box_h = tw + 2 * pad, th + baseline + 2 * pad
    x = min(max(0, x), max(0, width - box_w))
    y = min(max(0, y), max(0, height - box_h))
    cv2.rectangle(image, (x, y), (x + box_w, y + box_h), background, -1)
    origin = (x + pad, y + pad + th)
    cv2.putText(image, text, origin, _FONT, scale, _text_color(background), thickness, cv2.LINE_AA)


def draw_detections(
    image_bgr: np.ndarray, detections: Sequence[DetectionOut], caption: Optional[str] = None
) -> np.ndarray:
    """A copy of the frame with each detection's box and "label score", in its class's colour,
    and ``caption`` (e.g. "shapes 1.1.0 · tflite · 14.8 fps") in the top-left corner.

    Boxes are normalised to the frame (0..1), as in ``DetectionMessage``. A grey frame comes
    back as BGR."""
    if image_bgr.ndim == 2:
        canvas = cv2.cvtColor(image_bgr, cv2.COLOR_GRAY2BGR)
    elif image_bgr.ndim == 3 and image_bgr.shape[2] == 3:
        canvas = image_bgr.copy()
    else:
        raise ValueError(f"expected a BGR or grey image, got an array of shape {image_bgr.shape}")
    height, width = canvas.shape[:2]
    # Line width and text size follow the frame size so a 320 px and a 1920 px frame look alike.
    unit = max(1.0, min(width, height) / 480.0)
    thickness = max(1, int(round(2 * unit)))
    scale = 0.5 * unit
    text_thickness = max(1, int(round(unit)))
    for det in detections:
        color = class_color(det.class_id)
        x0 = int(round(min(max(det.box.xmin, 0.0), 1.0) * (width - 1)))
        y0 = int(round(min(max(det.box.ymin, 0.0), 1.0) * (height - 1)))
        x1 = int(round(min(max(det.box.xmax, 0.0), 1.0) * (width - 1)))
        y1 = int(round(min(max(det.box.ymax, 0.0), 1.0) * (height - 1)))
        cv2.rectangle(canvas, (x0, y0), (x1, y1), color, thickness, cv2.LINE_AA)
        text = _ascii(f"{det.label} {det.score:.2f}")
        (_, th), baseline = cv2.getTextSize(text, _FONT, scale, text_thickness)
        label_h = th + baseline + 2 * max(2, text_thickness + 1)
        # Above the box when there is room, else just inside its top edge.
        label_y = y0 - label_h if y0 - label_h >= 0 else y0
        _label(canvas, text, x0, label_y, color, scale, text_thickness)
    if caption:
        _label(canvas, _ascii(caption), 0, 0, (32, 32, 32), scale, text_thickness)
    return canvas


def encode_jpeg(image_bgr: np.ndarray, quality: int = 80) -> bytes:
    """JPEG bytes of a BGR (or grey) image; ``quality`` 0..100."""
    if not 0 <= quality <= 100:
        raise ValueError(f"JPEG quality must be 0..100, got {quality}")
    ok, buf = cv2.imencode(".jpg", image_bgr, [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise ValueError(f"OpenCV could not encode an image of shape {image_bgr.shape} as JPEG")
    return bytes(buf.tobytes())
