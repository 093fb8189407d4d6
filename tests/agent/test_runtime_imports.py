"""Runtimes as users install them: the package's extras give a working set on every supported
Python (tflite-runtime and ai-edge-litert 1.0 are numpy 1.x builds), and a runtime that is
installed but cannot load is one line that says what to install, never a traceback."""

from __future__ import annotations

import configparser
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
from packaging.requirements import Requirement

from edge_agent.backends import imports, litert
from edge_agent.errors import BackendUnavailable

ROOT = Path(__file__).resolve().parents[2]
SUPPORTED = ("3.9", "3.10", "3.11", "3.12", "3.13")

# What numpy 2 writes to sys.stderr (then PyErr_Print) before a numpy-1.x extension's
# ImportError; the agent must keep it off the terminal.
NUMPY_SAYS = (
    "\nA module that was compiled using NumPy 1.x cannot be run in\nNumPy 2.0.2 as it may crash.\n"
    'Traceback (most recent call last):  File "x.py", line 1, in <module>\n'
    "AttributeError: _ARRAY_API not found\n"
)


def extra_requirements(extra: str, python: str) -> List[Requirement]:
    """The requirements of ``edgewatch[extra]`` that apply on ``python`` (setup.cfg)."""
    cfg = configparser.RawConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [s.strip() for s in cfg["options.extras_require"][extra].splitlines()]
    env = {"python_version": python, "python_full_version": python + ".0", "extra": extra}
    reqs = [Requirement(s) for s in lines if s and not s.startswith("#")]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(env)]


@pytest.mark.parametrize("python", SUPPORTED)
@pytest.mark.parametrize("extra", ["tflite", "coral"])
def test_tflite_extras_resolve_to_a_working_set(extra: str, python: str) -> None:
    """tflite-runtime (every release, up to 2.14) is built for numpy 1.x, ai-edge-litert 1.0
    too: where the extra installs one, numpy 2 must be excluded, or that build must be."""
    reqs = {r.name: r for r in extra_requirements(extra, python)}
    runtimes = {"tflite-runtime", "ai-edge-litert"} & set(reqs)
    assert len(runtimes) == 1, f"{extra} on Python {python}: {sorted(reqs)}"
    numpy = reqs.get("numpy")
    if "tflite-runtime" in runtimes:
        assert numpy is not None, f"{extra} on Python {python} lets numpy 2 beside tflite-runtime"
        assert not numpy.specifier.contains("2.0.2") and numpy.specifier.contains("1.26.4")
    else:
        assert not reqs["ai-edge-litert"].specifier.contains("1.0.1"), "ai-edge-litert 1.0 needs numpy<2"
        assert numpy is None or numpy.specifier.contains("2.0.2")


def test_ci_installs_what_users_get() -> None:
    """The Python 3.9 check installs the extras as a user does: no pins of its own."""
    script = (ROOT / "scripts" / "test-py39.sh").read_text()
    install = [line for line in script.splitlines() if "make-venv.sh" in line]
    assert install and not any("numpy" in line for line in install), install
    assert "numpy" not in (ROOT / "scripts" / "make-venv.sh").read_text()


# --- a runtime that cannot load ---------------------------------------------------------------


def fake_versions(monkeypatch: pytest.MonkeyPatch, versions: Dict[str, Optional[str]]) -> None:
    monkeypatch.setattr(imports, "dist_version", lambda dist: versions.get(dist))


def fake_imports(monkeypatch: pytest.MonkeyPatch, modules: Dict[str, Any]) -> None:
    """``importlib.import_module`` as imports.py sees it: an entry that is an exception is
    raised (after numpy's text is printed, as numpy does), a module is returned."""
    real = imports.importlib.import_module

    def import_module(name: str, package: Optional[str] = None) -> Any:
        for prefix, what in modules.items():
            if name == prefix or name.startswith(prefix + "."):
                if isinstance(what, BaseException):
                    if imports.is_numpy_abi_error(what):
                        sys.stderr.write(NUMPY_SAYS)
                    raise what
                return what
        return real(name, package)

    monkeypatch.setattr(imports, "importlib", types.SimpleNamespace(import_module=import_module))


