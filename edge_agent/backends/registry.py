"""Backends by name: the built-in ones (``BUILTIN``, their one registration) and third-party
plugins registered under the ``edgewatch.backends`` entry-point group (a plugin is a Backend
subclass). What a backend runs, and where ``auto`` tries it, the class itself declares
(``Backend.runtimes``, ``auto_slots``, ``check_device``); this module only finds classes."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any, Dict, List, Mapping, Optional, Tuple, Type

from pydantic import ValidationError

from ..errors import BackendError
from .base import Backend, BackendOptions

log = logging.getLogger(__name__)

GROUP = "edgewatch.backends"
# The built-in backends' one registration (not also entry points: the registry must find them
# in a source checkout that was never pip-installed, and a plugin must not replace them).
BUILTIN = {
    "tflite": "edge_agent.backends.tflite:TFLiteBackend",
    "coral": "edge_agent.backends.coral:CoralBackend",
    "openvino": "edge_agent.backends.openvino:OpenVINOBackend",
    "opencv": "edge_agent.backends.opencv:OpenCVBackend",
    "onnx": "edge_agent.backends.onnx:ONNXBackend",
}


def _entry_points() -> Dict[str, str]:
    from importlib import metadata

    if sys.version_info >= (3, 10):
        eps = metadata.entry_points(group=GROUP)
    else:  # 3.9 returns a dict of groups
        eps = metadata.entry_points().get(GROUP, [])
    return {ep.name: ep.value for ep in eps}


def available_names() -> List[str]:
    """The built-in backends, then the plugins (sorted): built-ins come first wherever order
    decides (auto's ties, the native backend of an artifact kind)."""
    return [*BUILTIN, *sorted(set(_entry_points()) - set(BUILTIN))]


def backend_class(name: str) -> Type[Backend]:
    targets = dict(BUILTIN)
    # Built-ins win: an installed plugin must not silently replace them.
    for key, value in _entry_points().items():
        targets.setdefault(key, value)
    target = targets.get(name)
    if target is None:
        raise BackendError(f"unknown backend {name!r}; known: auto, {', '.join(sorted(targets))}")
    module_name, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise BackendError(f"backend {name!r} ({target}) cannot be imported: {e}") from e
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend {name!r} ({target}) is not an edge_agent Backend subclass")
    if cls.name != name:
        raise BackendError(
            f"backend {name!r} ({target}) calls itself {cls.name!r}: register it under that name"
        )
    return cls


def loadable_classes() -> List[Type[Backend]]:
    """Every registered backend class that imports (a plugin that does not is logged and left
    out: discovery must not fail because of one broken plugin)."""
    out = []
    for name in available_names():
        try:
            out.append(backend_class(name))
        except BackendError as e:
            log.warning("%s", e)
    return out


def artifact_runtimes() -> List[str]:
    """Every artifact runtime some registered backend loads."""
    return sorted({r for cls in loadable_classes() for r in cls.runtimes})


def auto_order() -> List[Tuple[Type[Backend], Optional[str]]]:
    """``auto``'s candidates, (backend class, device), in the order the classes' ``auto_slots``
    give (ties: built-ins first). Only slots a class declares itself count: a plugin that
    subclasses a built-in does not inherit its place in ``auto``."""
    slots = [
        (slot.rank, order, slot.device, cls)
        for order, cls in enumerate(loadable_classes())
        for slot in vars(cls).get("auto_slots", ())
    ]
    return [(cls, device) for _, _, device, cls in sorted(slots, key=lambda s: (s[0], s[1]))]


def native_backend(runtime: str) -> Type[Backend]:
    """The backend an artifact runtime is native to (the first of its ``runtimes``): the one the
    trainer checks an exported artifact with."""
    for cls in loadable_classes():
        if cls.runtimes and cls.runtimes[0] == runtime:
            return cls
    raise BackendError(
        f"no backend runs {runtime!r} artifacts natively (known: {', '.join(artifact_runtimes())})"
    )


def option_names(cls: Type[Backend]) -> List[str]:
    """The backend-specific settings a backend class takes (``detector.options``)."""
    return sorted(set(cls.Options.model_fields) - set(BackendOptions.model_fields))


def create(
    name: str,
    device: Optional[str] = None,
    threads: Optional[int] = None,
    options: Optional[Mapping[str, Any]] = None,
) -> Backend:
    """A backend with its options model built from ``device``, ``threads`` and those of
    ``options`` (``detector.options``) that this backend takes: the configuration is checked as
    a whole at start (``edge_agent.loading.check_options``), and under ``auto`` each candidate
    takes only its own."""
    cls = backend_class(name)
    own = {k: v for k, v in (options or {}).items() if k in option_names(cls)}
    try:
        built: BackendOptions = cls.Options(device=device, threads=threads, **own)
    except ValidationError as e:
        raise BackendError(f"backend {name}: bad options: {_describe(e)}") from e
    return cls(built)


def _describe(e: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
