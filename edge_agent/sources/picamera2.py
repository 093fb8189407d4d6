"""The Raspberry Pi camera (libcamera) through ``picamera2``.

``picamera2`` is imported only by ``open()``, so this module imports anywhere. It comes from the
distribution, not PyPI: on Raspberry Pi OS ``sudo apt install python3-picamera2`` and a virtualenv
made with ``--system-site-packages``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, Optional

import numpy as np

from ..errors import SourceError
from .base import Frame, FrameSource

NOT_INSTALLED = (
    "picamera2 is not installed: on Raspberry Pi OS run `sudo apt install python3-picamera2` "
    "and create the virtualenv with --system-site-packages"
)


class Picamera2Source(FrameSource):
    """A libcamera camera (``picamera2`` spec); ``camera`` selects among several (default 0)."""

    def __init__(
        self,
        spec: str = "picamera2",
        width: int = 640,
        height: int = 480,
        fps: Optional[float] = None,
        camera: int = 0,
    ) -> None:
        self.spec = spec
        self.width = width
        self.height = height
        self.fps = fps
        self.camera = camera
        self._cam: Any = None
        self._index = 0

    @property
    def is_live(self) -> bool:
        return True

    def open(self) -> None:
        self.close()
        try:
            from picamera2 import Picamera2
        except ImportError as e:
            raise SourceError(NOT_INSTALLED) from e
        try:
            cameras = Picamera2.global_camera_info()
        except Exception as e:  # libcamera itself failed to start
            raise SourceError(f"cannot open picamera2: libcamera failed: {e}") from e
        if len(cameras) <= self.camera:
            raise SourceError(
                "cannot open picamera2: no camera attached"
                + (f" (found {len(cameras)}, wanted number {self.camera})" if cameras else "")
                + "; check the ribbon cable and `rpicam-hello --list-cameras`"
            )
        cam: Any = None
        try:
            cam = Picamera2(self.camera)
            controls: Dict[str, Any] = {}
            if self.fps:
                controls["FrameRate"] = float(self.fps)
            # libcamera names formats by the order of a 32-bit word, so "RGB888" is laid out
            # B, G, R in memory: numpy gets BGR arrays, exactly what Frame (OpenCV order) wants.
            config = cam.create_video_configuration(
                main={"size": (int(self.width), int(self.height)), "format": "RGB888"},
                controls=controls,
            )
            cam.configure(config)
            cam.start()
        except Exception as e:
            if cam is not None:
                _quietly_close(cam)
            raise SourceError(f"cannot open picamera2 camera {self.camera}: {e}") from e
        self._cam = cam

    def read(self) -> Optional[Frame]:
        if self._cam is None:
            raise SourceError(f"{self.spec}: read() before open()")
        try:
            array = self._cam.capture_array("main")
        except Exception as e:
            self.close()
            raise SourceError(f"picamera2 camera {self.camera} lost: {e}") from e
        image = np.ascontiguousarray(array[:, :, :3])  # drop padding/alpha if present
        frame = Frame(image=image, index=self._index, timestamp=time.time(), source=self.spec)
        self._index += 1
        return frame

    def close(self) -> None:
        cam, self._cam = self._cam, None
        if cam is not None:
            _quietly_close(cam)


def _quietly_close(cam: Any) -> None:
    for step in ("stop", "close"):
        with contextlib.suppress(Exception):  # best effort on a camera that is going away
            getattr(cam, step)()
