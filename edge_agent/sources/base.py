"""The frame-source interface every capture module implements."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import numpy as np


@dataclass(frozen=True)
class GroundTruth:
    """A known object in a frame (the synthetic source knows them); box in pixels."""

    label: str
    class_id: int
    box: Tuple[float, float, float, float]  # xmin, ymin, xmax, ymax in pixels of the frame


@dataclass(frozen=True)
class Frame:
    """One captured image, always BGR uint8 HxWx3 (OpenCV's order), with its capture time."""

    image: np.ndarray
    index: int
    timestamp: float  # time.time() at capture
    source: str
    truth: Optional[List[GroundTruth]] = field(default=None)

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


class FrameSource(abc.ABC):
    """A camera or file that yields frames.

    ``read()`` returns the next frame, ``None`` when a finite source is exhausted, and raises
    ``SourceError`` when the device fails; after a failure ``open()`` may be called again.
    """

    spec: str

    @abc.abstractmethod
    def open(self) -> None: ...

    @abc.abstractmethod
    def read(self) -> Optional[Frame]: ...

    @abc.abstractmethod
    def close(self) -> None: ...

    @property
    def is_live(self) -> bool:
        """True for cameras and streams (frames go stale), False for files and synthetic."""
        return False

    def __enter__(self) -> FrameSource:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
