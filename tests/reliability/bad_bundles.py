"""The bad-bundle catalogue (SPEC §6.2, §6.5): every way a deploy's bundle or its server can be
wrong, each sent as a signed deploy to a device serving v1, from file://, a loopback HTTP
server and a real S3 endpoint (moto) on loopback, plus a full disk (the store on a tmpfs).

Wrong outcomes, each counted per case:
- *activated*: a bad bundle ended ``succeeded``;
- *wrong stage*: it failed, but not at the stage where it should (a broken artifact that fails
  at ``verifying`` would be fine by luck; one that only fails at ``activating`` would not);
- *no ending*: no ``failed`` within the stage's limit;
- *v1 stopped serving*: after the failure the device does not answer that v1 serves;
- *store changed*: the installed versions or the current one differ from before the deploy,
  or staging files are left;
- *tracebacks*: the agent logged a traceback (bad input is not a bug).
Then a good deploy from S3 must succeed: the device is still fully able to take a model."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

from edge_agent.bundle.signing import generate_keypair
from tests.agent_world import V1, V2, World, make_world, publish_bundle
from tests.bundle_http import BundleServer
from tests.bundle_variants import variant
from tests.s3server import FAKE_ENV, S3, moto_endpoint, new_bucket

from .report import Row

NAME = "bad-bundle catalogue"
STALL_S = 2.0


@dataclass
class Case:
    name: str
    stages: Tuple[str, ...]  # where it may fail
    manifest: Callable[[World, Path, S3], str]  # makes the bundle, returns the deploy's URI
    args: Dict[str, object] = field(default_factory=dict)


def _file(path: Path) -> str:
    return (path / "manifest.json").as_uri()


def _bad(world: World, root: Path, name: str, **kwargs: object) -> Path:
    """v2 republished as 1.2.0 in ``root/name``, signed by the operator, with ``kwargs``."""
    kwargs.setdefault("sign_key", world.root / "op.key")
    return variant(world.bundles[V2], root / name, version="1.2.0", **kwargs)  # type: ignore[arg-type]


def _corrupt_after_signing(world: World, root: Path, name: str, change: Callable[[bytes], bytes]) -> str:
    bundle = _bad(world, root, name)
    model = bundle / "model.onnx"
    model.write_bytes(change(model.read_bytes()))
    return _file(bundle)


def _rewrite_manifest(world: World, root: Path, name: str, edit: Callable[[dict], dict]) -> str:
    from edge_agent.bundle import signing

    bundle = _bad(world, root, name)
    doc = edit(json.loads((bundle / "manifest.json").read_text()))
    data = json.dumps(doc).encode()
    (bundle / "manifest.json").write_bytes(data)
    (bundle / "manifest.sig").write_bytes(signing.sign(data, signing.load_private_key(world.root / "op.key")))
    return _file(bundle)


def _stranger(world: World, root: Path) -> str:
    private, _ = generate_keypair()
    (root / "stranger.key").write_bytes(private)
    return _file(_bad(world, root, "stranger", sign_key=root / "stranger.key"))


def _unsigned(world: World, root: Path) -> str:
    bundle = _bad(world, root, "unsigned")
    (bundle / "manifest.sig").unlink()
    return _file(bundle)


def _path_escape(doc: dict) -> dict:
    doc["artifacts"][0]["file"] = "../../etc/passwd"
    return doc


def _more_labels(doc: dict) -> dict:
    doc["labels"] = [f"class{i}" for i in range(7)]
    return doc


CASES: List[Case] = [
    Case(
        "wrong manifest sha256",
        ("verifying",),
        lambda w, r, s: _file(_bad(w, r, "sha")),
        {"sha256": "0" * 64},
    ),
    Case("signed by a stranger", ("verifying",), lambda w, r, s: _stranger(w, r)),
    Case("unsigned", ("verifying",), lambda w, r, s: _unsigned(w, r)),
    Case(
        "garbage model, hashed and signed",
        ("loading",),
        lambda w, r, s: _file(_bad(w, r, "garbage", replace={"model_int8.tflite": b"\0garbage" * 64})),
    ),
    Case(
        "file does not match its sha256",
        ("verifying",),
        lambda w, r, s: _corrupt_after_signing(w, r, "flipped", lambda b: b[:-1] + bytes([b[-1] ^ 1])),
    ),
    Case(
        "truncated file",
        ("verifying",),
        lambda w, r, s: _corrupt_after_signing(w, r, "truncated", lambda b: b[: len(b) // 2]),
    ),
    Case(
        "manifest not JSON",
        ("verifying",),
        lambda w, r, s: _corrupt_manifest(w, r),
    ),
    Case(
        "file name escapes the bundle",
        ("verifying",),
        lambda w, r, s: _rewrite_manifest(w, r, "escape", _path_escape),
    ),
    Case(
        "labels that do not fit the outputs",
        ("loading", "warming"),
        lambda w, r, s: _rewrite_manifest(w, r, "labels", _more_labels),
    ),
    Case(
        "over store.max_bundle_mb",
        ("downloading",),
        lambda w, r, s: _file(_bad(w, r, "huge", replace={"model.onnx": os.urandom(3 << 20)})),
    ),
    Case(
        "a downgrade without allow_downgrade",
        ("verifying",),
        lambda w, r, s: _file(variant(w.bundles[V2], r / "old", version="0.9.0", sign_key=w.root / "op.key")),
    ),
    Case("no such manifest (HTTP 404)", ("downloading",), lambda w, r, s: _server(r, w.bundles[V2], "404")),
    Case(
        "a server that never answers", ("downloading",), lambda w, r, s: _server(r, w.bundles[V2], "silent")
    ),
    Case("a server that trickles", ("downloading",), lambda w, r, s: _server(r, w.bundles[V2], "trickle")),
    Case("no such key in S3", ("downloading",), lambda w, r, s: s.uri("models/shapes/9.9.9/manifest.json")),
    Case(
        "S3 bundle with a wrong sha256",
        ("verifying",),
        lambda w, r, s: _publish(s, w.bundles[V2]),
        {"sha256": "1" * 64},
    ),
]

_servers: List[BundleServer] = []


def _corrupt_manifest(world: World, root: Path) -> str:
    bundle = _bad(world, root, "notjson")
    (bundle / "manifest.json").write_bytes(b'{"schema": 1, "name": ')
    return _file(bundle)


def _server(root: Path, bundle: Path, how: str) -> str:
    if how == "404":
        server = BundleServer(root / "empty-dir-that-does-not-exist")
    elif how == "silent":
        server = BundleServer(bundle, gated=True)  # model files never come
    else:
        server = BundleServer(bundle, trickle=(1, 0.2))
    _servers.append(server)
    return server.manifest


def _publish(s3: S3, bundle: Path) -> str:
    return publish_bundle(bundle, s3.uri("models"), s3.endpoint_url)["manifest"]


def _tracebacks(log: Path) -> int:
    return log.read_text(errors="replace").count("Traceback (most recent call last)")


def _try(world: World, root: Path, s3: S3, case: Case, wrong: Dict[str, int], notes: List[str]) -> None:
    before = world.store_state()
    uri = case.manifest(world, root, s3)
    command_id = world.command("deploy", manifest=uri, **case.args)
    try:
        end = world.final(command_id, timeout=60)
    except AssertionError:
        wrong["no ending"] += 1
        notes.append(f"{case.name}: no ending")
        return
    if end["status"] == "succeeded":
        wrong["activated"] += 1
    elif end.get("stage") not in case.stages:
        wrong["wrong stage"] += 1
    notes.append(f"{case.name}: {end['status']} at {end.get('stage')}: {end.get('detail')}")
    if world.serving_version() != V1:
        wrong["v1 stopped serving"] += 1
    if world.store_state() != before:
        wrong["store changed"] += 1
        notes.append(f"{case.name}: store {before} -> {world.store_state()}")


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[bool]:
    """``path`` as a small tmpfs while the block runs (needs root); False where it cannot be."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)]).returncode == 0
    )
    try:
        yield mounted
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def _full_disk(root: Path, wrong: Dict[str, int], notes: List[str], figures: Dict[str, object]) -> int:
    """A store whose file system has room for v1 and not for v2 (a tmpfs of 1.5 MiB): the deploy
    fails at downloading, v1 keeps serving, and the store recovers its space."""
    store = root / "full" / "store"
    with _tmpfs(store, "1500k") as mounted:
        if not mounted:
            notes.append("full disk: not run (mounting a tmpfs needs root)")
            figures["full disk"] = "not run (needs root)"
            return 0
        figures["full disk"] = "tmpfs"
        with make_world(root / "full", store={"dir": str(store)}) as world:
            world.agent.start()
            world.serving(V1)
            command_id = world.command("deploy", manifest=_file(world.bundles[V2]))
            try:
                end = world.final(command_id, timeout=60)
            except AssertionError:
                wrong["no ending"] += 1
                return 1
            notes.append(f"full disk: {end['status']} at {end.get('stage')}: {end.get('detail')}")
            if end["status"] == "succeeded":
                wrong["activated"] += 1
            elif end.get("stage") != "downloading":
                wrong["wrong stage"] += 1
            if world.serving_version() != V1:
                wrong["v1 stopped serving"] += 1
            if list((store / "staging").iterdir()):
                wrong["store changed"] += 1
            world.agent.stop()
            wrong["tracebacks"] += _tracebacks(world.agent.log)
    return 1


