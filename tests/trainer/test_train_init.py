"""`cloud-trainer train DATA --init RUN_OR_BUNDLE` (SPEC §7): a new run starts from an earlier
model's weights — every layer, and the class heads per class, by name — instead of from nothing.
One tiny run is trained once; each --init then runs for 0 epochs, so its best weights are
exactly the weights it started from."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import pytest

pytestmark = [pytest.mark.needs_tf, pytest.mark.slow]  # trains a model (the earlier run)
pytest.importorskip("tensorflow")

from cloud_trainer.cli import main  # noqa: E402
from cloud_trainer.data import load_dataset, synthesize, write_dataset  # noqa: E402
from cloud_trainer.data.dataset import Annotation, Dataset, Sample  # noqa: E402
from cloud_trainer.init_from_bundle import inputs, onnx_runner  # noqa: E402
from cloud_trainer.model import is_class_layer  # noqa: E402
from cloud_trainer.train import load_model  # noqa: E402


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> Tuple[Dict[str, Any], str]:
    """(the JSON line on stdout, stderr) of `cloud-trainer ARGS`, which must succeed."""
    code = main(list(args))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out.strip().splitlines()[-1]), err


def one_line_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(list(args))
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if line.startswith("cloud-trainer: ")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def layer_weights(run: Path) -> Dict[str, List[np.ndarray]]:
    _, model, _ = load_model(run)
    return {layer.name: layer.get_weights() for layer in model.layers if layer.get_weights()}


@pytest.fixture(scope="module")
def earlier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """root/A: one epoch at 64 px on 24 small synthetic images (circle, square, triangle)."""
    root = tmp_path_factory.mktemp("init")
    synthesize(root / "data", images=24, seed=3, fmt="yolo", width=160, height=120)
    code = main(
        [
            "train",
            str(root / "data"),
            "--out",
            str(root / "A"),
            "--epochs",
            "1",
            "--img-size",
            "64",
            "--batch",
            "8",
        ]
    )
    assert code == 0
    return root


def test_same_classes_start_from_every_weight_of_the_run(
    earlier: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = earlier / "A", earlier / "B"
    summary, err = cli(
        capsys, "train", str(earlier / "data"), "--out", str(b), "--init", str(a), "--epochs", "0"
    )
    assert summary["epochs"] == 0
    assert (
        f"init: {a}/weights/best.weights.h5" in err
        and "class heads kept whole (circle, square, triangle)" in err
    )
    info = json.loads((b / "run.json").read_text())
    assert info["spec"] == json.loads((a / "run.json").read_text())["spec"]  # its input size: 64, not 320
    assert info["config"]["init"] == str(a.resolve())
    before, after = layer_weights(a), layer_weights(b)
    assert before.keys() == after.keys()
    for name, weights in before.items():
        assert all(np.array_equal(x, y) for x, y in zip(weights, after[name])), name


def test_changed_classes_keep_the_backbone_and_the_heads_of_the_classes_kept(
    earlier: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The new data: square and circle swapped, triangle renamed star, hexagon added."""
    old = load_dataset(earlier / "data", "yolo")
    new_id = {0: 1, 1: 0, 2: 2}  # circle, square, triangle -> square, circle, star, hexagon
    samples = [
        Sample(
            s.image,
            s.width,
            s.height,
            tuple(Annotation(new_id[b.class_id], b.xmin, b.ymin, b.xmax, b.ymax) for b in s.boxes),
        )
        for s in old.samples
    ]
    write_dataset(Dataset(["square", "circle", "star", "hexagon"], samples), earlier / "data2", "yolo")
    a, c = earlier / "A", earlier / "C"
    _, err = cli(capsys, "train", str(earlier / "data2"), "--out", str(c), "--init", str(a), "--epochs", "0")
    assert "class heads: kept square, circle; re-initialised for star, hexagon; dropped triangle" in err
    before, after = layer_weights(a), layer_weights(c)
    heads = [n for n in before if is_class_layer(n)]
    assert len(heads) == 3
    for name, weights in before.items():
        if name not in heads:
            assert all(np.array_equal(x, y) for x, y in zip(weights, after[name])), name
            continue
        (k0, b0), (k1, b1) = weights, after[name]
        assert k1.shape == k0.shape[:-1] + (4,)
        assert np.array_equal(k1[..., 0], k0[..., 1]) and b1[0] == b0[1]  # square
        assert np.array_equal(k1[..., 1], k0[..., 0]) and b1[1] == b0[0]  # circle
        prior = -np.log((1 - 0.01) / 0.01)  # a fresh head: every class starts at p = 0.01
        assert b1[2:] == pytest.approx([prior, prior], abs=1e-5)
        assert not np.array_equal(k1[..., 2], k0[..., 2])  # star is not the triangle


