"""Frame sources: cameras, streams, files, image folders and the synthetic demo camera."""

from __future__ import annotations

from typing import Optional

from ..errors import SourceError
from .base import Frame, FrameSource, GroundTruth
from .images import ImagesSource
from .opencv_capture import STREAM_PREFIXES, OpenCVSource
from .picamera2 import Picamera2Source
from .synthetic import SHAPE_LABELS, SceneGenerator, SyntheticSource

ACCEPTED_FORMS = (
    "picamera2",
    "usb:N",
    "/dev/videoN",
    "rtsp://…",
    "http://… or https://…",
    "file:PATH",
    "images:GLOB",
    "synthetic[:SEED]",
)

__all__ = [
    "ACCEPTED_FORMS",
    "SHAPE_LABELS",
    "Frame",
    "FrameSource",
    "GroundTruth",
    "ImagesSource",
    "OpenCVSource",
    "Picamera2Source",
    "SceneGenerator",
    "SyntheticSource",
    "open_source",
]


def open_source(spec: str, width: int = 640, height: int = 480, fps: Optional[float] = None) -> FrameSource:
    """The source a ``camera.source`` string names, constructed but not opened.

    Raises ``SourceError`` for a spec that is not one of ``ACCEPTED_FORMS`` (or is malformed).
    """
    s = spec.strip()
    if s == "picamera2":
        return Picamera2Source(s, width, height, fps)
    if s.startswith(("usb:", "/dev/", "file:")) or s.startswith(STREAM_PREFIXES):
        return OpenCVSource(s, width, height, fps)
    if s.startswith("images:"):
        return ImagesSource(s)
    if s == "synthetic" or s.startswith("synthetic:"):
        return SyntheticSource(s, width, height, fps=fps)
    raise SourceError(f"unknown camera source {spec!r}; accepted: {', '.join(ACCEPTED_FORMS)}")
