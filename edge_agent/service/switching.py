"""Which detector serves. Every change goes through here, one at a time, and switches between
two frames (``Pipeline.swap``): a deploy or rollback (which keeps the replaced detector until
the change is final, so it can be put back), or a reload after the accelerator failed."""

from __future__ import annotations

import logging
import threading
from typing import Any, Optional

from ..backends.base import Backend
from ..detector import Detector
from .pipeline import Pipeline

log = logging.getLogger(__name__)


def close_detector(detector: Any) -> None:
    """Release a detector's backend (best effort: it is out of service anyway)."""
    backend: Optional[Backend] = getattr(detector, "backend", None)
    if backend is not None:
        try:
            backend.close()
        except Exception as e:
            log.debug("closing %s: %s", backend.name, e)


class DetectorSwitch:
    def __init__(self, pipeline: Pipeline, timeout_s: float):
        self.pipeline = pipeline
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._replaced: Optional[Detector] = None

    @property
    def serving(self) -> Optional[Detector]:
        return self.pipeline.detector

    def activate(self, detector: Detector) -> None:
        """Serve ``detector`` from the next frame on; the replaced one is kept for ``revert``."""
        with self._lock:
            self._replaced = self.pipeline.swap(detector, timeout=self.timeout_s)

    def commit(self) -> None:
        """The change is final (recorded on disk): release the replaced detector."""
        replaced, self._replaced = self._replaced, None
        if replaced is not None:
            close_detector(replaced)

    def revert(self, old: Optional[Detector]) -> None:
        """A change failed after the switch (e.g. the store could not record it): serve ``old``
        again, so what serves is what the store calls current."""
        with self._lock:
            self._replaced = None
            if old is None or self.pipeline.detector is old:
                return
            new = self.pipeline.swap(old, timeout=self.timeout_s)
        if new is not None:
            close_detector(new)

    def replace(self, failing: Detector, fresh: Detector) -> bool:
        """Swap ``fresh`` in for ``failing`` if that still serves (a deploy may have replaced it
        meanwhile: then ``fresh`` is closed); the failing one is closed."""
        with self._lock:
            if self.pipeline.detector is not failing:
                close_detector(fresh)
                return False
            old = self.pipeline.swap(fresh, timeout=self.timeout_s)
        if old is not None:
            close_detector(old)
        return True
