"""Opening a bundle on a backend: the one factory of ``Detector`` that the command line, the
service and the deployer share."""

from __future__ import annotations

from typing import Any, List, Mapping, Optional, Tuple

from pydantic import ValidationError

from .backends import registry
from .backends.auto import choose
from .backends.base import Backend
from .bundle import Bundle, load_bundle
from .config import ConfigError, DetectorConfig
from .detector import Detector, Thresholds
from .errors import BackendError, EdgewatchError


def check_options(detector: DetectorConfig) -> None:
    """``detector.options`` against the configured backend's own options model (under ``auto``,
    every key must be one that some backend takes): a ConfigError naming the key otherwise."""
    options = detector.options
    if not options:
        return
    names = [detector.backend] if detector.backend != "auto" else registry.available_names()
    try:
        classes = [registry.backend_class(name) for name in names]
    except BackendError as e:
        raise ConfigError(f"detector.backend: {e}") from e
    known = sorted({option for cls in classes for option in registry.option_names(cls)})
    for key in options:
        if key not in known:
            where = detector.backend if detector.backend != "auto" else "any backend"
            raise ConfigError(
                f"detector.options.{key}: not an option of {where} (known: {', '.join(known) or 'none'})"
            )
    for cls in classes:
        own = {k: v for k, v in options.items() if k in registry.option_names(cls)}
        try:
            cls.Options(**own)
        except ValidationError as e:
            err = e.errors()[0]
            loc = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"detector.options.{loc}: {err['msg']}") from e


def open_detector(
    bundle_dir: str,
    backend: str = "auto",
    device: Optional[str] = None,
    threads: Optional[int] = None,
    thresholds: Optional[Thresholds] = None,
    verify: bool = True,
    strict: bool = False,
    options: Optional[Mapping[str, Any]] = None,
) -> Tuple[Detector, List[str]]:
    """Load a bundle on a backend; returns the detector and auto's fallback reasons.
    ``verify=False`` skips hashing the files, for a caller that has just verified them;
    ``strict``: auto falls back only past a missing runtime or device (see ``choose``);
    ``options``: ``detector.options``, each backend taking its own."""
    runtimes = None if backend == "auto" else list(registry.backend_class(backend).runtimes)
    bundle: Bundle = load_bundle(bundle_dir, runtimes=runtimes, verify=verify)
    reasons: List[str] = []
    be: Backend
    if backend == "auto":
        if device is not None:
            raise EdgewatchError("--device needs an explicit --backend (auto picks devices itself)")
        choice = choose(bundle, threads=threads, strict=strict, options=options)
        be, reasons = choice.backend, choice.reasons
    else:
        be = registry.create(backend, device=device, threads=threads, options=options)
        be.load(bundle)
    try:
        return Detector(bundle.manifest, be, thresholds, where=str(bundle.dir / "manifest.json")), reasons
    except Exception:
        be.close()
        raise
