"""The normalised detection every decoder produces and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Box:
    """Axis-aligned box in normalised coordinates (0..1) of some image: the model input
    while a decoder produces it, the original frame once mapped back."""

    xmin: float
    ymin: float
    xmax: float
    ymax: float

    @property
    def area(self) -> float:
        return max(0.0, self.xmax - self.xmin) * max(0.0, self.ymax - self.ymin)

    def iou(self, other: Box) -> float:
        ix = max(0.0, min(self.xmax, other.xmax) - max(self.xmin, other.xmin))
        iy = max(0.0, min(self.ymax, other.ymax) - max(self.ymin, other.ymin))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def clipped(self) -> Box:
        def c(v: float) -> float:
            return min(1.0, max(0.0, v))

        return Box(c(self.xmin), c(self.ymin), c(self.xmax), c(self.ymax))


@dataclass(frozen=True)
class Detection:
    class_id: int
    score: float
    box: Box

    def with_box(self, box: Box) -> Detection:
        return replace(self, box=box)
