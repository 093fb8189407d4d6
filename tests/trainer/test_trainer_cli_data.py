"""`cloud-trainer synth | inspect` as a user runs them: a real process, real files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def trainer(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloud_trainer", *args], capture_output=True, text=True, timeout=300
    )


def one_line_error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloud-trainer: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("fmt", ["voc", "yolo", "coco"])
def test_synth_then_inspect(tmp_path: Path, fmt: str) -> None:
    out = tmp_path / fmt
    size = ("--width", "160", "--height", "120")
    r = trainer("synth", "--out", str(out), "--images", "5", "--seed", "3", "--format", fmt, *size)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wrote 5 images, ") and f"as {fmt}" in lines[0]
    r = trainer("inspect", str(out), "--json")
    assert r.returncode == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["images"] == 5 and info["boxes"] >= 5
    assert [c["name"] for c in info["classes"]] == ["circle", "square", "triangle"]
    assert info["image_sizes"] == [{"width": 160, "height": 120, "images": 5}]
    r = trainer("inspect", str(out), "--format", fmt)
    assert r.returncode == 0, r.stderr
    assert "circle" in r.stdout and "box width  (px)" in r.stdout and "0 boxes clipped" in r.stdout


def test_synth_is_reproducible_from_the_command_line(tmp_path: Path) -> None:
    for name in ("a", "b"):
        size = ("--width", "96", "--height", "72", "--max-objects", "6")
        r = trainer(
            "synth", "--out", str(tmp_path / name), "--images", "3", "--seed", "9", "--format", "coco", *size
        )
        assert r.returncode == 0, r.stderr
    a = json.loads((tmp_path / "a" / "annotations.json").read_text())
    b = json.loads((tmp_path / "b" / "annotations.json").read_text())
    assert a["annotations"] == b["annotations"] and a["annotations"]


def test_inspect_reports_fixes(tmp_path: Path) -> None:
    import cv2
    import numpy as np

    cv2.imwrite(str(tmp_path / "a.jpg"), np.zeros((48, 64, 3), np.uint8))
    (tmp_path / "ann.csv").write_text("a.jpg,64,48,dog,-4,2,30,40\na.jpg,64,48,dog,70,2,80,40\n")
    r = trainer("inspect", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "1 boxes clipped to their image, 1 dropped" in r.stdout
    assert "ann.csv:2" in r.stdout


@pytest.mark.slow
def test_errors_are_one_line(tmp_path: Path) -> None:
    line = one_line_error(trainer("inspect", str(tmp_path / "missing")))
    assert "no such file or folder" in line
    (tmp_path / "empty").mkdir()
    assert "pass --format" in one_line_error(trainer("inspect", str(tmp_path / "empty")))
    bad = tmp_path / "bad"
    bad.mkdir()
    import cv2
    import numpy as np

    cv2.imwrite(str(bad / "a.jpg"), np.zeros((48, 64, 3), np.uint8))
    (bad / "a.txt").write_text("0 0.5 0.5 0.2 0.2\n7 0.5 0.5 0.2 0.2\n")
    (bad / "classes.txt").write_text("a\nb\nc\n")
    line = one_line_error(trainer("inspect", str(bad)))
    assert "a.txt:2: class id 7 out of range" in line
    line = one_line_error(trainer("inspect", str(bad), "--classes", "a,a"))
    assert "listed twice" in line
    line = one_line_error(trainer("synth", "--out", str(bad), "--images", "2"))
    assert "not an empty folder" in line
    line = one_line_error(trainer("synth", "--out", str(tmp_path / "s"), "--images", "2", "--width", "8"))
    assert "at least 16x16" in line
    line = one_line_error(trainer("synth", "--out", str(tmp_path / "s"), "--images", "0"))
    assert "at least 1" in line