def run(root: Path, full: bool) -> Row:
    wrong = {
        "activated": 0,
        "wrong stage": 0,
        "no ending": 0,
        "v1 stopped serving": 0,
        "store changed": 0,
        "tracebacks": 0,
        "good S3 deploy failed": 0,
    }
    notes: List[str] = []
    with (
        moto_endpoint() as endpoint,
        make_world(
            root / "world",
            store={"max_bundle_mb": 2.5, "keep_versions": 2, "timeouts": {"download_stall_s": STALL_S}},
            s3={"endpoint_url": endpoint, "region": "us-east-1"},
        ) as world,
    ):
        s3 = new_bucket(endpoint)
        world.agent.start(env=FAKE_ENV)
        world.serving(V1)
        # v2 installed as the rollback target (keep_versions 2): a bad deploy that made room
        # for itself would remove it, and "store changed" would count that.
        world.final(world.command("deploy", manifest=_file(world.bundles[V2])))
        world.final(world.command("rollback"))
        assert world.store_state().installed == [V1, V2] and world.serving_version() == V1
        try:
            for case in CASES:
                _try(world, root, s3, case, wrong, notes)
        finally:
            for server in _servers:
                server.close()
            _servers.clear()
        good = world.command("deploy", manifest=_publish(s3, world.bundles[V2]))
        if world.final(good)["status"] != "succeeded":
            wrong["good S3 deploy failed"] += 1
        world.agent.stop()
        wrong["tracebacks"] += _tracebacks(world.agent.log)
    figures: Dict[str, object] = {"sources": "file, http, s3"}
    trials = len(CASES) + 1 + _full_disk(root, wrong, notes, figures)
    figures["cases"] = trials
    for line in notes:
        print(f"bad_bundles: {line}", file=sys.stderr)
    return Row(NAME, trials, figures, wrong)  # type: ignore[arg-type]
