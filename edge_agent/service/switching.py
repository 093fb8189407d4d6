"""Which detector serves. Every change goes through here, one at a time, and switches between
two frames (``Pipeline.swap``): a deploy or rollback (which keeps the replaced detector until
the change is final, so it can be put back), or a reload after the accelerator failed."""

from __future__ import annotations

import logging
import threading
import time
from typing import Optional

from ..detector import Detector
from ..errors import EdgewatchError
from .pipeline import Pipeline

log = logging.getLogger(__name__)


class DetectorSwitch:
    def __init__(self, pipeline: Pipeline, timeout_s: float):
        self.pipeline = pipeline
        self.timeout_s = timeout_s  # for switches back (revert, replace)
        self._lock = threading.Lock()
        self._replaced: Optional[Detector] = None

    @property
    def serving(self) -> Optional[Detector]:
        return self.pipeline.detector

    def activate(self, detector: Detector, timeout_s: float) -> None:
        """Serve ``detector`` from the next frame on; the replaced one is kept for ``revert``.
        Raises, having switched nothing, when no frame boundary comes within ``timeout_s`` (the
        one deadline: waiting for a reload's ``replace`` to let go of the switch counts in it)."""
        deadline = time.monotonic() + timeout_s
        if not self._lock.acquire(timeout=timeout_s):
            raise EdgewatchError(f"another switch held the pipeline for {timeout_s:g} s")
        try:
            self._replaced = self.pipeline.swap(detector, timeout=max(0.0, deadline - time.monotonic()))
        finally:
            self._lock.release()

    def commit(self) -> None:
        """The change is final (recorded on disk): release the replaced detector."""
        replaced, self._replaced = self._replaced, None
        if replaced is not None:
            replaced.close()

    def revert(self) -> None:
        """A change failed after the switch (the store could not record it): serve the detector
        ``activate`` replaced again, so what serves is what the store calls current."""
        with self._lock:
            old, self._replaced = self._replaced, None
            if old is None or self.pipeline.detector is old:
                return
            new = self.pipeline.swap(old, timeout=self.timeout_s)
        if new is not None:
            new.close()

    def replace(self, failing: Detector, fresh: Detector) -> bool:
        """Swap ``fresh`` in for ``failing`` if that still serves (a deploy may have replaced it
        meanwhile: then ``fresh`` is closed); the failing one is closed."""
        with self._lock:
            if self.pipeline.detector is not failing:
                fresh.close()
                return False
            old = self.pipeline.swap(fresh, timeout=self.timeout_s)
        if old is not None:
            old.close()
        return True
