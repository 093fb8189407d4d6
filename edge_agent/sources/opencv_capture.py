"""Cameras, streams and video files through ``cv2.VideoCapture``.

Specs: ``usb:N`` and ``/dev/videoN`` (V4L2), ``rtsp://…``/``rtsps://…`` and ``http(s)://…``
(FFmpeg), ``file:PATH`` (FFmpeg). Devices and streams are live: a failed grab raises ``SourceError``
("camera lost") and releases the capture so the caller can ``open()`` again. A file returns
``None`` at its end.
"""

from __future__ import annotations

import os
import sys
import time
from typing import List, Optional, Union

import cv2
import numpy as np

from ..errors import SourceError
from .base import Frame, FrameSource

STREAM_PREFIXES = ("rtsp://", "rtsps://", "http://", "https://")
_RTSP_DEFAULT_OPTIONS = "rtsp_transport;tcp"
_STREAM_TIMEOUT_MS = 10000


class OpenCVSource(FrameSource):
    """``usb:N``, ``/dev/videoN``, ``rtsp://…``, ``http(s)://…`` or ``file:PATH``.

    ``width``, ``height`` and ``fps`` are requested from devices (the driver may pick the nearest
    mode it has); streams and files deliver their own size. Frames are BGR uint8 HxWx3.
    ``Frame.index`` counts the frames this object has delivered, across reopens.
    """

    def __init__(self, spec: str, width: int = 640, height: int = 480, fps: Optional[float] = None) -> None:
        self.spec = spec
        self.width = width
        self.height = height
        self.fps = fps
        self._cap: Optional[cv2.VideoCapture] = None
        self._index = 0
        self._target: Union[int, str]
        self._device: Optional[str] = None  # the /dev node of a V4L2 device
        if spec.startswith("usb:"):
            num = spec[4:]
            if not num.isdigit():
                raise SourceError(f"bad camera source {spec!r}: expected usb:N with N a device number")
            self._kind = "device"
            self._target = int(num)
            self._device = f"/dev/video{int(num)}"
        elif spec.startswith("/dev/"):
            self._kind = "device"
            self._target = spec
            self._device = spec
        elif spec.startswith(STREAM_PREFIXES):
            self._kind = "stream"
            self._target = spec
        elif spec.startswith("file:"):
            path = spec[5:]
            if not path:
                raise SourceError(f"bad camera source {spec!r}: expected file:PATH")
            self._kind = "file"
            self._target = os.path.expanduser(path)
        else:
            raise SourceError(
                f"bad camera source {spec!r} for OpenCV: "
                "expected usb:N, /dev/videoN, rtsp://…, http(s)://… or file:PATH"
            )

    @property
    def is_live(self) -> bool:
        return self._kind != "file"

    def _new_capture(self, target: Union[int, str], api: int, params: List[int]) -> cv2.VideoCapture:
        """The one place a capture is created (tests substitute it)."""
        if params:
            try:
                return cv2.VideoCapture(target, api, params)
            except (TypeError, cv2.error):  # OpenCV older than 4.5.2 takes no open parameters
                pass
        return cv2.VideoCapture(target, api)

    def open(self) -> None:
        self.close()
        params: List[int] = []
        if self._kind == "file":
            path = str(self._target)
            if not os.path.isfile(path):
                raise SourceError(f"file not found: {path}")
            api = cv2.CAP_FFMPEG
        elif self._kind == "device":
            # V4L2 is Linux's; elsewhere (a developer's laptop) let OpenCV pick.
            api = cv2.CAP_V4L2 if sys.platform.startswith("linux") else cv2.CAP_ANY
            if api == cv2.CAP_V4L2 and self._device is not None:
                if not os.path.exists(self._device):
                    raise SourceError(f"cannot open {self._name()}: no such device")
                if not os.access(self._device, os.R_OK | os.W_OK):
                    raise SourceError(
                        f"cannot open {self._name()}: permission denied (add the user to the 'video' group)"
                    )
        else:
            api = cv2.CAP_FFMPEG
            if self.spec.startswith(("rtsp://", "rtsps://")):
                # FFmpeg reads its options from this variable when the capture opens; keep any the
                # operator set, otherwise prefer TCP (UDP loses packets and smears frames).
                os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", _RTSP_DEFAULT_OPTIONS)
            for name in ("CAP_PROP_OPEN_TIMEOUT_MSEC", "CAP_PROP_READ_TIMEOUT_MSEC"):
                prop = getattr(cv2, name, None)
                if prop is not None:
                    params += [int(prop), _STREAM_TIMEOUT_MS]
        try:
            cap = self._new_capture(self._target, api, params)
        except cv2.error as e:
            raise SourceError(f"cannot open {self._name()}: {e}") from e
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"cannot open {self._name()}: {self._open_failure()}")
        if self._kind == "device":
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, float(self.width))
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, float(self.height))
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, float(self.fps))
        if self._kind != "file":
            # Keep the driver's queue short so a slow consumer sees recent frames (some backends
            # ignore this).
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1.0)
        self._cap = cap

    def _name(self) -> str:
        if self._kind == "file":
            return str(self._target)
        if self.spec.startswith("usb:") and self._device is not None:
            return f"{self.spec} ({self._device})"
        return self.spec

    def _open_failure(self) -> str:
        if self._kind == "device":
            return "the device exists but does not deliver video (busy, or not a capture node)"
        if self._kind == "file":
            return "not a video OpenCV can decode"
        return "the stream did not answer or could not be decoded (check the URL, credentials and network)"

    def read(self) -> Optional[Frame]:
        cap = self._cap
        if cap is None:
            raise SourceError(f"{self.spec}: read() before open()")
        try:
            ok, image = cap.read()
        except cv2.error as e:
            ok, image = False, None
            if not self.is_live:
                raise SourceError(f"{self._name()}: cannot decode frame: {e}") from e
        if not ok or image is None:
            if not self.is_live:
                return None
            self.close()
            raise SourceError(f"{self._name()}: camera lost (no frame delivered); reopen to retry")
        frame = Frame(
            image=_as_bgr(image), index=self._index, timestamp=time.time(), source=self.spec, truth=None
        )
        self._index += 1
        return frame

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


def _as_bgr(image: np.ndarray) -> np.ndarray:
    """Any grey or BGRA frame as BGR uint8 HxWx3."""
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image
