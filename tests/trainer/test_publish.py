"""`cloud-trainer keygen | package | publish`, publishing to a real S3 endpoint on loopback."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, List, Optional, Tuple

import pytest

from cloud_trainer.cli import main
from cloud_trainer.package import artifact_entry, repackage, write_bundle
from cloud_trainer.publish import PublishError, parse_s3_uri, publish
from edge_agent.bundle import load_bundle, signing
from edge_agent.errors import BundleError
from tests.s3server import S3

pytest.importorskip("boto3")
pytest.importorskip("tqdm")

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
WRITES = ("PutObject", "CreateMultipartUpload", "UploadPart", "CompleteMultipartUpload")


def make_bundle(d: Path, version: str = "1.0.0", big: int = 0, sign_key: Optional[Path] = None) -> Path:
    """A bundle of small fake model files (the loader never parses them); ``big`` adds an
    onnx file of that many bytes."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "model.tflite").write_bytes(b"tflite-bytes" * 100)
    (d / "model.xml").write_bytes(b"<net/>")
    (d / "model.bin").write_bytes(bytes(range(256)) * 4)
    artifacts = [
        artifact_entry("tflite", "int8", d / "model.tflite"),
        artifact_entry("openvino", "fp16", d / "model.xml", weights=d / "model.bin"),
    ]
    if big:
        block = hashlib.sha256(b"big").digest() * 32  # 1 KiB, not all zeros
        (d / "model.onnx").write_bytes((block * (big // len(block) + 1))[:big])
        artifacts.append(artifact_entry("onnx", "fp32", d / "model.onnx"))
    write_bundle(
        d,
        name="shapes",
        version=version,
        labels=["circle", "square", "triangle"],
        input={"width": 320, "height": 320},
        decoder={"type": "yolov8", "params": {"boxes": "normalized"}},
        artifacts=artifacts,
        metrics={"map50": 0.9},
        source={"dataset_sha256": "ab" * 32},
        sign_key=sign_key,
    )
    return d


def keypair(tmp_path: Path) -> Tuple[Path, Path]:
    private, public = signing.generate_keypair()
    (tmp_path / "k.key").write_bytes(private)
    (tmp_path / "k.pub").write_bytes(public)
    return tmp_path / "k.key", tmp_path / "k.pub"


class Calls:
    """Every S3 operation a client makes, in order, with the key it names."""

    def __init__(self, client: Any) -> None:
        self.calls: List[Tuple[str, Optional[str]]] = []
        client.meta.events.register("before-parameter-build.s3", self._record)

    def _record(self, params: Any, model: Any, **kwargs: Any) -> None:
        self.calls.append((model.name, params.get("Key")))

    def writes(self) -> List[Tuple[str, Optional[str]]]:
        return [c for c in self.calls if c[0] in WRITES]

    def clear(self) -> None:
        self.calls.clear()


def cli(*args: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cloud_trainer", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )


def one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert p.stdout == ""
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cloud-trainer: "), p.stderr
    return lines[0]


# --- keygen -----------------------------------------------------------------------------------


def test_keygen_writes_a_pair_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    name = tmp_path / "release"
    assert main(["keygen", str(name)]) == 0
    key, pub = tmp_path / "release.key", tmp_path / "release.pub"
    assert capsys.readouterr().out.splitlines() == [str(key), str(pub)]
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(pub.stat().st_mode) == 0o644
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert pub.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    sig = signing.sign(b"data", signing.load_private_key(key))
    assert signing.verify(b"data", sig, [signing.load_public_key(pub)])

    before = key.read_bytes(), pub.read_bytes()
    assert main(["keygen", str(name)]) == 1
    err = capsys.readouterr().err
    assert "already exist" in err and "--force" in err and len(err.strip().splitlines()) == 1
    assert (key.read_bytes(), pub.read_bytes()) == before

    pub.unlink()  # one of the two is enough to refuse
    assert main(["keygen", str(name)]) == 1
    assert key.read_bytes() == before[0] and not pub.exists()

    key.chmod(0o644)
    assert main(["keygen", str(name), "--force"]) == 0
    assert key.read_bytes() != before[0] and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert signing.verify(
        b"x", signing.sign(b"x", signing.load_private_key(key)), [signing.load_public_key(pub)]
    )


# --- package ----------------------------------------------------------------------------------


def test_package_recomputes_bumps_and_signs(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = make_bundle(tmp_path / "b")
    key, pub = keypair(tmp_path)
    before = json.loads((d / "manifest.json").read_text())
    (d / "model.tflite").write_bytes(b"re-exported model" * 7)  # a hand edit
    with pytest.raises(BundleError):
        load_bundle(d)

    assert main(["package", str(d), "--sign-key", str(key), "--version", "1.1.0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1
    line = json.loads(out[0])
    b = load_bundle(d)
    assert line == {
        "bundle": str(d),
        "name": "shapes",
        "version": "1.1.0",
        "manifest_sha256": b.manifest_sha256,
        "signed": True,
    }
    art = b.artifact("tflite")
    assert art.bytes == len(b"re-exported model" * 7)
    assert art.sha256 == hashlib.sha256(b"re-exported model" * 7).hexdigest()
    assert signing.verify(b.manifest_bytes, (d / "manifest.sig").read_bytes(), [signing.load_public_key(pub)])
    after = json.loads(b.manifest_bytes)
    for kept in ("labels", "input", "decoder", "defaults", "metrics", "source", "schema", "task"):
        assert after[kept] == before[kept], kept
    assert after["artifacts"][1] == before["artifacts"][1]  # the untouched openvino files

    # Nothing changed: the same bytes (and Ed25519 gives the same signature).
    sig = (d / "manifest.sig").read_bytes()
    repackage(d, sign_key=key)
    assert (d / "manifest.json").read_bytes() == b.manifest_bytes and (d / "manifest.sig").read_bytes() == sig

    # A new name without a key: the old signature no longer matches and goes.
    m = repackage(d, name="shapes-small")
    assert m.name == "shapes-small" and not (d / "manifest.sig").exists()
    assert main(["package", str(d)]) == 0
    assert json.loads(capsys.readouterr().out)["signed"] is False


def test_package_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    d = make_bundle(tmp_path / "b")
    manifest = (d / "manifest.json").read_bytes()
    (d / "model.bin").unlink()
    assert main(["package", str(d)]) == 1
    assert "model.bin: missing" in capsys.readouterr().err
    (d / "model.bin").write_bytes(b"w")
    assert main(["package", str(d), "--version", "one"]) == 1
    assert "is not a semantic version" in capsys.readouterr().err
    assert main(["package", str(d), "--sign-key", str(tmp_path / "nokey.key")]) == 1
    assert "not a readable unencrypted PEM private key" in capsys.readouterr().err
    assert (d / "manifest.json").read_bytes() == manifest  # a failed run changes nothing
    assert main(["package", str(tmp_path / "nowhere")]) == 1
    assert "not a bundle directory" in capsys.readouterr().err


# --- publish ----------------------------------------------------------------------------------


def test_publish_uploads_everything_manifest_last(tmp_path: Path, s3: S3) -> None:
    key, _ = keypair(tmp_path)
    d = make_bundle(tmp_path / "b", version="1.4.0", sign_key=key)
    calls = Calls(s3.client)
    res = publish(d, s3.uri("models"), client=s3.client, channel="stable")
    b = load_bundle(d)
    base = "models/shapes/1.4.0/"
    assert res.summary() == {
        "manifest": f"s3://{s3.bucket}/{base}manifest.json",
        "sha256": b.manifest_sha256,
        "version": "1.4.0",
        "channel": "stable",
    }
    files = ["model.tflite", "model.xml", "model.bin", "manifest.sig", "manifest.json"]
    assert s3.keys() == sorted([base + f for f in files] + ["models/shapes/channels/stable.json"])
    for f in files:
        assert s3.get(base + f) == (d / f).read_bytes(), f
        head = s3.client.head_object(Bucket=s3.bucket, Key=base + f)
        assert head["Metadata"]["sha256"] == hashlib.sha256((d / f).read_bytes()).hexdigest()
    assert (
        s3.client.head_object(Bucket=s3.bucket, Key=base + "manifest.json")["ContentType"]
        == "application/json"
    )

    puts = [k for op, k in calls.writes()]
    # The artifact files go up side by side (in any order), then the signature, the manifest, the channel.
    assert sorted(puts[:3]) == sorted(base + f for f in files[:3])
    assert puts[3:] == [base + f for f in files[3:]] + ["models/shapes/channels/stable.json"]  # manifest last
    channel = json.loads(s3.get("models/shapes/channels/stable.json"))
    assert channel == {"version": "1.4.0", "manifest": res.manifest, "sha256": b.manifest_sha256}

    # Again: nothing to upload, not even the channel pointer.
    calls.clear()
    again = publish(d, s3.uri("models/"), client=s3.client, channel="stable")
    assert calls.writes() == [] and again.uploaded == []
    assert again.summary() == res.summary()

    # A second channel for the same version writes only its pointer.
    calls.clear()
    publish(d, s3.uri("models"), client=s3.client, channel="beta")
    assert calls.writes() == [("PutObject", "models/shapes/channels/beta.json")]


class Overlap:
    """Watches a client's PutObject requests: each artifact file's request is held until another
    one is under way too (or 10 s have passed: then they are not side by side), and every start
    and end is written down in order."""

    def __init__(self, client: Any, artifacts: List[str]) -> None:
        self.artifacts = set(artifacts)
        self.events: List[Tuple[str, str]] = []  # ("start" | "end", key)
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()
        self._two = threading.Event()
        client.meta.events.register("before-parameter-build.s3.PutObject", self._start)
        client.meta.events.register("after-call.s3.PutObject", self._end)

    def _start(self, params: Any, context: Any, **kwargs: Any) -> None:
        key = context["overlap_key"] = params["Key"]
        with self._lock:
            self.events.append(("start", key))
            if key in self.artifacts:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                if self.in_flight >= 2:
                    self._two.set()
        if key in self.artifacts and not self._two.wait(10):
            self._two.set()  # one at a time: let the rest through (most_in_flight stays 1)

    def _end(self, context: Any, **kwargs: Any) -> None:
        key = context["overlap_key"]
        with self._lock:
            self.events.append(("end", key))
            if key in self.artifacts:
                self.in_flight -= 1

    def index(self, event: str, key: str) -> int:
        return self.events.index((event, key))


def test_publish_uploads_the_files_side_by_side_then_the_manifest(tmp_path: Path, s3: S3) -> None:
    key, _ = keypair(tmp_path)
    d = make_bundle(tmp_path / "b", sign_key=key)
    base = "m/shapes/1.0.0/"
    artifacts = [base + f for f in ("model.tflite", "model.xml", "model.bin")]
    overlap = Overlap(s3.client, artifacts)
    publish(d, s3.uri("m"), client=s3.client, channel="stable")
    assert overlap.most_in_flight >= 2, "the artifact files went up one after another"
    # Still: manifest.sig once every file is in place, manifest.json after it, the channel last.
    sig, manifest, channel = base + "manifest.sig", base + "manifest.json", "m/shapes/channels/stable.json"
    assert all(overlap.index("end", a) < overlap.index("start", sig) for a in artifacts)
    assert overlap.index("end", sig) < overlap.index("start", manifest)
    assert overlap.index("end", manifest) < overlap.index("start", channel)
    assert [e for e in overlap.events if e[0] == "start"][-1] == ("start", channel)


def test_publish_repairs_a_missing_or_altered_file(tmp_path: Path, s3: S3) -> None:
    d = make_bundle(tmp_path / "b")
    publish(d, s3.uri(), client=s3.client)
    s3.client.delete_object(Bucket=s3.bucket, Key="shapes/1.0.0/model.xml")
    s3.client.put_object(Bucket=s3.bucket, Key="shapes/1.0.0/model.bin", Body=b"other")
    calls = Calls(s3.client)
    res = publish(d, s3.uri(), client=s3.client)
    assert sorted(res.uploaded) == ["shapes/1.0.0/model.bin", "shapes/1.0.0/model.xml"]
    assert sorted(k for _, k in calls.writes()) == ["shapes/1.0.0/model.bin", "shapes/1.0.0/model.xml"]
    assert s3.get("shapes/1.0.0/model.bin") == (d / "model.bin").read_bytes()


def test_publish_multipart(tmp_path: Path, s3: S3) -> None:
    size = 5 * MiB + 123_457  # two parts: S3's smallest part is 5 MiB
    d = make_bundle(tmp_path / "b", big=size)
    calls = Calls(s3.client)
    publish(d, s3.uri("m"), client=s3.client, multipart_threshold=1 * MiB, multipart_chunksize=1 * MiB)
    ops = [c for c in calls.writes() if c[1] == "m/shapes/1.0.0/model.onnx"]
    assert ops[0][0] == "CreateMultipartUpload" and ops[-1][0] == "CompleteMultipartUpload"
    assert sum(op == "UploadPart" for op, _ in ops) == 2
    # Small files stay single requests.
    assert ("PutObject", "m/shapes/1.0.0/model.tflite") in calls.writes()
    assert s3.get("m/shapes/1.0.0/model.onnx") == (d / "model.onnx").read_bytes()
    assert calls.writes()[-1] == ("PutObject", "m/shapes/1.0.0/manifest.json")

    calls.clear()  # the multipart object is recognised too (its ETag is no md5: sha256 metadata)
    publish(d, s3.uri("m"), client=s3.client, multipart_threshold=1 * MiB)
    assert calls.writes() == []


def test_publish_refuses_to_replace_a_different_version(tmp_path: Path, s3: S3) -> None:
    d = make_bundle(tmp_path / "b", version="2.0.0")
    first = publish(d, s3.uri("p"), client=s3.client)
    (d / "model.tflite").write_bytes(b"retrained")
    repackage(d)  # same version, different content
    calls = Calls(s3.client)
    with pytest.raises(PublishError, match=r"shapes@2.0.0 is already published at .* versions are immutable"):
        publish(d, s3.uri("p"), client=s3.client)
    assert calls.writes() == []
    assert hashlib.sha256(s3.get("p/shapes/2.0.0/manifest.json")).hexdigest() == first.sha256

    res = publish(d, s3.uri("p"), client=s3.client, force=True)
    assert res.sha256 != first.sha256
    assert s3.get("p/shapes/2.0.0/manifest.json") == (d / "manifest.json").read_bytes()
    assert s3.get("p/shapes/2.0.0/model.tflite") == b"retrained"
    assert calls.writes()[-1] == ("PutObject", "p/shapes/2.0.0/manifest.json")


def test_publish_verifies_the_bundle_first(tmp_path: Path, s3: S3) -> None:
    d = make_bundle(tmp_path / "b")
    (d / "model.xml").write_bytes(b"<tampered/>")
    calls = Calls(s3.client)
    with pytest.raises(BundleError, match="model.xml: size"):
        publish(d, s3.uri(), client=s3.client)
    assert calls.calls == []


@pytest.mark.parametrize(
    "uri",
    [
        "http://bucket/models",
        "s3://",
        "s3:///models",
        "s3://b/models",
        "s3://bucket/a/../b",
        "s3://bucket/a//b",
    ],
)
def test_bad_s3_uris(uri: str) -> None:
    with pytest.raises(PublishError, match="is not an s3://BUCKET/PREFIX URI"):
        parse_s3_uri(uri)


def test_s3_uri_forms() -> None:
    assert parse_s3_uri("s3://bucket").key("n", "v") == "n/v"
    assert parse_s3_uri("s3://bucket/").key("n") == "n"
    assert parse_s3_uri("s3://my.bucket/a/b/").uri("n") == "s3://my.bucket/a/b/n"


# --- the command line, as a user runs it ------------------------------------------------------


@pytest.mark.slow
def test_cli_publish(tmp_path: Path, s3: S3) -> None:
    d = make_bundle(tmp_path / "b", version="3.1.0")
    args = ("publish", str(d), s3.uri("models"), "--endpoint-url", s3.endpoint_url)
    p = cli(*args, "--channel", "stable")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert out == {
        "manifest": f"s3://{s3.bucket}/models/shapes/3.1.0/manifest.json",
        "sha256": load_bundle(d).manifest_sha256,
        "version": "3.1.0",
        "channel": "stable",
    }
    assert "Traceback" not in p.stderr and "%|" not in p.stderr  # no progress bar off a TTY
    assert s3.get("models/shapes/3.1.0/manifest.json") == (d / "manifest.json").read_bytes()
    assert cli(*args).stdout == p.stdout.replace(', "channel": "stable"', "")

    (d / "model.xml").write_bytes(b"<changed/>")
    repackage(d)
    err = one_line_error(cli(*args))
    assert "versions are immutable" in err and "--force" in err
    assert json.loads(cli(*args, "--force", "-q").stdout)["sha256"] == load_bundle(d).manifest_sha256


def free_closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_cli_publish_errors(tmp_path: Path, s3: S3) -> None:
    d = make_bundle(tmp_path / "b")
    env = {**os.environ, "AWS_MAX_ATTEMPTS": "1"}

    err = one_line_error(cli("publish", str(d), "s3://no-such-bucket/m", "--endpoint-url", s3.endpoint_url))
    assert "bucket 'no-such-bucket' does not exist" in err

    url = f"http://127.0.0.1:{free_closed_port()}"
    err = one_line_error(cli("publish", str(d), s3.uri("m"), "--endpoint-url", url, env=env))
    assert f"cannot reach the S3 endpoint {url}" in err

    err = one_line_error(cli("publish", str(d), "https://bucket/m", "--endpoint-url", s3.endpoint_url))
    assert "'https://bucket/m' is not an s3://BUCKET/PREFIX URI" in err

    err = one_line_error(cli("publish", str(d), s3.uri("m"), "--endpoint-url", "127.0.0.1:9000"))
    assert "is not an http:// or https:// URL" in err

    err = one_line_error(
        cli("publish", str(d), s3.uri("m"), "--endpoint-url", s3.endpoint_url, "--channel", "A/B")
    )
    assert "channel 'A/B' does not match" in err

    no_creds = {k: v for k, v in env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    err = one_line_error(cli("publish", str(d), s3.uri("m"), "--endpoint-url", s3.endpoint_url, env=no_creds))
    assert "no AWS credentials found" in err

    err = one_line_error(
        cli("publish", str(d), s3.uri("m"), "--endpoint-url", s3.endpoint_url, "--profile", "nobody", env=env)
    )
    assert "nobody" in err

    err = one_line_error(
        cli("publish", str(tmp_path / "nowhere"), s3.uri("m"), "--endpoint-url", s3.endpoint_url)
    )
    assert "not a bundle directory" in err
    assert s3.keys() == []