ABSENT_LITERT = ModuleNotFoundError("No module named 'ai_edge_litert'", name="ai_edge_litert")
TFLITE_ON_NUMPY2 = (
    "tflite-runtime 2.14.0 cannot load with numpy 2.0.2 (built for numpy 1.x): pip install 'numpy<2'"
)


def test_tflite_runtime_failing_import_is_one_line(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    fake_versions(monkeypatch, {"numpy": "2.0.2", "tflite-runtime": "2.14.0"})
    fake_imports(
        monkeypatch,
        {
            "ai_edge_litert": ABSENT_LITERT,
            "tflite_runtime": ImportError("numpy.core.multiarray failed to import"),
        },
    )
    with pytest.raises(BackendUnavailable) as e:
        litert.interpreter_module()
    assert str(e.value) == TFLITE_ON_NUMPY2
    assert capsys.readouterr().err == ""  # numpy's own message and stack stay off stderr


class _NumpyOneInterpreter:
    """What tflite-runtime 2.14's Interpreter does beside numpy 2: numpy prints, then the
    wrapper raises SystemError from the ImportError."""

    def __init__(self, **kwargs: Any) -> None:
        sys.stderr.write(NUMPY_SAYS)
        try:
            raise ImportError("numpy.core.multiarray failed to import")
        except ImportError as e:
            raise SystemError(
                "<built-in method CreateWrapperFromFile> returned a result with an error set"
            ) from e


def test_numpy1_build_is_refused_before_use(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A known numpy-1.x build beside numpy 2 is reported by the probe (so auto skips it)."""
    fake_versions(monkeypatch, {"numpy": "2.0.2", "tflite-runtime": "2.14.0"})
    fake_imports(
        monkeypatch,
        {
            "ai_edge_litert": ABSENT_LITERT,
            "tflite_runtime": types.SimpleNamespace(Interpreter=_NumpyOneInterpreter),
        },
    )
    with pytest.raises(BackendUnavailable, match=r"^tflite-runtime 2\.14\.0 cannot load with numpy 2\.0\.2"):
        litert.interpreter_module()
    fake_versions(monkeypatch, {"numpy": "1.26.4", "tflite-runtime": "2.14.0"})
    _, runtime = litert.interpreter_module()
    assert runtime == "tflite-runtime 2.14.0"


def test_numpy_mismatch_at_first_use_is_one_line(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """A build not known in advance fails when the interpreter is made: the same one line."""
    monkeypatch.setattr(litert, "NUMPY1_BUILDS", {})
    fake_versions(monkeypatch, {"numpy": "2.0.2", "tflite-runtime": "2.14.0"})
    fake_imports(
        monkeypatch,
        {
            "ai_edge_litert": ABSENT_LITERT,
            "tflite_runtime": types.SimpleNamespace(Interpreter=_NumpyOneInterpreter),
        },
    )
    with pytest.raises(BackendUnavailable) as e:
        litert.make_interpreter("model.tflite", None)
    assert str(e.value) == TFLITE_ON_NUMPY2
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (
            ImportError("numpy.core.multiarray failed to import"),
            "onnxruntime 1.16.0 cannot load with numpy 2.0.2 (built for numpy 1.x): pip install "
            "'numpy<2', or upgrade onnxruntime to a release built for numpy 2",
        ),
        (
            AttributeError("_ARRAY_API not found"),
            "onnxruntime 1.16.0 cannot load with numpy 2.0.2 (built for numpy 1.x)",
        ),
        (
            ModuleNotFoundError("No module named 'onnxruntime'", name="onnxruntime"),
            "onnxruntime is not installed",
        ),
        (
            ModuleNotFoundError("No module named 'sympy'", name="sympy"),
            "onnxruntime 1.16.0 is installed but cannot load (ModuleNotFoundError: No module named 'sympy')",
        ),
        (
            OSError("libgomp.so.1: cannot open shared object file\nmore"),
            "onnxruntime 1.16.0 is installed but cannot load "
            "(OSError: libgomp.so.1: cannot open shared object file)",
        ),
    ],
)
def test_runtime_import_failures(monkeypatch, capsys, error: BaseException, message: str) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.backends.onnx import ONNXBackend, import_ort

    fake_versions(monkeypatch, {"numpy": "2.0.2", "onnxruntime": "1.16.0"})
    fake_imports(monkeypatch, {"onnxruntime": error})
    with pytest.raises(BackendUnavailable) as e:
        import_ort()
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert capsys.readouterr().err == ""
    probe = ONNXBackend.probe()
    assert not probe.available and probe.reason == str(e.value)


def test_openvino_built_for_numpy1(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from edge_agent.backends.openvino import import_openvino

    fake_versions(monkeypatch, {"numpy": "2.0.2", "openvino": "2022.3.2"})
    fake_imports(monkeypatch, {"openvino": ImportError("numpy.core.multiarray failed to import")})
    with pytest.raises(
        BackendUnavailable, match=r"^openvino 2022\.3\.2 cannot load with numpy 2\.0\.2 \(built"
    ):
        import_openvino()


def test_a_newer_numpy_build_on_numpy1(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fake_versions(monkeypatch, {"numpy": "1.24.4", "onnxruntime": "1.20.0"})
    fake_imports(
        monkeypatch,
        {
            "onnxruntime": ImportError(
                "module compiled against ABI version 0x2000000 but this version of numpy is 0x1000009"
            )
        },
    )
    with pytest.raises(BackendUnavailable) as e:
        imports.import_runtime("onnxruntime", "onnxruntime", "pip install onnxruntime")
    assert str(e.value) == (
        "onnxruntime 1.20.0 cannot load with numpy 1.24.4 (built for a newer numpy): "
        "pip install --upgrade numpy"
    )


# The CLI as a user runs it, with the failure simulated at the import boundary (the subprocess
# patches imports.py's view of importlib and of installed versions, nothing else).
CLI = textwrap.dedent(
    """
    import sys, types
    from edge_agent.backends import imports, litert
    mode, argv = sys.argv[1], sys.argv[2:]
    NUMPY_SAYS = {numpy_says!r}
    versions = {{"numpy": "2.0.2", "tflite-runtime": "2.14.0"}}
    imports.dist_version = versions.get

    class Interpreter:
        def __init__(self, **kwargs):
            sys.stderr.write(NUMPY_SAYS)
            try:
                raise ImportError("numpy.core.multiarray failed to import")
            except ImportError as e:
                raise SystemError("CreateWrapperFromFile returned a result with an error set") from e

    def import_module(name, package=None):
        if name.startswith("ai_edge_litert"):
            raise ModuleNotFoundError("No module named 'ai_edge_litert'", name="ai_edge_litert")
        if name.startswith("tflite_runtime"):
            if mode == "import":
                sys.stderr.write(NUMPY_SAYS)
                raise ImportError("numpy.core.multiarray failed to import")
            return types.SimpleNamespace(Interpreter=Interpreter)
        return __import__("importlib").import_module(name, package)

    imports.importlib = types.SimpleNamespace(import_module=import_module)
    if mode == "first-use":
        litert.NUMPY1_BUILDS.clear()
    from edge_agent.cli import main
    sys.exit(main(argv))
    """
).format(numpy_says=NUMPY_SAYS)


@pytest.mark.parametrize("mode", ["import", "known-build", "first-use"])
def test_detect_says_what_to_install(mode: str, tmp_path: Path) -> None:
    """`edge-agent detect --backend tflite` with tflite-runtime 2.14 beside numpy 2: exit 1 and
    one line on stderr naming both versions and the fix; no traceback, not numpy's either."""
    import cv2
    import numpy as np

    frame = tmp_path / "frame.png"
    cv2.imwrite(str(frame), np.zeros((48, 64, 3), np.uint8))
    bundle = ROOT / "edge_agent" / "demo" / "bundles" / "shapes-1.0.0"
    args = ["detect", "--bundle", str(bundle), "--backend", "tflite", str(frame)]
    r = subprocess.run(
        [sys.executable, "-c", CLI, mode, *args], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert r.stderr == f"edge-agent: {TFLITE_ON_NUMPY2}\n"
