"""The TFLite interpreter, from whichever package provides it: ai-edge-litert (maintained),
else tflite-runtime (Python 3.9, armv7l). Shared by the ``tflite`` and ``coral`` backends.
TensorFlow itself is never imported on the device."""

from __future__ import annotations

import importlib
from typing import Any, List, Optional, Tuple

import numpy as np

from ..errors import BackendUnavailable
from ..preprocess import TensorSpec

PACKAGES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")


def interpreter_module() -> Tuple[Any, str]:
    """(module, "package version"); BackendUnavailable when neither package is installed."""
    errors = []
    for name in PACKAGES:
        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            errors.append(f"{name.split('.')[0]}: {e}")
            continue
        return mod, f"{name.split('.')[0].replace('_', '-')} {_version(name.split('.')[0])}"
    raise BackendUnavailable(
        "no TFLite runtime: pip install ai-edge-litert (Python >= 3.10) or tflite-runtime; "
        + "; ".join(errors)
    )


def _version(package: str) -> str:
    try:
        from importlib.metadata import version

        return version(package.replace("_", "-"))
    except Exception:
        return "?"


def tensor_spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=str(detail["name"]),
        shape=tuple(int(x) for x in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale) if scale else None,
        zero_point=int(zero_point),
    )


def make_interpreter(
    model_path: str,
    threads: Optional[int],
    delegates: Optional[List[Any]] = None,
    xnnpack: bool = True,
) -> Any:
    mod, _ = interpreter_module()
    kwargs: dict = {"model_path": model_path, "experimental_delegates": delegates or None}
    if threads:
        kwargs["num_threads"] = threads
    if not xnnpack and hasattr(mod, "OpResolverType"):
        kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    return mod.Interpreter(**kwargs)
