"""`cloud-trainer evaluate --bundle B [--bundle B2 …] DATA`: any bundles on any labelled dataset,
every artifact through edge_agent's runtimes, per class and side by side (SPEC §7). The shipped
shapes bundles on a small synthetic dataset: no TensorFlow, a few seconds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from cloud_trainer.cli import main
from cloud_trainer.data import load_dataset, synthesize, write_dataset
from cloud_trainer.evaluate import LabelMap
from cloud_trainer.package import repackage

pytest.importorskip("pycocotools")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same 20 synthetic images as Pascal VOC (root/voc) and, through the writer, as YOLO
    (root/yolo)."""
    root = tmp_path_factory.mktemp("eval")
    synthesize(root / "voc", images=20, seed=5, fmt="voc")
    write_dataset(load_dataset(root / "voc", "voc"), root / "yolo", "yolo")
    return root


@pytest.fixture(scope="module")
def variant(data: Path, shapes_bundle: Path) -> Path:
    """The shapes model as another bundle (renamed 2.0.0): labels 'Circle' (case differs),
    'square', 'pyramid' (for triangle); an EdgeTPU artifact no machine here runs; a manifest
    saying it was trained on the VOC dataset."""
    out = data / "renamed"
    shutil.copytree(shapes_bundle, out)
    (out / "reference.npz").unlink()
    shutil.copyfile(out / "model_int8.tflite", out / "model_int8_edgetpu.tflite")
    doc = json.loads((out / "manifest.json").read_text())
    doc["labels"] = ["Circle", "square", "pyramid"]
    doc["artifacts"].append(
        {
            "runtime": "edgetpu",
            "file": "model_int8_edgetpu.tflite",
            "precision": "int8",
            "sha256": "0" * 64,
            "bytes": 0,
        }
    )
    doc["source"]["dataset_sha256"] = load_dataset(data / "voc", "voc").sha256()
    (out / "manifest.json").write_text(json.dumps(doc))
    repackage(out, name="renamed", version="2.0.0")
    return out


def evaluate(capsys: pytest.CaptureFixture[str], *args: str) -> Tuple[Dict[str, Any], str]:
    """(the JSON line on stdout, stderr) of `cloud-trainer evaluate ARGS`."""
    code = main(["evaluate", *args])
    out, err = capsys.readouterr()
    assert code == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1, out
    return json.loads(lines[0]), err


