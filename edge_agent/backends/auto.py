"""``backend: auto`` (SPEC §3): the fastest backend this machine and this bundle allow.

Order: coral (an EdgeTPU attached and an edgetpu artifact), openvino on MYRIAD (an NCS2),
tflite, openvino on CPU, then onnx and opencv as last resorts: each backend class declares its
places (``Backend.auto_slots``) and the artifacts it loads (``Backend.runtimes``). Each candidate is tried for
real (loaded); every choice and every fallback is logged with its reason and returned, so the
service can publish a ``backend_fallback`` event.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Mapping, Optional, Tuple

from ..bundle import Bundle
from ..errors import BackendError, BackendUnavailable
from . import registry
from .base import Backend

log = logging.getLogger(__name__)

NO_ARTIFACT = "the bundle has no "


def is_fallback(reason: str) -> bool:
    """Whether a skip reason is a real fallback (the candidate could have served this bundle but
    its runtime or device is missing or failed: an unplugged Coral), not just a bundle without
    an artifact for it."""
    return NO_ARTIFACT not in reason


@dataclass
class Choice:
    backend: Backend
    reasons: List[str] = field(default_factory=list)  # why each earlier candidate was skipped


def plan(artifact_runtimes: Iterable[str]) -> List[Tuple[str, Optional[str], str]]:
    """(backend, device, why-skipped-or-empty) for every candidate, for a bundle with
    artifacts of ``artifact_runtimes``, without loading anything."""
    have = set(artifact_runtimes)
    out = []
    for cls, device in registry.auto_order():
        name, wanted = cls.name, cls.runtimes
        if not have.intersection(wanted):
            out.append((name, device, f"{NO_ARTIFACT}{'/'.join(wanted)} artifact"))
            continue
        probe = cls.probe()
        if not probe.available:
            out.append((name, device, probe.reason))
        elif device and device not in probe.devices:
            extra = f"; {probe.reason}" if probe.reason else ""
            out.append(
                (name, device, f"no {device} device (found: {', '.join(probe.devices) or 'none'}){extra}")
            )
        else:
            out.append((name, device, ""))
    return out


def choose(
    bundle: Bundle,
    threads: Optional[int] = None,
    strict: bool = False,
    options: Optional[Mapping[str, Any]] = None,
) -> Choice:
    """The first candidate that loads. ``strict`` (a deploy): only a missing runtime or device
    moves on to the next; an artifact that does not load on an available backend is a broken
    model, and a fallback to another artifact would hide it (SPEC §6.2)."""
    reasons: List[str] = []
    for name, device, skip in plan(a.runtime for a in bundle.manifest.artifacts):
        label = f"{name}" + (f" on {device}" if device else "")
        if skip:
            reasons.append(f"{label}: {skip}")
            log.info("auto: skipping %s: %s", label, skip)
            continue
        backend = registry.create(name, device=device, threads=threads, options=options)
        try:
            backend.load(bundle)
        except BackendError as e:
            if strict and not isinstance(e, BackendUnavailable):
                backend.close()
                raise
            reasons.append(f"{label}: {e}")
            log.warning("auto: %s failed to load, falling back: %s", label, e)
            backend.close()
            continue
        log.info("auto: chose %s%s", label, f" (after: {'; '.join(reasons)})" if reasons else "")
        return Choice(backend, reasons)
    raise BackendError("auto: no backend can run this bundle here: " + "; ".join(reasons))
