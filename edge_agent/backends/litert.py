"""The TFLite interpreter, from whichever package provides it: ai-edge-litert (maintained),
else tflite-runtime (Python 3.9, armv7l). Shared by the ``tflite`` and ``coral`` backends.
TensorFlow itself is never imported on the device."""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from ..errors import BackendUnavailable
from ..preprocess import TensorSpec
from . import imports

PACKAGES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter")
INSTALL = "pip install ai-edge-litert (Python >= 3.10) or tflite-runtime"
# Wheels known to be built for numpy 1.x (their interpreter fails at its first use beside numpy
# 2, not at import): every tflite-runtime ever released (the last is 2.14.0), and ai-edge-litert
# before 1.1. Versions at or above the bound are left to the failure itself (make_interpreter).
NUMPY1_BUILDS = {"tflite-runtime": (2, 15), "ai-edge-litert": (1, 1)}
HINTS = {
    "tflite-runtime": "pip install 'numpy<2'",
    "ai-edge-litert": "pip install --upgrade ai-edge-litert (1.1 or later), or 'numpy<2'",
}


def _dist(module: str) -> str:
    """The distribution of a module: "tflite_runtime.interpreter" -> "tflite-runtime"."""
    return module.split(".")[0].replace("_", "-")


def _numpy1_build(dist: str) -> bool:
    """True when the installed ``dist`` is a numpy-1.x build and numpy 2 is installed."""
    bound = NUMPY1_BUILDS.get(dist)
    version = imports.dist_version(dist)
    if bound is None or version is None or imports.numpy_major() < 2:
        return False
    return imports.version_tuple(version) < bound


def interpreter_module() -> Tuple[Any, str]:
    """(module, "package version") of the first TFLite runtime that can run here.
    BackendUnavailable, one line, when none can: neither is installed (what to install), or the
    one installed cannot load (which versions clash, and what to install instead)."""
    broken: List[str] = []
    for name in PACKAGES:
        dist = _dist(name)
        try:
            mod = imports.import_runtime(name, dist, f"pip install {dist}", HINTS.get(dist))
        except BackendUnavailable as e:
            if imports.dist_version(dist):  # installed, yet it does not import
                broken.append(str(e))
            continue
        if _numpy1_build(dist):
            broken.append(str(imports.numpy_mismatch(dist, HINTS.get(dist))))
            continue
        return mod, f"{dist} {imports.dist_version(dist) or '?'}"
    if broken:
        raise BackendUnavailable("; ".join(broken))
    raise BackendUnavailable(f"no TFLite runtime: {INSTALL}")


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
    """A TFLite interpreter for ``model_path``. A numpy ABI mismatch surfaces only here (the
    wrapper imports numpy's C API on first use): it becomes BackendUnavailable, one line, and
    numpy's own message is kept off stderr."""
    mod, runtime = interpreter_module()
    kwargs: dict = {"model_path": model_path, "experimental_delegates": delegates or None}
    if threads:
        kwargs["num_threads"] = threads
    if not xnnpack and hasattr(mod, "OpResolverType"):
        kwargs["experimental_op_resolver_type"] = mod.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    with imports.captured_stderr() as printed:
        try:
            interp = mod.Interpreter(**kwargs)
        except Exception as e:
            if imports.is_numpy_abi_error(e, printed.getvalue()):
                dist = runtime.split()[0]
                raise imports.numpy_mismatch(dist, HINTS.get(dist)) from e
            imports.replay(printed)
            raise
    imports.replay(printed)
    return interp
