"""Opening a bundle on a backend: the one factory of ``Detector`` that the command line, the
service and the deployer share."""

from __future__ import annotations

from typing import List, Optional, Tuple

from .backends import registry
from .backends.auto import choose
from .backends.base import Backend
from .bundle import Bundle, load_bundle
from .detector import Detector, Thresholds
from .errors import EdgewatchError

ARTIFACT_RUNTIMES = {
    "tflite": ["tflite"],
    "coral": ["edgetpu"],
    "openvino": ["openvino", "onnx"],
    "onnx": ["onnx"],
    "opencv": ["opencv", "onnx"],
}


def open_detector(
    bundle_dir: str,
    backend: str = "auto",
    device: Optional[str] = None,
    threads: Optional[int] = None,
    thresholds: Optional[Thresholds] = None,
    verify: bool = True,
    strict: bool = False,
) -> Tuple[Detector, List[str]]:
    """Load a bundle on a backend; returns the detector and auto's fallback reasons.
    ``verify=False`` skips hashing the files, for a caller that has just verified them;
    ``strict``: auto falls back only past a missing runtime or device (see ``choose``)."""
    bundle: Bundle = load_bundle(bundle_dir, runtimes=ARTIFACT_RUNTIMES.get(backend), verify=verify)
    reasons: List[str] = []
    be: Backend
    if backend == "auto":
        if device is not None:
            raise EdgewatchError("--device needs an explicit --backend (auto picks devices itself)")
        choice = choose(bundle, threads=threads, strict=strict)
        be, reasons = choice.backend, choice.reasons
    else:
        be = registry.create(backend, device=device, threads=threads)
        be.load(bundle)
    try:
        return Detector(bundle.manifest, be, thresholds, where=str(bundle.dir / "manifest.json")), reasons
    except Exception:
        be.close()
        raise
