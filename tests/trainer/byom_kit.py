"""What the `package --model` tests of the SSD-style and darknet kinds share: the two real
command lines run in-process (`cloud-trainer package`, `edge-agent detect`), test images made of
coloured grid cells, and the check that a bundle's detections are the expected ones.

The test models all follow one idea: an image is a grid of cells, and a cell filled with pure
red or pure blue is a detection of ``red`` or ``blue`` whose box is that cell, exactly (SSD
anchors, DetectionOutput priors and darknet anchors are all made the size of a cell, with zero
box regression), while black cells detect nothing. So a wrong colour order, value range,
label offset, anchor mask or box convention shows as a wrong label, a wrong box or no detection.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
import pytest

from cloud_trainer.cli import main as trainer
from edge_agent.bundle import load_bundle
from edge_agent.cli import main as agent

BGR = {"red": (0, 0, 255), "blue": (255, 0, 0), "white": (255, 255, 255)}
Cell = Tuple[int, int]  # (row, column)


def package(capsys: pytest.CaptureFixture[str], model: Path, out: Path, *extra: str) -> str:
    """``cloud-trainer package --model MODEL --out OUT …`` that must succeed: what it printed
    on stderr (a line per inferred fact), after checking its JSON line names the bundle."""
    code = trainer(["package", "--model", str(model), "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["bundle"] == str(out)
    return captured.err


def refused(capsys: pytest.CaptureFixture[str], model: Path, out: Path, *extra: str) -> str:
    """The one-line error (exit 1, no traceback) of a ``package --model`` that must fail; it
    leaves no bundle behind."""
    code = trainer(["package", "--model", str(model), "--out", str(out), *extra])
    err = capsys.readouterr().err
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloud-trainer: "), err
    assert not (out / "manifest.json").exists()
    return lines[0]


def manifest(bundle: Path) -> Dict[str, Any]:
    load_bundle(bundle)  # loads and verifies like the agent does
    doc: Dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return doc


def input_of(
    size: int, color: str, resize: str, value_range: Sequence[float], pad_value: int = 114
) -> Dict[str, Any]:
    """The manifest's input section expected for a square ``size`` model."""
    return {
        "width": size,
        "height": size,
        "color": color,
        "resize": resize,
        "pad_value": pad_value,
        "range": list(value_range),
    }


def artifacts_of(doc: Dict[str, Any]) -> List[Tuple[str, str, Optional[str], str]]:
    """(runtime, file, its weights or config file, precision) of each artifact of a manifest."""
    return [
        (a["runtime"], a["file"], a.get("weights") or a.get("config"), a["precision"])
        for a in doc["artifacts"]
    ]


def grid_image(path: Path, size: Tuple[int, int], cells: int, fill: Dict[Cell, str]) -> Path:
    """A black ``size`` (width, height) image cut into ``cells`` x ``cells``, with the cells of
    ``fill`` painted in their colour."""
    width, height = size
    image = np.zeros((height, width, 3), np.uint8)
    for (row, col), colour in fill.items():
        y0, y1 = row * height // cells, (row + 1) * height // cells
        x0, x1 = col * width // cells, (col + 1) * width // cells
        image[y0:y1, x0:x1] = BGR[colour]
    assert cv2.imwrite(str(path), image)
    return path


def cell_box(cell: Cell, cells: int) -> Tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) of a grid cell, normalised."""
    row, col = cell
    return col / cells, row / cells, (col + 1) / cells, (row + 1) / cells


def detect(capsys: pytest.CaptureFixture[str], bundle: Path, image: Path, *extra: str) -> Dict[str, Any]:
    """``edge-agent detect --bundle BUNDLE IMAGE``: its one detection message."""
    code = agent(["detect", "--bundle", str(bundle), *extra, str(image)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = captured.out.strip().splitlines()
    assert len(lines) == 1, captured.out
    message: Dict[str, Any] = json.loads(lines[0])
    return message


def assert_detections(
    message: Dict[str, Any],
    expected: Dict[str, Sequence[Cell]],
    cells: int,
    min_score: float = 0.9,
    tol: float = 1e-3,
) -> None:
    """The message holds exactly one detection per expected cell, with its label and the cell's
    box, scored at least ``min_score``; and nothing else."""
    found = sorted(
        (d["label"], tuple(round(d["box"][k], 6) for k in ("xmin", "ymin", "xmax", "ymax")), d["score"])
        for d in message["detections"]
    )
    want = sorted((label, cell_box(cell, cells)) for label, cs in expected.items() for cell in cs)
    assert [f[0] for f in found] == [w[0] for w in want], found
    for (label, box, score), (_, want_box) in zip(found, want):
        assert score >= min_score, (label, box, score)
        assert np.allclose(box, want_box, atol=tol), (label, box, want_box)


def detects(
    capsys: pytest.CaptureFixture[str],
    bundle: Path,
    image: Path,
    size: Tuple[int, int],
    cells: int,
    fill: Dict[Cell, str],
    *extra: str,
    expected: Optional[Dict[str, Sequence[Cell]]] = None,
) -> None:
    """A ``size`` image of ``cells`` x ``cells`` painted with ``fill`` (grid_image), through
    ``edge-agent detect --bundle BUNDLE [EXTRA…]``: exactly the ``expected`` detections, by default
    one per red or blue cell (white and black cells detect nothing)."""
    if expected is None:
        expected = {}
        for cell, colour in fill.items():
            if colour in ("red", "blue"):
                expected.setdefault(colour, []).append(cell)  # type: ignore[attr-defined]
    assert_detections(detect(capsys, bundle, grid_image(image, size, cells, fill), *extra), expected, cells)


def notes_of(err: str) -> List[str]:
    """The lines package printed about what it inferred (indented under the model's line)."""
    return [line.strip() for line in err.splitlines() if line.startswith("  ")]


def has_note(err: str, *parts: str) -> bool:
    """Whether one of package's notes holds every one of ``parts``."""
    return any(all(p in note for p in parts) for note in notes_of(err))
