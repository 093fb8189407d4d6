"""Which processed frames become detection messages (SPEC §3 ``publish``): a pure policy.

- ``all``: every processed frame.
- ``detections``: frames with at least one detection.
- ``changes``: when the set of labels changes, or a box moved by more than ``move_threshold``
  (normalised coordinates) from the one last published for that label.
``max_rate_hz`` caps messages per second; a change held back by the cap is published as soon as
the cap allows, because the comparison is always against what was last *published*.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

from ..messages import DetectionOut

Box = Tuple[float, float, float, float]


def _boxes_by_label(detections: Sequence[DetectionOut]) -> Dict[str, List[Box]]:
    out: Dict[str, List[Box]] = {}
    for d in detections:
        out.setdefault(d.label, []).append((d.box.xmin, d.box.ymin, d.box.xmax, d.box.ymax))
    return out


def _moved(before: List[Box], after: List[Box], threshold: float) -> bool:
    if len(before) != len(after):
        return True
    remaining = list(before)
    for box in after:
        # the nearest unmatched box of the same label (greedy: a handful of boxes per label)
        best = min(remaining, key=lambda b: max(abs(x - y) for x, y in zip(b, box)))
        if max(abs(x - y) for x, y in zip(best, box)) > threshold:
            return True
        remaining.remove(best)
    return False


class PublishPolicy:
    def __init__(self, mode: str, max_rate_hz: Optional[float] = None, move_threshold: float = 0.05):
        self.mode = mode
        self.max_rate_hz = max_rate_hz
        self.move_threshold = move_threshold
        self._last_boxes: Optional[Dict[str, List[Box]]] = None
        self._last_time: Optional[float] = None

    def configure(self, mode: Optional[str] = None, max_rate_hz: Optional[float] = None) -> None:
        if mode is not None:
            self.mode = mode
            self._last_boxes = None
        if max_rate_hz is not None:
            self.max_rate_hz = max_rate_hz

    def decide(self, detections: Sequence[DetectionOut], now: float) -> bool:
        """True when this frame is to be published; records it as the last published one."""
        if self.mode == "detections" and not detections:
            return False
        boxes = _boxes_by_label(detections)
        if self.mode == "changes" and self._last_boxes is not None:
            same_labels = set(boxes) == set(self._last_boxes)
            if same_labels and not any(
                _moved(self._last_boxes[label], boxes[label], self.move_threshold) for label in boxes
            ):
                return False
        if (
            self.max_rate_hz
            and self._last_time is not None
            and now - self._last_time < 1.0 / self.max_rate_hz
        ):
            return False
        self._last_boxes = boxes
        self._last_time = now
        return True
