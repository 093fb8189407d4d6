"""`cloud-trainer` when a command cannot run here: a command module that does not import, or a
dependency missing when the command runs, is a one-line error that names it, never a vanished
subcommand or a traceback; every other command and `--help` keep working."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import pytest

from cloud_trainer.cli import main


class _Unimportable(importlib.abc.MetaPathFinder):
    """Importing ``module`` fails as if the third-party module ``missing`` were not installed."""

    def __init__(self, module: str, missing: str) -> None:
        self.module, self.missing = module, missing

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target: object = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname == self.module:
            raise ModuleNotFoundError(f"No module named {self.missing!r}", name=self.missing)
        return None


@pytest.fixture
def train_without_tensorflow(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "cloud_trainer.commands.train", raising=False)
    monkeypatch.setattr(
        sys, "meta_path", [_Unimportable("cloud_trainer.commands.train", "tensorflow")] + sys.meta_path
    )


def one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloud-trainer: "), err
    return lines[0]


def test_a_command_module_that_does_not_import_is_an_error(
    train_without_tensorflow: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = one_line_error(capsys, main(["train", str(tmp_path), "--out", str(tmp_path / "run")]))
    assert line == (
        "cloud-trainer: train: cannot import cloud_trainer.commands.train: No module named 'tensorflow' "
        "(install the trainer's dependencies: pip install 'edgewatch[trainer]')"
    )
    assert not (tmp_path / "run").exists()


def test_a_missing_command_module_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "cloud_trainer.commands.export", None)  # as if not there
    line = one_line_error(capsys, main(["export", "run"]))
    assert line.startswith("cloud-trainer: export: cannot import cloud_trainer.commands.export: ")
    assert "pip install" not in line  # a module of our own is missing: no dependency to install


def test_help_lists_an_unavailable_command_with_the_reason_and_the_others_still_run(
    train_without_tensorflow: None, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())  # as argparse wraps it
    assert exit_.value.code == 0
    assert "unavailable: cannot import cloud_trainer.commands.train: No module named 'tensorflow'" in out
    assert "synth" in out and "keygen" in out
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0 and "No module named 'tensorflow'" in " ".join(
        capsys.readouterr().out.split()
    )
    assert main(["keygen", str(tmp_path / "k")]) == 0
    assert (tmp_path / "k.key").is_file() and (tmp_path / "k.pub").is_file()


def test_a_dependency_missing_when_the_command_runs_is_a_one_line_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The trainer imports tensorflow only to train: its absence shows when `train` runs."""
    from cloud_trainer.data import synthesize

    synthesize(tmp_path / "data", images=4, seed=0, fmt="yolo", width=64, height=48)
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails
    line = one_line_error(capsys, main(["train", str(tmp_path / "data"), "--out", str(tmp_path / "run")]))
    assert line.startswith("cloud-trainer: train: import of tensorflow halted")
    assert line.endswith("(install the trainer's dependencies: pip install 'edgewatch[trainer]')")


def test_unknown_arguments_are_still_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["keygen", str(tmp_path / "k"), "--bogus"])
    assert exit_.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err
    assert not (tmp_path / "k.key").exists()


def test_a_failing_edgetpu_compiler_gives_one_line_and_logs_all_it_said(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The compiler's own words (many lines) go to the log; the error stays one CLI line."""
    from cloud_trainer import export
    from cloud_trainer.errors import TrainerError

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "edgetpu_compiler"
    fake.write_text(
        "#!/bin/sh\necho 'Edge TPU Compiler version 16.0' >&2\n"
        "echo 'ERROR: op FOO is not supported' >&2\nexit 1\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(b"\0" * 16)
    with pytest.raises(TrainerError) as e:
        export.edgetpu(model, tmp_path)
    assert "\n" not in str(e.value) and str(e.value).endswith(": ERROR: op FOO is not supported")
    assert "Edge TPU Compiler version 16.0" in caplog.text
