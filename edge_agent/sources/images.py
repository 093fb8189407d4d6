"""``images:GLOB``: still images read in sorted order, e.g. ``images:~/shots/**/*.jpg``."""

from __future__ import annotations

import glob
import os
import time
from typing import List, Optional

import cv2

from ..errors import SourceError
from .base import Frame, FrameSource


class ImagesSource(FrameSource):
    """The files matching a glob (``~`` expanded, ``**`` recursive), sorted by path.

    ``read()`` returns ``None`` after the last file unless ``loop``. An unreadable file raises
    ``SourceError`` naming it; the next ``read()`` goes on with the following file. ``open()``
    globs again and starts over.
    """

    def __init__(self, spec: str, loop: bool = False) -> None:
        self.spec = spec
        self.pattern = spec[len("images:") :] if spec.startswith("images:") else spec
        if not self.pattern:
            raise SourceError(f"bad camera source {spec!r}: expected images:GLOB")
        self.loop = loop
        self._paths: Optional[List[str]] = None
        self._pos = 0
        self._index = 0

    def open(self) -> None:
        pattern = os.path.expanduser(self.pattern)
        paths = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
        if not paths:
            raise SourceError(f"no files match {self.pattern}")
        self._paths = paths
        self._pos = 0
        self._index = 0

    @property
    def paths(self) -> List[str]:
        """The files found by the last ``open()``."""
        return list(self._paths or [])

    def read(self) -> Optional[Frame]:
        if self._paths is None:
            raise SourceError(f"{self.spec}: read() before open()")
        if self._pos >= len(self._paths):
            if not self.loop:
                return None
            self._pos = 0
        path = self._paths[self._pos]
        self._pos += 1
        image = cv2.imread(path, cv2.IMREAD_COLOR)
        if image is None:
            raise SourceError(f"cannot read image {path} (missing, or not an image OpenCV can decode)")
        frame = Frame(image=image, index=self._index, timestamp=time.time(), source=self.spec)
        self._index += 1
        return frame

    def close(self) -> None:
        self._paths = None
