from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cloud_trainer.package import artifact_entry, write_bundle
from edge_agent.bundle import load_bundle, signing
from edge_agent.bundle.manifest import version_key
from edge_agent.errors import BundleError


@pytest.fixture
def bundle_dir(tmp_path: Path) -> Path:
    d = tmp_path / "b"
    d.mkdir()
    (d / "model.tflite").write_bytes(b"tflite-bytes" * 10)
    (d / "model.xml").write_bytes(b"<net/>")
    (d / "model.bin").write_bytes(b"\x00" * 64)
    write_bundle(
        d,
        name="shapes",
        version="1.4.0",
        labels=["circle", "square", "triangle"],
        input={"width": 320, "height": 320},
        decoder={"type": "yolov8", "params": {"boxes": "normalized"}},
        artifacts=[
            artifact_entry("tflite", "int8", d / "model.tflite"),
            artifact_entry("openvino", "fp16", d / "model.xml", weights=d / "model.bin"),
        ],
    )
    return d


def edit(d: Path, fn) -> None:  # type: ignore[no-untyped-def]
    doc = json.loads((d / "manifest.json").read_text())
    fn(doc)
    (d / "manifest.json").write_text(json.dumps(doc))


def test_loads_and_chooses_artifacts(bundle_dir: Path) -> None:
    b = load_bundle(bundle_dir)
    assert b.manifest.name == "shapes" and b.manifest.labels == ["circle", "square", "triangle"]
    assert b.artifact("openvino").weights == "model.bin"
    assert b.manifest.input.resize == "letterbox" and b.manifest.input.range == (0.0, 1.0)
    with pytest.raises(BundleError, match=r"no 'edgetpu' artifact \(the bundle has: tflite, openvino\)"):
        b.artifact("edgetpu")


@pytest.mark.parametrize("bad", ["../model.tflite", "/etc/passwd", "sub/model.tflite", "..", "a\\b"])
def test_unsafe_file_names_are_refused(bundle_dir: Path, bad: str) -> None:
    edit(bundle_dir, lambda d: d["artifacts"][0].update(file=bad))
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_dir)
    assert "manifest.json: artifacts.0.file:" in str(e.value) and "not a plain file name" in str(e.value)


def test_missing_file(bundle_dir: Path) -> None:
    (bundle_dir / "model.bin").unlink()
    with pytest.raises(BundleError, match=r"model.bin: missing \(listed by the openvino artifact\)"):
        load_bundle(bundle_dir)


def test_size_and_sha_mismatch(bundle_dir: Path) -> None:
    (bundle_dir / "model.tflite").write_bytes(b"x")
    with pytest.raises(BundleError, match=r"model.tflite: size 1 bytes does not match the manifest's 120"):
        load_bundle(bundle_dir)
    (bundle_dir / "model.tflite").write_bytes(b"X" * 120)
    with pytest.raises(BundleError, match=r"model.tflite: sha256 [0-9a-f]{64} does not match"):
        load_bundle(bundle_dir)
    # Restricting verification to one runtime skips the other artifacts' files.
    assert load_bundle(bundle_dir, runtimes=["openvino"]).manifest.name == "shapes"


def test_unknown_decoder_and_bad_params(bundle_dir: Path) -> None:
    edit(bundle_dir, lambda d: d["decoder"].update(type="yolov5"))
    with pytest.raises(BundleError, match="manifest.json: decoder: unknown decoder type 'yolov5'"):
        load_bundle(bundle_dir)
    edit(bundle_dir, lambda d: d["decoder"].update(type="yolov8", params={"boxes": "inches"}))
    with pytest.raises(BundleError, match="manifest.json: decoder: .*boxes"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(name="Shapes!"), "name: 'Shapes!' does not match"),
        (lambda d: d.update(version="1.4"), "version: '1.4' is not a semantic version"),
        (lambda d: d.update(labels=["a", "a"]), "labels: label 'a' appears twice"),
        (lambda d: d.update(schema=2), "schema"),
        (lambda d: d["input"].update(color="rgba"), "input.color"),
        (lambda d: d["input"].update(range=[1, 1]), "input.range: range [1.0, 1.0] is empty"),
        (lambda d: d["artifacts"][0].update(sha256="abc"), "artifacts.0.sha256: must be 64 lowercase hex"),
        (lambda d: d["artifacts"][1].pop("weights"), "an openvino artifact needs its weights"),
        (lambda d: d["artifacts"][0].update(file="manifest.json"), "would overwrite the manifest"),
        (lambda d: d.pop("labels"), "labels: Field required"),
        (lambda d: d["artifacts"][0].update(runtime="TF Lite"), "'TF Lite' is not an artifact runtime name"),
    ],
)
def test_manifest_errors_name_the_field(bundle_dir: Path, change, message: str) -> None:  # type: ignore[no-untyped-def]
    edit(bundle_dir, change)
    with pytest.raises(BundleError) as e:
        load_bundle(bundle_dir)
    assert str(bundle_dir / "manifest.json") in str(e.value)
    assert message in str(e.value)


