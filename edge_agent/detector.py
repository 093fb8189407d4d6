"""The model wrapper: a loaded backend plus the bundle's pre-processing and decoder.

``Detector`` turns a BGR frame into labelled detections normalised to that frame. It owns no
thread and no I/O; the service pipelines ``prepare`` / ``backend.submit`` / ``finish`` itself.
It owns its backend: ``close()`` (or leaving a ``with`` block) releases it.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from .backends.base import Backend
from .bundle import Manifest
from .decoders import get_decoder, parse_params
from .decoders.base import DecodeOptions, OutputTensor
from .detection import Detection
from .errors import DecoderError
from .messages import BoxOut, DetectionOut, ImageSize, Latency, ModelRef
from .preprocess import Preprocessor, Transform

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Thresholds:
    """Overrides of the manifest's ``defaults`` (config or a ``set`` command); None keeps it."""

    score_threshold: Optional[float] = None
    iou_threshold: Optional[float] = None
    max_detections: Optional[int] = None
    labels: Optional[Tuple[str, ...]] = None  # report only these labels


@dataclass(frozen=True)
class Result:
    detections: List[DetectionOut]
    image: ImageSize
    latency: Latency


class Detector:
    def __init__(
        self,
        manifest: Manifest,
        backend: Backend,
        thresholds: Optional[Thresholds] = None,
        where: str = "manifest.json",
    ):
        """``backend`` must have loaded the model ``manifest`` describes; ``where`` names the
        manifest in errors. Raises DecoderError/BackendError when the model's tensors do not
        fit the manifest (input size, labels vs outputs)."""
        self.manifest = manifest
        self.backend = backend
        self.where = where
        m = manifest
        self.labels = list(m.labels)
        self.decoder = get_decoder(m.decoder.type)
        self.params = parse_params(m.decoder.type, m.decoder.params)
        try:
            self.decoder.check([(o.name, o.shape) for o in backend.outputs], self.params, len(self.labels))
        except DecoderError as e:
            raise DecoderError(f"{where}: decoder {m.decoder.type}: {e}") from e
        self.preprocess = Preprocessor(m.input, backend.input)
        self.thresholds = thresholds or Thresholds()
        self.options = self._options()
        self.closed = False

    def _options(self) -> DecodeOptions:
        d, t = self.manifest.defaults, self.thresholds
        return DecodeOptions(
            num_classes=len(self.labels),
            input_width=self.preprocess.width,
            input_height=self.preprocess.height,
            score_threshold=d.score_threshold if t.score_threshold is None else t.score_threshold,
            iou_threshold=d.iou_threshold if t.iou_threshold is None else t.iou_threshold,
            max_detections=d.max_detections if t.max_detections is None else t.max_detections,
        )

    def set_thresholds(self, thresholds: Thresholds) -> None:
        self.thresholds = thresholds
        self.options = self._options()

    @property
    def model(self) -> ModelRef:
        return ModelRef(name=self.manifest.name, version=self.manifest.version)

    def prepare(self, image: np.ndarray) -> Tuple[np.ndarray, Transform]:
        return self.preprocess(image)

    def decode(self, outputs: Sequence[OutputTensor], transform: Transform) -> List[DetectionOut]:
        raw: List[Detection] = self.decoder.decode(outputs, self.params, self.options)
        wanted = self.thresholds.labels
        out = []
        for det in raw:
            label = self.labels[det.class_id]
            if wanted is not None and label not in wanted:
                continue
            b = det.box
            xmin, ymin, xmax, ymax = transform.xyxy_to_frame(b.xmin, b.ymin, b.xmax, b.ymax)
            if xmax <= xmin or ymax <= ymin:
                continue  # entirely in the letterbox padding
            box = BoxOut(xmin=round(xmin, 5), ymin=round(ymin, 5), xmax=round(xmax, 5), ymax=round(ymax, 5))
            out.append(DetectionOut(label=label, class_id=det.class_id, score=round(det.score, 4), box=box))
        return out

    def detect(self, image: np.ndarray) -> Result:
        t0 = time.perf_counter()
        tensor, transform = self.prepare(image)
        t1 = time.perf_counter()
        outputs = self.backend.infer(tensor)
        t2 = time.perf_counter()
        detections = self.decode(outputs, transform)
        t3 = time.perf_counter()
        return Result(
            detections=detections,
            image=ImageSize(width=int(image.shape[1]), height=int(image.shape[0])),
            latency=Latency(inference=round((t2 - t1) * 1000, 2), total=round((t3 - t0) * 1000, 2)),
        )

    def warm(self) -> None:
        """One inference on a grey frame; checks the real output shapes against the decoder."""
        h, w = self.preprocess.height, self.preprocess.width
        tensor, transform = self.prepare(np.full((h, w, 3), 114, np.uint8))
        outputs = self.backend.infer(tensor)
        try:
            self.decoder.check(
                [(o.name, tuple(o.data.shape)) for o in outputs], self.params, len(self.labels)
            )
        except DecoderError as e:
            raise DecoderError(f"{self.where}: decoder {self.decoder.type}: {e}") from e
        self.decode(outputs, transform)

    def close(self) -> None:
        """Release the backend (idempotent). A backend that fails to release is logged, not
        raised: the detector is out of service either way, and its caller is usually cleaning up
        after something else."""
        if self.closed:
            return
        self.closed = True
        try:
            self.backend.close()
        except Exception as e:
            log.warning("closing the %s backend of %s: %s", self.backend.name, self.manifest.ident, e)

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