def test_init_from_the_bundle_exported_in_the_run(
    earlier: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = earlier / "A"
    cli(capsys, "export", str(a), "--formats", "onnx", "--no-evaluate")
    d = earlier / "D"
    _, err = cli(
        capsys, "train", str(earlier / "data"), "--out", str(d), "--init", str(a / "bundle"), "--epochs", "0"
    )
    assert (
        f"init: {a}/weights/best.weights.h5 (the weights of {a / 'bundle'}: its model.onnx gives the same"
        in err
    )
    before, after = layer_weights(a), layer_weights(d)
    assert all(np.array_equal(x, y) for n in before for x, y in zip(before[n], after[n]))

    data = str(earlier / "data")
    # A bundle this trainer did not make (another producer): refused.
    foreign = earlier / "foreign"
    shutil.copytree(a / "bundle", foreign)
    manifest = json.loads((foreign / "manifest.json").read_text())
    manifest["source"] = {"producer": "ultralytics 8.1.0"}
    (foreign / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(capsys, "train", data, "--out", str(earlier / "E"), "--init", str(foreign))
    assert "not exported by cloud-trainer" in line and "'ultralytics 8.1.0'" in line
    # The run trained on after the export: not the bundle's model any more.
    shutil.copytree(a, earlier / "A2")
    _, model, _ = load_model(earlier / "A2")
    for layer in model.layers:
        layer.set_weights([w + 0.01 for w in layer.get_weights()])
    for which in ("best", "last"):
        model.save_weights(earlier / "A2" / "weights" / f"{which}.weights.h5")
    line = one_line_error(
        capsys, "train", data, "--out", str(earlier / "E"), "--init", str(earlier / "A2" / "bundle")
    )
    assert "are no longer those the bundle was exported from" in line
    assert not (earlier / "E").exists()


def test_what_init_refuses(earlier: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a, data, out = str(earlier / "A"), str(earlier / "data"), str(tmp_path / "new")
    line = one_line_error(capsys, "train", data, "--out", out, "--init", a, "--img-size", "96")
    assert "--img-size 96 differs from 64" in line and "leave --img-size out" in line
    assert "--backbone mobilenetv2 differs" in one_line_error(
        capsys, "train", data, "--out", out, "--init", a, "--backbone", "mobilenetv2"
    )
    assert "--resume continues" in one_line_error(
        capsys, "train", data, "--out", out, "--init", a, "--resume"
    )
    assert "choose one" in one_line_error(
        capsys, "train", data, "--out", out, "--init", a, "--pretrained", "imagenet"
    )
    assert "is the --init run itself" in one_line_error(capsys, "train", data, "--out", a, "--init", a)
    assert "neither a training run" in one_line_error(capsys, "train", data, "--out", out, "--init", data)
    imported = tmp_path / "imported"  # a run.json as import-darknet writes one: not this trainer's model
    imported.mkdir()
    run_json = {"spec": {"kind": "darknet"}, "classes": ["a"], "input": {}, "decoder": {}, "config": {}}
    (imported / "run.json").write_text(json.dumps(run_json))
    line = one_line_error(capsys, "train", data, "--out", out, "--init", str(imported))
    assert "a 'darknet' model; --init continues the detectors `train` makes" in line
    assert not Path(out).exists()


def test_init_from_a_bundle_away_from_its_run(earlier: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bundle copied away from its run: the weights come from its fp32 ONNX model (batch norm
    folded into the convolutions), and the new run computes what that model computes."""
    a, elsewhere, run2 = earlier / "A", earlier / "elsewhere", earlier / "run2"
    if not (a / "bundle").is_dir():
        cli(capsys, "export", str(a), "--formats", "onnx", "--no-evaluate")
    shutil.copytree(a / "bundle", elsewhere)
    data = str(earlier / "data")
    for option, value in (("--img-size", "96"), ("--backbone", "mobilenetv2")):
        line = one_line_error(
            capsys, "train", data, "--out", str(run2), "--init", str(elsewhere), option, value
        )
        assert f"{option} {value} differs" in line
    summary, err = cli(capsys, "train", data, "--out", str(run2), "--init", str(elsewhere), "--epochs", "0")
    assert summary["epochs"] == 0
    assert (
        f"init: weights from {elsewhere.resolve()}/model.onnx (batch norm folded: BN layers start as" in err
    )
    assert "class heads kept whole (circle, square, triangle)" in err
    info = json.loads((run2 / "run.json").read_text())
    assert info["spec"] == json.loads((a / "run.json").read_text())["spec"]
    assert info["config"]["init"] == str(elsewhere.resolve())
    run_info, _, export = load_model(run2)
    onnx = onnx_runner(elsewhere / "model.onnx")
    diff = max(float(np.abs(np.asarray(export(x)) - onnx(x)).max()) for x in inputs(run_info.model_spec, 4))
    print(f"max |run2 export - bundle onnx| = {diff:.3g}")
    assert diff < 1e-4, diff

    # Its layers must map onto the trainer's model: a manifest that says 4 classes where the
    # ONNX model has 3 is refused.
    wrong = earlier / "wrong_labels"
    shutil.copytree(elsewhere, wrong)
    manifest = json.loads((wrong / "manifest.json").read_text())
    manifest["labels"] = [*manifest["labels"], "hexagon"]
    (wrong / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(capsys, "train", data, "--out", str(earlier / "E2"), "--init", str(wrong))
    assert f"{wrong.resolve()}/model.onnx: its layers do not map onto the trainer's model (" in line
    assert not (earlier / "E2").exists()


def test_init_infers_the_backbone_of_a_bundle_that_does_not_name_it(
    earlier: Path, models_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """shapes-fp32's manifest names no run and no model spec: the backbone is the one whose
    convolutions have its ONNX model's shapes. A bundle without an fp32 ONNX model is refused."""
    data, out = str(earlier / "data"), earlier / "from_shapes"
    _, err = cli(
        capsys, "train", data, "--out", str(out), "--init", str(models_dir / "shapes-fp32"), "--epochs", "0"
    )
    assert "init: weights from" in err and "shapes-fp32/model.onnx (batch norm folded" in err
    spec = json.loads((out / "run.json").read_text())["spec"]
    assert (spec["backbone"], spec["img_size"], spec["num_classes"]) == ("tiny", 160, 3)
    line = one_line_error(
        capsys, "train", data, "--out", str(earlier / "E3"), "--init", str(models_dir / "ssd")
    )
    assert "no fp32 onnx artifact to take the weights from" in line
