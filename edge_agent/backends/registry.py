"""Backends by name: the built-in ones and third-party plugins registered under the
``edgewatch.backends`` entry-point group (a plugin is a Backend subclass)."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Dict, List, Optional, Type

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


def create(
    name: str, device: Optional[str] = None, threads: Optional[int] = None, **extra: object
) -> Backend:
    cls = backend_class(name)
    try:
        options: BackendOptions = cls.Options(device=device, threads=threads, **extra)
    except Exception as e:
        raise BackendError(f"backend {name}: bad options: {e}") from None
    return cls(options)
