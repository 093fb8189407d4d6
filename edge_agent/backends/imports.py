"""Importing a backend's runtime package (tflite-runtime, ai-edge-litert, openvino, onnxruntime)
so that a runtime that is installed but cannot load becomes one line that says what to install,
never a traceback.

The usual way such an import fails is a numpy ABI mismatch: a wheel built for numpy 1.x beside
numpy 2 (tflite-runtime 2.14 on Python 3.9 with numpy 2.0). numpy then writes its own multi-line
message and a stack to ``sys.stderr`` before the ImportError is raised (``_ARRAY_API not found``,
``numpy.core.multiarray failed to import``); the import runs with ``sys.stderr`` captured, and
what was captured is written out again only when the import did not fail.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import sys
from types import ModuleType
from typing import Iterator, List, Optional

from ..errors import BackendUnavailable

# What a numpy C-API mismatch says, in either direction (numpy 1.x builds on numpy 2, numpy 2
# builds on an older numpy), in the exception or in what numpy prints first.
NUMPY_ABI_MARKERS = (
    "_ARRAY_API not found",
    "_UFUNC_API not found",
    "multiarray failed to import",
    "_multiarray_umath failed to import",
    "umath failed to import",
    "compiled using NumPy 1.x",
    "module compiled against ABI version",
    "module compiled against API version",
)


def dist_version(dist: str) -> Optional[str]:
    """The installed version of distribution ``dist``, or None."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover - Python 3.8
        return None
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def numpy_version() -> str:
    found = dist_version("numpy")
    if found:
        return found
    import numpy

    return str(numpy.__version__)


def numpy_major() -> int:
    try:
        return int(numpy_version().split(".")[0])
    except ValueError:
        return 0


def version_tuple(text: str) -> tuple:
    """The numeric release parts: "2.14.0" -> (2, 14, 0), "2.1.0rc1" -> (2, 1)."""
    out: List[int] = []
    for part in text.split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def _name(dist: str) -> str:
    ver = dist_version(dist)
    return f"{dist} {ver}" if ver else dist


def numpy_mismatch(dist: str, hint: Optional[str] = None) -> BackendUnavailable:
    """The one-line error for ``dist`` built against another numpy than the installed one;
    ``hint`` is the fix when numpy 2 is the installed one."""
    np_ver = numpy_version()
    if numpy_major() >= 2:
        built = "numpy 1.x"
        fix = hint or f"pip install 'numpy<2', or upgrade {dist} to a release built for numpy 2"
    else:
        built, fix = "a newer numpy", "pip install --upgrade numpy"
    return BackendUnavailable(f"{_name(dist)} cannot load with numpy {np_ver} (built for {built}): {fix}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    cur: Optional[BaseException] = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__ or cur.__context__


def is_numpy_abi_error(exc: BaseException, printed: str = "") -> bool:
    """True when ``exc`` (or what caused it, or what was printed while it happened) is numpy's
    C-API mismatch."""
    texts = [printed] + [f"{type(e).__name__}: {e}" for e in _chain(exc)]
    return any(marker in text for text in texts for marker in NUMPY_ABI_MARKERS)


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = next((s.strip() for s in text.splitlines() if s.strip()), "")
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def cannot_load(
    dist: str, exc: BaseException, printed: str = "", hint: Optional[str] = None
) -> BackendUnavailable:
    """The one-line error for an installed runtime whose import or first use failed."""
    if is_numpy_abi_error(exc, printed):
        return numpy_mismatch(dist, hint)
    return BackendUnavailable(f"{_name(dist)} is installed but cannot load ({first_line(exc)})")


@contextlib.contextmanager
def captured_stderr() -> Iterator[io.StringIO]:
    """Capture what Python code (numpy's warning, PyErr_Print) writes to ``sys.stderr``; the
    caller decides whether to write it out again (``replay``)."""
    buf = io.StringIO()
    with contextlib.redirect_stderr(buf):
        yield buf


def replay(buf: io.StringIO) -> None:
    text = buf.getvalue()
    if text:
        sys.stderr.write(text)


def is_absent(exc: ImportError, module: str) -> bool:
    """A clean "not installed": ModuleNotFoundError for ``module`` or one of its parents (not
    for something the package itself imports)."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return False
    return module == exc.name or module.startswith(exc.name + ".")


def import_runtime(module: str, dist: str, install: str, hint: Optional[str] = None) -> ModuleType:
    """Import ``module`` of distribution ``dist``. BackendUnavailable (one line) when it is not
    installed (saying ``install``) or when it is installed but fails to import (a numpy ABI
    mismatch named as such, with the versions and what to install: ``hint`` when given)."""
    with captured_stderr() as buf:
        try:
            mod = importlib.import_module(module)
        except Exception as e:
            if isinstance(e, ImportError) and is_absent(e, module):
                raise BackendUnavailable(f"{dist} is not installed ({install})") from e
            raise cannot_load(dist, e, buf.getvalue(), hint) from e
    replay(buf)
    return mod
