"""Backends by name: the built-in ones and third-party plugins registered under the
``edgewatch.backends`` entry-point group (a plugin is a Backend subclass)."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any, Dict, List, Mapping, Optional, Type

from pydantic import ValidationError

from ..errors import BackendError
from .base import Backend, BackendOptions

log = logging.getLogger(__name__)

GROUP = "edgewatch.backends"
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
    names = dict(BUILTIN)
    names.update(_entry_points())
    return sorted(names)


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
        raise BackendError(f"backend {name!r} ({target}) cannot be imported: {e}") from None
    if not (isinstance(cls, type) and issubclass(cls, Backend)):
        raise BackendError(f"backend {name!r} ({target}) is not an edge_agent Backend subclass")
    return cls


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
