"""`cloud-trainer zoo list | pull`: the catalogue, and pulling over HTTP. Nothing leaves this
machine: the tests build the model files (copies of the shipped test models), describe them in
a catalogue of their own (`--catalog FILE`, under URLs of a host that does not exist), and
serve them on loopback through `--mirror`, the same code path a real pull takes."""

from __future__ import annotations

import hashlib
import http.server
import importlib.util
import json
import shutil
import struct
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import cv2
import numpy as np
import pytest

from cloud_trainer.cli import main
from cloud_trainer.zoo import BUILTIN, MIRROR_ENV, ZooError, load_catalog, mirrored
from edge_agent.bundle import load_bundle, signing
from tests.bundle_http import BundleServer

# The OpenVINO entries package and verify through OpenVINO (not in every test environment: the
# Python 3.9 device check has only the TFLite and ONNX runtimes).
needs_openvino = pytest.mark.skipif(importlib.util.find_spec("openvino") is None, reason="no openvino")

HOST = "https://zoo.example.invalid"  # never resolved: every test fetches through --mirror
LABELS = ["red", "green", "blue"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def git_blob_sha1(path: Path) -> str:
    data = path.read_bytes()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def edgetpu_stand_in(model: Path) -> bytes:
    """``model`` as an EdgeTPU-compiled model looks to package: its custom op renamed
    edgetpu-custom-op (the op code's string shortened in place: a valid flatbuffer still). No
    interpreter here runs it, as none runs a real one without an EdgeTPU."""
    data = bytearray(model.read_bytes())
    old, new = b"TFLite_Detection_PostProcess", b"edgetpu-custom-op"
    at = data.find(struct.pack("<I", len(old)) + old + b"\0")
    assert at >= 0, f"{model}: no {old.decode()} op code"
    data[at : at + 4 + len(new) + 1] = struct.pack("<I", len(new)) + new + b"\0"
    return bytes(data)


@pytest.fixture
def www(tmp_path: Path, models_dir: Path) -> Path:
    """What the loopback server serves: a TFLite SSD (TFLite_Detection_PostProcess) with a stand-in
    for its EdgeTPU twin and a label file, and an OpenVINO IR with DetectionOutput."""
    root = tmp_path / "www"
    coral = root / "coral" / "0123abc"
    coral.mkdir(parents=True)
    shutil.copyfile(models_dir / "ssd" / "ssd.tflite", coral / "colour_ssd_quant_postprocess.tflite")
    (coral / "colour_ssd_compiled.tflite").write_bytes(edgetpu_stand_in(models_dir / "ssd" / "ssd.tflite"))
    (coral / "colour_labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    omz = root / "omz" / "models_bin" / "colour-ovssd" / "FP32"
    omz.mkdir(parents=True)
    shutil.copyfile(models_dir / "ovssd" / "ovssd.xml", omz / "colour-ovssd.xml")
    shutil.copyfile(models_dir / "ovssd" / "ovssd.bin", omz / "colour-ovssd.bin")
    return root


@pytest.fixture
def server(www: Path) -> Iterator[BundleServer]:
    with BundleServer(www) as s:
        yield s


def coral_entry(www: Path, **changes: Any) -> Dict[str, Any]:
    """A catalogue entry for the TFLite SSD: the model with its sha256, the twin with a git blob
    id only (its sha256 is computed and recorded), the labels with size and sha256."""
    d = www / "coral" / "0123abc"
    model, twin, labels = (
        d / "colour_ssd_quant_postprocess.tflite",
        d / "colour_ssd_compiled.tflite",  # saved as colour_ssd_quant_postprocess_edgetpu.tflite
        d / "colour_labels.txt",
    )
    entry = {
        "name": "colour-ssd",
        "description": "a 64x64 SSD that finds coloured cells",
        "detects": "red, green, blue",
        "runtimes": ["tflite", "edgetpu"],
        "license": "Apache-2.0",
        "license_url": f"{HOST}/coral/LICENSE",
        "source": f"{HOST}/coral/",
        "files": [
            {
                "url": f"{HOST}/coral/0123abc/{model.name}",
                "role": "model",
                "digests": {"sha256": sha256(model)},
            },
            {
                "url": f"{HOST}/coral/0123abc/{twin.name}",
                "role": "edgetpu",
                "digests": {"git-blob-sha1": git_blob_sha1(twin)},
            },
            {
                "url": f"{HOST}/coral/0123abc/{labels.name}",
                "role": "labels",
                "size": labels.stat().st_size,
                "digests": {"sha256": sha256(labels)},
            },
        ],
        "labels_source": f"{HOST}/coral/0123abc/{labels.name}",
        "checksums_source": "computed by the test",
        "decoder": "ssd",
    }
    entry.update(changes)
    return entry


def omz_entry(www: Path) -> Dict[str, Any]:
    d = www / "omz" / "models_bin" / "colour-ovssd" / "FP32"
    files = []
    for path, role in ((d / "colour-ovssd.xml", "model"), (d / "colour-ovssd.bin", "weights")):
        digest = hashlib.sha384(path.read_bytes()).hexdigest()
        url = f"{HOST}/omz/models_bin/colour-ovssd/FP32/{path.name}"
        files.append({"url": url, "role": role, "size": path.stat().st_size, "digests": {"sha384": digest}})
    return {
        "name": "colour-ovssd",
        "description": "an OpenVINO IR SSD that finds coloured cells",
        "detects": "red, green, blue",
        "runtimes": ["openvino"],
        "license": "Apache-2.0",
        "license_url": f"{HOST}/omz/LICENSE",
        "source": f"{HOST}/omz/",
        "files": files,
        "labels": LABELS,
        "labels_source": "the test",
        "checksums_source": "computed by the test",
        "decoder": "openvino-ssd",
    }


def write_catalog(tmp_path: Path, *entries: Dict[str, Any]) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps({"models": list(entries)}))
    return path


def cli(argv: List[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line_error(code: int, err: str) -> str:
    assert code == 1, err
    lines = [line for line in err.strip().splitlines() if line.startswith("cloud-trainer: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def nothing_left(out: Path, tmp_root: Path) -> None:
    """``out`` was not made (or is still empty), no staging directory beside it, and no download
    directory left in the temporary area."""
    assert not out.exists() or not any(out.iterdir())
    assert not [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not list(tmp_root.glob("edgewatch-zoo-*"))


@pytest.fixture
def tmp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary area pull downloads into, here so that a test sees what it leaves behind."""
    root = tmp_path / "tmp"
    root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    return root


# --- list ---------------------------------------------------------------------------------------


def test_list_shows_every_entry_with_its_licence_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(["zoo", "list"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "DETECTS", "RUNTIMES", "SIZE", "LICENSE", "SOURCE"]
    for entry in BUILTIN:
        row = next(line for line in lines if line.startswith(entry.name + " "))
        assert entry.license in row and entry.source in row and ",".join(entry.runtimes) in row
    assert {e.name for e in BUILTIN} >= {"coral-ssd-mobilenet-v2-coco", "omz-person-detection-retail-0013"}

    code, out, _ = cli(["zoo", "list", "--json"], capsys)
    doc = json.loads(out)
    by_name = {m["name"]: m for m in doc["models"]}
    assert set(by_name) == {e.name for e in BUILTIN}
    coral = by_name["coral-ssd-mobilenet-v2-coco"]
    assert coral["license"] == "Apache-2.0" and "LICENSE" in coral["license_url"]
    assert {f["role"] for f in coral["files"]} == {"model", "edgetpu", "labels"}


def test_every_builtin_file_is_pinned_and_checkable() -> None:
    """Each URL names an immutable version (a commit, a release directory) over https, and each
    file carries at least one digest pull checks."""
    for entry in BUILTIN:
        assert entry.license and entry.license_url.startswith("https://")
        assert entry.labels or entry.file("labels"), entry.name
        for f in entry.files:
            assert f.url.startswith("https://"), f.url
            assert f.digests, f"{entry.name}: {f.url} has no digest"
            assert "/master/" not in f.url and "/latest/" not in f.url, f.url


def test_list_takes_entries_from_a_catalog_file(
    www: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = write_catalog(tmp_path, coral_entry(www))
    code, out, _ = cli(["zoo", "list", "--catalog", str(catalog)], capsys)
    assert code == 0
    row = next(line for line in out.splitlines() if line.startswith("colour-ssd "))
    assert "red, green, blue" in row and "tflite,edgetpu" in row and "unknown" in row  # a size is missing


def test_a_bad_catalog_file_is_a_one_line_error(
    www: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = coral_entry(www)
    entry["files"][0]["digests"] = {"md5": "0" * 32}
    catalog = write_catalog(tmp_path, entry)
    line = one_line_error(*cli(["zoo", "list", "--catalog", str(catalog)], capsys)[::2])
    assert str(catalog) in line and "models.0.files.0.digests" in line and "'md5'" in line


# --- pull ---------------------------------------------------------------------------------------


def test_pull_downloads_verifies_and_packages(
    www: Path, server: BundleServer, tmp_path: Path, tmp_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    catalog = write_catalog(tmp_path, coral_entry(www))
    out = tmp_path / "bundles" / "colour-ssd"
    argv = ["zoo", "pull", "colour-ssd", "--out", str(out), "--catalog", str(catalog), "--mirror", server.url]
    code, stdout, err = cli(argv, capsys)
    assert code == 0, err
    summary = json.loads(stdout)

    bundle = load_bundle(out)
    m = bundle.manifest
    assert m.name == "colour-ssd" and m.version == "1.0.0" and list(m.labels) == LABELS
    assert m.decoder.type == "ssd"
    assert sorted(a.runtime for a in m.artifacts) == ["edgetpu", "tflite"]
    twin = next(a for a in m.artifacts if a.runtime == "edgetpu")
    assert twin.file == "colour_ssd_quant_postprocess_edgetpu.tflite"
    zoo = m.source["zoo"]
    assert zoo["name"] == "colour-ssd" and zoo["license"] == "Apache-2.0"
    assert [f["url"] for f in zoo["files"]] == [f["url"] for f in coral_entry(www)["files"]]

    files = {f["role"]: f for f in summary["files"]}
    assert files["model"]["verified"] == ["sha256"] and files["model"]["sha256_source"] == "catalogue"
    assert files["labels"]["verified"] == ["size", "sha256"]
    assert files["edgetpu"]["verified"] == ["git-blob-sha1"]
    assert files["edgetpu"]["sha256_source"] == "computed here"
    assert files["edgetpu"]["sha256"] == sha256(www / "coral" / "0123abc" / "colour_ssd_compiled.tflite")
    assert files["edgetpu"]["sha256"] == twin.sha256
    assert files["model"]["fetched_from"].startswith(server.url + "/coral/0123abc/")
    assert summary["bundle"] == str(out) and summary["license"] == "Apache-2.0"
    assert summary["runtimes"] == [a.runtime for a in m.artifacts]
    assert "not evaluated" in summary["evaluation"]["skipped"]

    assert "licence Apache-2.0" in err
    assert "not in the catalogue: computed here and recorded" in err  # the twin's sha256
    assert f"cloud-trainer evaluate --bundle {out} DATA" in err
    assert "edgetpu: not run here" in err  # no EdgeTPU on a test machine
    nothing_left(tmp_path / "bundles" / "other", tmp_root)  # no staging or download directory left


def test_pull_signs_names_and_versions_the_bundle(
    www: Path, server: BundleServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = signing.write_keypair(tmp_path / "release")
    catalog = write_catalog(tmp_path, coral_entry(www))
    out = tmp_path / "b"
    argv = ["zoo", "pull", "colour-ssd", "--out", str(out), "--catalog", str(catalog), "--mirror", server.url]
    code, stdout, err = cli(
        [*argv, "--sign-key", str(private), "--name", "cells", "--version", "2.1.0"], capsys
    )
    assert code == 0, err
    assert json.loads(stdout)["signed"] is True
    bundle = load_bundle(out)
    assert (bundle.manifest.name, bundle.manifest.version) == ("cells", "2.1.0")
    assert bundle.signature is not None
    assert signing.verify(bundle.manifest_bytes, bundle.signature, [signing.load_public_key(public)])


def test_pull_shows_progress(
    www: Path, server: BundleServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("tqdm")
    from cloud_trainer.zoo import pull

    catalog = load_catalog([write_catalog(tmp_path, coral_entry(www))])
    pull(catalog["colour-ssd"], tmp_path / "b", mirror=server.url, progress=True, echo=lambda line: None)
    err = capsys.readouterr().err
    assert "colour_ssd_quant_postprocess.tflite: 100%" in err  # the tqdm bar, one per file
    assert "colour_labels.txt: 100%" in err


@needs_openvino
def test_pull_openvino_ir_with_inline_labels(
    www: Path,
    server: BundleServer,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An entry without a label file: its labels come from the catalogue. The mirror comes from
    the environment this time."""
    monkeypatch.setenv(MIRROR_ENV, server.url)
    catalog = write_catalog(tmp_path, omz_entry(www))
    out = tmp_path / "ov"
    code, stdout, err = cli(
        ["zoo", "pull", "colour-ovssd", "--out", str(out), "--catalog", str(catalog)], capsys
    )
    assert code == 0, err
    m = load_bundle(out).manifest
    assert list(m.labels) == LABELS and m.decoder.type == "openvino-ssd"
    (art,) = m.artifacts
    assert (art.runtime, art.file, art.weights) == ("openvino", "colour-ovssd.xml", "colour-ovssd.bin")
    assert all(f["verified"] == ["size", "sha384"] for f in json.loads(stdout)["files"])


def test_pull_evaluates_on_a_dataset(
    www: Path, server: BundleServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pycocotools")
    pytest.importorskip("ai_edge_litert")
    data = red_cells_dataset(tmp_path / "data")
    catalog = write_catalog(tmp_path, coral_entry(www))
    out = tmp_path / "b"
    argv = ["zoo", "pull", "colour-ssd", "--out", str(out), "--catalog", str(catalog), "--mirror", server.url]
    code, stdout, err = cli([*argv, "--eval", str(data), "--format", "coco"], capsys)
    assert code == 0, err
    evaluation = json.loads(stdout)["evaluation"]
    (result,) = evaluation["bundles"]
    tflite = result["artifacts"]["tflite"]
    assert tflite["per_class"]["red"]["map50"] > 0.9, tflite
    assert "skipped" in result["artifacts"]["edgetpu"]


def red_cells_dataset(d: Path) -> Path:
    """Eight 64x64 images with one red cell of a 4x4 grid each, as a COCO dataset."""
    from cloud_trainer.data import Annotation, Dataset, Sample, write_dataset

    src = d.parent / "red-cells"
    src.mkdir()
    samples = []
    for i in range(8):
        row, col = divmod(i * 5 % 16, 4)
        image = np.zeros((64, 64, 3), np.uint8)
        image[row * 16 : (row + 1) * 16, col * 16 : (col + 1) * 16] = (0, 0, 255)  # BGR red
        path = src / f"cell{i}.png"
        cv2.imwrite(str(path), image)
        box = Annotation(0, col * 16, row * 16, (col + 1) * 16, (row + 1) * 16)
        samples.append(Sample(path, 64, 64, (box,)))
    write_dataset(Dataset(list(LABELS), samples, "red cells"), d, "coco")
    return d


@pytest.mark.parametrize(
    "change, expected",
    [
        ("sha256", "sha256 mismatch: expected {wrong}, got {right}"),
        ("size", "size mismatch: expected 5 bytes, the server announces {size}"),
        ("git-blob-sha1", "git-blob-sha1 mismatch: expected {wrong40}, got {blob}"),
    ],
)
def test_a_file_that_does_not_match_is_refused_and_nothing_is_left(
    change: str,
    expected: str,
    www: Path,
    server: BundleServer,
    tmp_path: Path,
    tmp_root: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    entry = coral_entry(www)
    model = www / "coral" / "0123abc" / "colour_ssd_quant_postprocess.tflite"
    wrong = hashlib.sha256(b"not the model").hexdigest()
    if change == "size":
        entry["files"][0]["size"] = 5
    elif change == "git-blob-sha1":
        entry["files"][0]["digests"] = {"git-blob-sha1": wrong[:40]}
    else:
        entry["files"][0]["digests"] = {"sha256": wrong}
    catalog = write_catalog(tmp_path, entry)
    out = tmp_path / "out"
    out.mkdir()  # an empty --out stays empty
    argv = ["zoo", "pull", "colour-ssd", "--out", str(out), "--catalog", str(catalog), "--mirror", server.url]
    line = one_line_error(*cli(argv, capsys)[::2])
    url = f"{server.url}/coral/0123abc/{model.name}"
    detail = expected.format(
        wrong=wrong,
        wrong40=wrong[:40],
        right=sha256(model),
        size=model.stat().st_size,
        blob=git_blob_sha1(model),
    )
    assert line == f"cloud-trainer: {url}: {detail}"
    nothing_left(out, tmp_root)


def test_a_missing_file_is_a_clear_error(
    www: Path, server: BundleServer, tmp_path: Path, tmp_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = write_catalog(tmp_path, coral_entry(www))
    (www / "coral" / "0123abc" / "colour_labels.txt").unlink()  # the last file: two arrived first
    out = tmp_path / "out"
    argv = ["zoo", "pull", "colour-ssd", "--out", str(out), "--catalog", str(catalog), "--mirror", server.url]
    line = one_line_error(*cli(argv, capsys)[::2])
    assert line == f"cloud-trainer: {server.url}/coral/0123abc/colour_labels.txt: HTTP 404 File not found"
    nothing_left(out, tmp_root)


def test_a_server_that_is_not_there_is_a_clear_error(
    www: Path, tmp_path: Path, tmp_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with BundleServer(www) as gone:
        url = gone.url
    catalog = write_catalog(tmp_path, coral_entry(www))
    out = tmp_path / "out"
    argv = ["zoo", "pull", "colour-ssd", "--out", str(out), "--catalog", str(catalog), "--mirror", url]
    line = one_line_error(*cli([*argv, "--timeout", "5"], capsys)[::2])
    assert line.startswith(
        f"cloud-trainer: {url}/coral/0123abc/colour_ssd_quant_postprocess.tflite: cannot fetch: "
    )
    nothing_left(out, tmp_root)


def test_a_download_that_breaks_off_or_stalls_is_a_clear_error(
    www: Path, tmp_path: Path, tmp_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = www / "coral" / "0123abc" / "colour_ssd_quant_postprocess.tflite"

    class Short(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # announces the whole file, sends half, hangs up
            data = model.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])

        def log_message(self, *args: Any) -> None:
            pass

    short = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Short)
    threading.Thread(target=short.serve_forever, args=(0.05,), daemon=True).start()
    catalog = write_catalog(tmp_path, coral_entry(www))
    out = tmp_path / "out"
    argv = ["zoo", "pull", "colour-ssd", "--out", str(out), "--catalog", str(catalog)]
    try:
        mirror = f"http://127.0.0.1:{short.server_address[1]}"
        line = one_line_error(*cli([*argv, "--mirror", mirror], capsys)[::2])
    finally:
        short.shutdown()
        short.server_close()
    size = model.stat().st_size
    url = f"{mirror}/coral/0123abc/{model.name}"
    assert line in (
        f"cloud-trainer: {url}: the connection closed after {size // 2} of {size} bytes",
        f"cloud-trainer: {url}: the download broke off after {size // 2} bytes: "
        f"IncompleteRead({size // 2} bytes read, {size - size // 2} more expected)",
    )
    nothing_left(out, tmp_root)

    with BundleServer(www, trickle=(1, 5.0)) as slow:  # a byte every 5 s; the limit is 0.5 s
        line = one_line_error(*cli([*argv, "--mirror", slow.url, "--timeout", "0.5"], capsys)[::2])
    assert line == f"cloud-trainer: {slow.url}/coral/0123abc/{model.name}: stalled: nothing arrived for 0.5 s"
    nothing_left(out, tmp_root)


def test_pull_refuses_a_full_out_dir_and_an_unknown_name_before_downloading(
    www: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    catalog = write_catalog(tmp_path, coral_entry(www))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    mirror = "http://127.0.0.1:9"  # nothing listens: a download would fail differently
    argv = ["zoo", "pull", "colour-ssd", "--out", str(out), "--catalog", str(catalog), "--mirror", mirror]
    line = one_line_error(*cli(argv, capsys)[::2])
    assert line == f"cloud-trainer: {out}: not an empty directory; zoo pull writes a new bundle directory"
    assert [p.name for p in out.iterdir()] == ["keep.txt"]

    argv[4] = str(tmp_path / "new")
    line = one_line_error(*cli([*argv, "--eval", str(tmp_path / "no-data")], capsys)[::2])
    assert str(tmp_path / "no-data") in line and mirror not in line  # the dataset, before any download
    assert not (tmp_path / "new").exists()

    line = one_line_error(*cli(["zoo", "pull", "no-such-model", "--out", str(tmp_path / "x")], capsys)[::2])
    assert line.startswith(
        "cloud-trainer: 'no-such-model': no such model in the zoo; `cloud-trainer zoo list` shows "
    )
    assert "coral-ssd-mobilenet-v2-coco" in line


@pytest.mark.parametrize(
    "url, mirror, expected",
    [
        (
            "https://storage.example.org/repo/2022.3/a/b.xml",
            None,
            "https://storage.example.org/repo/2022.3/a/b.xml",
        ),
        (
            "https://storage.example.org/repo/a.xml",
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8000/repo/a.xml",
        ),
        ("https://h.example/x/a.bin?dl=1", "https://mirror.lan/zoo/", "https://mirror.lan/zoo/x/a.bin?dl=1"),
        ("https://h.example/x/a.bin", "file:///srv/zoo", "file:///srv/zoo/x/a.bin"),
    ],
)
def test_mirror_replaces_scheme_and_host(url: str, mirror: Optional[str], expected: str) -> None:
    assert mirrored(url, mirror) == expected


def test_a_bad_mirror_is_refused() -> None:
    with pytest.raises(ZooError, match="mirror 'ftp://x': not an http"):
        mirrored("https://h.example/a", "ftp://x")


@needs_openvino
def test_pull_from_a_file_mirror(www: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A copy of the files on disk (an air-gapped site) serves as a mirror too."""
    catalog = write_catalog(tmp_path, omz_entry(www))
    out = tmp_path / "ov"
    argv = ["zoo", "pull", "colour-ovssd", "--out", str(out), "--catalog", str(catalog)]
    code, _, err = cli([*argv, "--mirror", www.as_uri()], capsys)
    assert code == 0, err
    assert load_bundle(out).manifest.name == "colour-ovssd"