def ran(bundle: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    return {r: a for r, a in bundle["artifacts"].items() if "skipped" not in a}


def mean(values: Any) -> float:
    values = list(values)
    return sum(values) / len(values)


@pytest.mark.slow  # every artifact of several bundles on 20 images
def test_one_bundle_on_the_same_data_in_two_formats(
    data: Path, shapes_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, err = evaluate(capsys, "--bundle", str(shapes_bundle), str(data / "voc"))
    yolo, _ = evaluate(capsys, "--bundle", str(shapes_bundle), str(data / "yolo"), "--format", "yolo")
    for doc in (voc, yolo):
        assert (doc["images"], doc["classes"], doc["split"]) == (20, ["circle", "square", "triangle"], "all")
        assert doc["common"] is None and doc["no_boxes"] == []
    [bundle] = voc["bundles"]
    assert (bundle["name"], bundle["version"]) == ("shapes", "1.0.0")
    assert bundle["labels"] == {"ignored": [], "not_covered": [], "matched_ignoring_case": {}}
    artifacts = ran(bundle)
    assert artifacts, bundle  # at least one runtime of the dev environment runs here
    for runtime, a in artifacts.items():
        per = a["per_class"]
        assert set(per) == {"circle", "square", "triangle"} and a["classes"] == 3
        # The mean is COCO's: over the classes, AP@0.5 above AP@[.5:.95]; the model finds shapes.
        assert a["map50"] == pytest.approx(mean(c["map50"] for c in per.values()), abs=2e-4)
        assert a["map50_95"] == pytest.approx(mean(c["map50_95"] for c in per.values()), abs=2e-4)
        assert all(0 <= c["map50_95"] <= c["map50"] <= 1 for c in per.values())
        assert a["map50"] > 0.3, (runtime, a)
        # The same boxes read from YOLO (normalised) as from VOC (pixels): the same numbers.
        other = yolo["bundles"][0]["artifacts"][runtime]
        assert other["map50"] == pytest.approx(a["map50"], abs=0.01), runtime
        assert other["map50_95"] == pytest.approx(a["map50_95"], abs=0.01), runtime
    table = err[err.index("AP@0.5/AP@[.5:.95]") :].splitlines()
    assert [line.split()[0] for line in table[2:6]] == ["mean", "circle", "square", "triangle"]
    assert "warning" not in err


@pytest.mark.slow  # every artifact of several bundles on 20 images
def test_bundles_side_by_side(
    data: Path, shapes_bundle: Path, variant: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc, err = evaluate(
        capsys,
        "--bundle",
        str(shapes_bundle),
        "--bundle",
        str(variant),
        "--bundle",
        str(shapes_bundle),
        str(data / "voc"),
    )
    first, renamed, again = doc["bundles"]
    assert first == again  # the same bundle twice: the same numbers
    assert renamed["labels"] == {
        "ignored": ["pyramid"],
        "not_covered": ["triangle"],
        "matched_ignoring_case": {"Circle": "circle"},
    }
    assert doc["common"] == ["circle", "square"]  # the bundles cover different classes
    skipped = renamed["artifacts"]["edgetpu"]
    assert skipped["precision"] == "int8" and skipped["skipped"]  # the reason
    assert f"[2] edgetpu: not run here: {skipped['skipped']}" in err
    for runtime, a in ran(renamed).items():
        mine = first["artifacts"][runtime]
        # The same model: the classes both cover get the same AP, whatever the labels are called.
        assert a["per_class"]["circle"] == mine["per_class"]["circle"]
        assert a["per_class"]["square"] == mine["per_class"]["square"]
        assert a["per_class"]["triangle"] is None and a["classes"] == 2
        assert a["map50"] == pytest.approx(
            mean(a["per_class"][c]["map50"] for c in ("circle", "square")), abs=2e-4
        )
        assert a["common"] == mine["common"] == {"map50": a["map50"], "map50_95": a["map50_95"]}
    rows = {line.split()[0]: line for line in err.splitlines() if line.startswith(("triangle", "circle"))}
    assert rows["triangle"].count("not covered") == len(ran(renamed))
    assert "not covered" not in rows["circle"]
    assert "label 'Circle' taken as class 'circle'" in err and "ignored: pyramid" in err
    # [2]'s manifest says it was trained on this dataset: every image of it is measured.
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "[2] was trained on this dataset" in warnings[0]


def test_the_validation_split(data: Path, variant: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc, err = evaluate(capsys, "--bundle", str(variant), str(data / "voc"), "--split", "val")
    _, val = load_dataset(data / "voc", "voc").split(0.2, 0)  # the trainer's split
    assert doc["split"] == "val" and doc["images"] == len(val.samples) < 20
    assert "warning" not in err  # the images it was trained on are left out
    doc, _ = evaluate(
        capsys, "--bundle", str(variant), str(data / "voc"), "--split", "val", "--val-fraction", "0.5"
    )
    assert doc["images"] == len(load_dataset(data / "voc", "voc").split(0.5, 0)[1].samples)


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["evaluate", *args])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("cloud-trainer: "), err
    return lines[0]


def test_the_argument_grammar(
    data: Path, shapes_bundle: Path, models_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    voc, b = str(data / "voc"), str(shapes_bundle)
    assert "to measure bundles on this dataset: cloud-trainer evaluate --bundle B" in one_line_error(
        capsys, voc
    )
    assert "none of its labels (red, green, blue) is a class of" in one_line_error(
        capsys, "--bundle", str(models_dir / "ssd"), voc
    )
    assert "--weights does not apply" in one_line_error(capsys, "--bundle", b, voc, "--weights", "last")
    assert "--no-update does not apply" in one_line_error(capsys, "--bundle", b, voc, "--no-update")
    assert "choose the images of --split val" in one_line_error(capsys, "--bundle", b, voc, "--seed", "3")
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text("{}")  # a directory holding run.json is a RUN
    assert "takes one --bundle" in one_line_error(capsys, "--bundle", b, "--bundle", b, str(run))
    assert "--split does not apply" in one_line_error(capsys, str(run), "--split", "val")
    assert "--format goes with --data" in one_line_error(capsys, str(run), "--format", "voc")


def test_labels_match_by_name() -> None:
    m = LabelMap.match(["Cat", "cat", "DOG", "bird"], ["dog", "cat", "fish"])
    # 'cat' exactly; 'Cat' would be a second 'cat' ignoring case: left out; 'DOG' is 'dog'.
    assert m.to_dataset == {1: 1, 2: 0}
    assert m.ignored == ["Cat", "bird"] and m.not_covered == ["fish"] and m.case_matched == {"DOG": "dog"}