def test_not_json_and_not_a_directory(tmp_path: Path, bundle_dir: Path) -> None:
    (bundle_dir / "manifest.json").write_text("{nope")
    with pytest.raises(BundleError, match="manifest.json: not valid UTF-8 JSON"):
        load_bundle(bundle_dir)
    with pytest.raises(BundleError, match="not a bundle directory"):
        load_bundle(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.json: missing"):
        load_bundle(tmp_path / "empty")


def test_signature_round_trip(tmp_path: Path, bundle_dir: Path) -> None:
    private, public = signing.generate_keypair()
    (tmp_path / "k.key").write_bytes(private)
    (tmp_path / "k.pub").write_bytes(public)
    other_private, other_public = signing.generate_keypair()
    (tmp_path / "o.pub").write_bytes(other_public)
    signed = tmp_path / "signed"
    shutil.copytree(bundle_dir, signed)
    doc = json.loads((signed / "manifest.json").read_text())
    write_bundle(
        signed,
        sign_key=tmp_path / "k.key",
        **{k: doc[k] for k in ("name", "version", "labels", "input", "decoder", "artifacts")},
    )
    b = load_bundle(signed)
    assert b.signature is not None
    key = signing.load_public_key(tmp_path / "k.pub")
    assert signing.verify(b.manifest_bytes, b.signature, [key])
    assert not signing.verify(b.manifest_bytes, b.signature, [signing.load_public_key(tmp_path / "o.pub")])
    assert not signing.verify(b.manifest_bytes + b" ", b.signature, [key])
    assert not signing.verify(b.manifest_bytes, b"not base64!", [key])
    with pytest.raises(signing.SignatureError, match="not a readable PEM public key"):
        signing.load_public_key(tmp_path / "k.key")


def test_version_order() -> None:
    versions = ["1.10.0", "1.2.0", "1.2.0-rc.1", "0.9.9", "2.0.0"]
    assert sorted(versions, key=version_key) == ["0.9.9", "1.2.0-rc.1", "1.2.0", "1.10.0", "2.0.0"]


def test_an_artifact_no_backend_here_runs_is_carried_not_refused(tmp_path: Path, shapes_bundle: Path) -> None:
    """A bundle may carry an artifact for an accelerator this device has no backend for (a newer
    agent's, or a plugin's): it still verifies, and the device serves one of the others."""
    import numpy as np

    from edge_agent.loading import open_detector

    d = tmp_path / "with-hef"
    shutil.copytree(shapes_bundle, d)
    (d / "model.hef").write_bytes(b"hailo" * 100)
    edit(d, lambda doc: doc["artifacts"].append(artifact_entry("hef", "int8", d / "model.hef")))
    bundle = load_bundle(d)
    assert bundle.artifact("hef").file == "model.hef"
    (d / "model.hef").write_bytes(b"tampered")  # its files are verified all the same
    with pytest.raises(BundleError, match="model.hef"):
        load_bundle(d)
    (d / "model.hef").write_bytes(b"hailo" * 100)
    detector, _ = open_detector(str(d), "auto")
    with detector:
        assert detector.backend.artifact is not None and detector.backend.artifact.runtime != "hef"
        detector.detect(np.zeros((32, 32, 3), np.uint8))
