"""The one internal form every dataset reader produces and the trainer consumes."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Tuple


@dataclass(frozen=True)
class Annotation:
    """One labelled box in pixels of its image (xmax/ymax exclusive-style floats, xmin < xmax)."""

    class_id: int
    xmin: float
    ymin: float
    xmax: float
    ymax: float


@dataclass(frozen=True)
class Sample:
    image: Path
    width: int
    height: int
    boxes: Tuple[Annotation, ...]


@dataclass
class ImportReport:
    """What a reader had to fix or drop, so `inspect` and `train` can say it."""

    clipped: int = 0  # boxes partly outside their image, clipped to it
    dropped: int = 0  # boxes empty after clipping (or degenerate), left out
    warnings: List[str] = field(default_factory=list)


@dataclass
class Dataset:
    classes: List[str]
    samples: List[Sample]
    source: str = ""  # the path and format it was read from, for messages
    report: ImportReport = field(default_factory=ImportReport)

    def sha256(self) -> str:
        """A fingerprint of the labels (not the pixels): class names, file names, boxes."""
        h = hashlib.sha256()
        h.update("\n".join(self.classes).encode())
        for s in sorted(self.samples, key=lambda s: s.image.name):
            h.update(f"{s.image.name}:{s.width}x{s.height}".encode())
            for b in s.boxes:
                h.update(f"{b.class_id},{b.xmin:.2f},{b.ymin:.2f},{b.xmax:.2f},{b.ymax:.2f};".encode())
        return h.hexdigest()

    def split(self, val_fraction: float = 0.2, seed: int = 0) -> Tuple[Dataset, Dataset]:
        """Deterministic train/val split by a hash of each image's file name and the seed: the
        same image lands on the same side on every machine and when images are added."""

        def to_val(s: Sample) -> bool:
            digest = hashlib.sha256(f"{seed}:{s.image.name}".encode()).digest()
            return int.from_bytes(digest[:8], "big") / 2**64 < val_fraction

        val = [s for s in self.samples if to_val(s)]
        train = [s for s in self.samples if not to_val(s)]
        return (
            Dataset(self.classes, train, self.source + " (train)", self.report),
            Dataset(self.classes, val, self.source + " (val)", self.report),
        )
