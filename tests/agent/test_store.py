"""The on-disk model store: atomic pointer, recovery after crashes at every step, prune, import."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

from edge_agent.bundle import load_bundle, signing
from edge_agent.store import ModelStore, StoredVersion, StoreError


def _entry(runtime: str, name: str, data: bytes, **extra: object) -> Dict[str, object]:
    entry: Dict[str, object] = {
        "runtime": runtime,
        "file": name,
        "precision": "fp32",
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }
    entry.update(extra)
    return entry


def make_bundle(
    directory: Path,
    version: str = "1.0.0",
    name: str = "shapes",
    *,
    model: Optional[bytes] = None,
    sign_key: Optional[Path] = None,
) -> Path:
    """A small valid bundle: a tflite file and an openvino pair (file + weights)."""
    directory.mkdir(parents=True, exist_ok=True)
    model = model if model is not None else f"tflite {name} {version} ".encode() * 64
    xml = f"<net name='{name}' version='{version}'/>".encode()
    weights = bytes(range(256)) * 8
    (directory / "model.tflite").write_bytes(model)
    (directory / "model.xml").write_bytes(xml)
    (directory / "model.bin").write_bytes(weights)
    doc = {
        "schema": 1,
        "name": name,
        "version": version,
        "labels": ["circle", "square"],
        "input": {"width": 32, "height": 32},
        "decoder": {"type": "yolov8", "params": {"boxes": "normalized"}},
        "artifacts": [
            _entry("tflite", "model.tflite", model),
            _entry(
                "openvino",
                "model.xml",
                xml,
                precision="fp16",
                weights="model.bin",
                weights_sha256=hashlib.sha256(weights).hexdigest(),
                weights_bytes=len(weights),
            ),
        ],
    }
    data = (json.dumps(doc, indent=2) + "\n").encode()
    (directory / "manifest.json").write_bytes(data)
    if sign_key is not None:
        (directory / "manifest.sig").write_bytes(signing.sign(data, signing.load_private_key(sign_key)))
    return directory


def manifest_sha256(directory: Path) -> str:
    return hashlib.sha256((directory / "manifest.json").read_bytes()).hexdigest()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def sources(tmp_path: Path) -> Dict[str, Path]:
    return {v: make_bundle(tmp_path / "src" / v, v) for v in ("1.0.0", "1.1.0", "1.2.0", "2.0.0")}


def install(store: ModelStore, src: Path) -> StoredVersion:
    staging = store.new_staging()
    for f in src.iterdir():
        shutil.copy2(f, staging / f.name)
    return store.install(staging)


def idents(versions: List[StoredVersion]) -> List[str]:
    return [sv.ident for sv in versions]


def test_new_store_is_empty(root: Path) -> None:
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    assert (root / "models").is_dir() and (root / "staging").is_dir()
    assert store.current() is None and store.previous() is None and store.versions() == []
    assert store.recover() == []


def test_install_does_not_make_current_and_set_current_is_recorded(
    root: Path, sources: Dict[str, Path]
) -> None:
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    v1 = install(store, sources["1.0.0"])
    assert v1.dir == root / "models" / "shapes" / "1.0.0"
    assert v1.manifest_sha256 == manifest_sha256(sources["1.0.0"])
    assert list((root / "staging").iterdir()) == []  # the staging dir was renamed into place
    assert store.current() is None

    store.set_current(v1)
    v2 = install(store, sources["1.1.0"])
    store.set_current(v2)
    pointer = json.loads((root / "current.json").read_text())
    assert (pointer["name"], pointer["version"], pointer["manifest_sha256"]) == (
        "shapes",
        "1.1.0",
        v2.manifest_sha256,
    )
    assert [(h["version"], h["manifest_sha256"]) for h in pointer["history"]] == [
        ("1.1.0", v2.manifest_sha256),
        ("1.0.0", v1.manifest_sha256),
    ]
    # Only the pointer itself: no temporary file survives a completed replace.
    assert sorted(p.name for p in root.iterdir()) == ["current.json", "models", "staging"]

    again = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    current, previous = again.current(), again.previous()
    assert current is not None and current.ident == "shapes@1.1.0"
    assert previous is not None and previous.ident == "shapes@1.0.0"
    # Activating an older one again moves it to the head of the history, once.
    again.set_current(previous)
    assert idents(again.versions()) == ["shapes@1.0.0", "shapes@1.1.0"]
    assert [h["version"] for h in json.loads((root / "current.json").read_text())["history"]] == [
        "1.0.0",
        "1.1.0",
    ]


def test_set_current_refuses_what_is_not_installed(root: Path, sources: Dict[str, Path]) -> None:
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    bundle = load_bundle(sources["1.0.0"])
    stray = StoredVersion("shapes", "1.0.0", sources["1.0.0"], bundle.manifest, bundle.manifest_sha256)
    with pytest.raises(StoreError, match=r"shapes@1.0.0 is not installed"):
        store.set_current(stray)
    assert not (root / "current.json").exists()


def test_install_refuses_an_incomplete_staging_dir(root: Path, sources: Dict[str, Path]) -> None:
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    staging = store.new_staging()
    for f in sources["1.0.0"].iterdir():
        shutil.copy2(f, staging / f.name)
    (staging / "model.bin").write_bytes(b"\x00" * 2048)  # same size, other bytes
    with pytest.raises(StoreError, match=r"model.bin: sha256 [0-9a-f]{64} does not match"):
        store.install(staging)
    assert store.versions() == []


def test_reinstalling_identical_keeps_it_and_a_changed_current_version_is_refused(
    root: Path, sources: Dict[str, Path], tmp_path: Path
) -> None:
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    v1 = install(store, sources["1.0.0"])
    store.set_current(v1)
    inode = (v1.dir / "model.tflite").stat().st_ino
    assert install(store, sources["1.0.0"]) == v1
    assert (v1.dir / "model.tflite").stat().st_ino == inode  # kept, not copied again
    assert list((root / "staging").iterdir()) == []

    rebuilt = make_bundle(tmp_path / "rebuilt", "1.0.0", model=b"another build")
    with pytest.raises(StoreError, match=r"shapes@1.0.0 is current and installed with a different manifest"):
        install(store, rebuilt)
    assert store.current() == v1


def test_find_prefers_the_current_name(root: Path, tmp_path: Path, sources: Dict[str, Path]) -> None:
    store = ModelStore(root, keep_versions=5, max_bundle_bytes=1 << 20)
    shapes = install(store, sources["1.0.0"])
    people = install(store, make_bundle(tmp_path / "people", "1.0.0", name="people"))
    install(store, sources["1.1.0"])
    store.set_current(shapes)
    found = store.find("1.0.0")
    assert found is not None and found.ident == "shapes@1.0.0"
    found = store.find("1.0.0", name="people")
    assert found is not None and found.dir == people.dir
    found = store.find("1.1.0")
    assert found is not None and found.ident == "shapes@1.1.0"
    assert store.find("3.0.0") is None and store.find("1.1.0", name="people") is None


def test_prune_keeps_the_most_recently_activated_and_never_current(
    root: Path, sources: Dict[str, Path]
) -> None:
    store = ModelStore(root, keep_versions=4, max_bundle_bytes=1 << 20)
    installed = {v: install(store, src) for v, src in sources.items()}
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        store.set_current(installed[v])
    store.set_current(installed["1.0.0"])  # a rollback: 1.0.0 current, 1.2.0 before it
    # 2.0.0 was installed but never activated: it goes first.
    store.keep_versions = 2
    removed = store.prune()
    assert sorted(idents(removed)) == ["shapes@1.1.0", "shapes@2.0.0"]
    assert idents(store.versions()) == ["shapes@1.0.0", "shapes@1.2.0"]
    assert not installed["1.1.0"].dir.exists() and installed["1.0.0"].dir.exists()
    history = json.loads((root / "current.json").read_text())["history"]
    assert [h["version"] for h in history] == ["1.0.0", "1.2.0"]
    assert list((root / "staging").iterdir()) == []  # retired directories are gone too

    store.keep_versions = 1
    assert idents(store.prune()) == ["shapes@1.2.0"]
    current = store.current()
    assert current is not None and current.ident == "shapes@1.0.0" and store.previous() is None


def test_installing_makes_room_first_so_the_store_never_holds_more_than_keep_versions(
    root: Path, sources: Dict[str, Path]
) -> None:
    """SPEC §6.5: not even between a deploy's install and its activation (a crash there leaves
    the store as it is): the least recently activated version makes room, never the current."""
    store = ModelStore(root, keep_versions=2, max_bundle_bytes=1 << 20)
    for v in ("1.0.0", "1.1.0"):
        store.set_current(install(store, sources[v]))
    assert idents(store.versions()) == ["shapes@1.1.0", "shapes@1.0.0"]
    install(store, sources["1.2.0"])  # not activated (yet)
    assert sorted(idents(store.versions())) == ["shapes@1.1.0", "shapes@1.2.0"]
    install(store, sources["2.0.0"])  # the never-activated 1.2.0 goes, the current stays
    assert sorted(idents(store.versions())) == ["shapes@1.1.0", "shapes@2.0.0"]
    current = store.current()
    assert current is not None and current.ident == "shapes@1.1.0"
    history = json.loads((root / "current.json").read_text())["history"]
    assert [h["version"] for h in history] == ["1.1.0"]

    single = ModelStore(root.parent / "single", keep_versions=1, max_bundle_bytes=1 << 20)
    single.set_current(install(single, sources["1.0.0"]))
    install(single, sources["1.1.0"])  # keep_versions 1: the current one and the one on its way
    assert sorted(idents(single.versions())) == ["shapes@1.0.0", "shapes@1.1.0"]


def test_recover_removes_what_an_interrupted_deploy_installed_and_never_activated(
    root: Path, sources: Dict[str, Path]
) -> None:
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    store.set_current(install(store, sources["1.0.0"]))
    install(store, sources["1.1.0"])  # the deploy was killed here
    actions = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20).recover()
    assert any("shapes@1.1.0" in a and "never activated" in a for a in actions), actions
    assert idents(store.versions()) == ["shapes@1.0.0"]
    # An agent restarted with a smaller keep_versions is brought within it at start.
    for v in ("1.1.0", "1.2.0"):
        store.set_current(install(store, sources[v]))
    smaller = ModelStore(root, keep_versions=1, max_bundle_bytes=1 << 20)
    smaller.recover()
    assert idents(smaller.versions()) == ["shapes@1.2.0"]


def test_import_bundle_copies_only_listed_files_verified(root: Path, tmp_path: Path) -> None:
    key, pub = tmp_path / "k.key", tmp_path / "k.pub"
    private_pem, public_pem = signing.generate_keypair()
    key.write_bytes(private_pem)
    pub.write_bytes(public_pem)
    src = make_bundle(tmp_path / "local", "1.0.0", sign_key=key)
    (src / "notes.txt").write_text("not part of the bundle")
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)

    sv = store.import_bundle(src)
    assert sv.ident == "shapes@1.0.0" and store.current() is None
    assert sorted(p.name for p in sv.dir.iterdir()) == [
        "manifest.json",
        "manifest.sig",
        "model.bin",
        "model.tflite",
        "model.xml",
    ]
    bundle = load_bundle(sv.dir)
    assert bundle.signature is not None and signing.verify(
        bundle.manifest_bytes, bundle.signature, [signing.load_public_key(pub)]
    )
    assert store.import_bundle(src) == sv  # identical: nothing changes

    (src / "model.tflite").write_bytes(b"corrupted")
    with pytest.raises(StoreError, match=r"cannot import .*model.tflite: 9 bytes, the manifest lists"):
        store.import_bundle(src)
    small = ModelStore(tmp_path / "small", keep_versions=3, max_bundle_bytes=100)
    with pytest.raises(StoreError, match=r"more than the 100 allowed"):
        small.import_bundle(make_bundle(tmp_path / "other", "1.1.0"))
    assert list((root / "staging").iterdir()) == [] and list((tmp_path / "small" / "staging").iterdir()) == []


def test_discard_only_touches_staging(root: Path, tmp_path: Path) -> None:
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    outside = tmp_path / "precious"
    outside.mkdir()
    with pytest.raises(StoreError, match="not a staging directory"):
        store.discard(outside)
    assert outside.is_dir()
    staging = store.new_staging()
    (staging / "partial").write_bytes(b"x")
    store.discard(staging)
    assert not staging.exists()


# -- recovery --------------------------------------------------------------------------------


def two_versions(root: Path, sources: Dict[str, Path]) -> ModelStore:
    """1.0.0 then 1.1.0 activated; 1.1.0 current."""
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    store.set_current(install(store, sources["1.0.0"]))
    store.set_current(install(store, sources["1.1.0"]))
    return store


def assert_current_verified(root: Path, allowed: List[str]) -> str:
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    current = store.current()
    assert current is not None, "no current version"
    assert current.ident in allowed
    bundle = load_bundle(current.dir, verify=True)
    assert bundle.manifest_sha256 == json.loads((root / "current.json").read_text())["manifest_sha256"]
    return current.ident


def test_recover_removes_leftovers_and_keeps_an_intact_current(root: Path, sources: Dict[str, Path]) -> None:
    two_versions(root, sources)
    pointer_before = (root / "current.json").read_bytes()
    # A download cut off half way, and a pointer file cut off half way.
    partial = root / "staging" / "fetch-abc"
    partial.mkdir()
    (partial / "manifest.json").write_bytes(b'{"schema": 1, "na')
    (root / ".current.json.x1y2").write_bytes(b'{"name": "shapes", "vers')

    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    actions = store.recover()
    assert any("unfinished pointer file .current.json.x1y2" in a for a in actions)
    assert any("leftover staging/fetch-abc" in a for a in actions)
    assert (root / "current.json").read_bytes() == pointer_before
    assert list((root / "staging").iterdir()) == [] and not (root / ".current.json.x1y2").exists()
    assert assert_current_verified(root, ["shapes@1.1.0"]) == "shapes@1.1.0"
    assert store.recover() == []  # nothing left to do


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda d: (d / "model.bin").unlink(), id="deleted-file"),
        pytest.param(lambda d: (d / "model.tflite").write_bytes(b"bit rot"), id="changed-file"),
        pytest.param(lambda d: (d / "manifest.json").unlink(), id="deleted-manifest"),
        pytest.param(lambda d: shutil.rmtree(d), id="deleted-version"),
    ],
)
def test_recover_falls_back_to_the_previous_verified_version(
    root: Path, sources: Dict[str, Path], damage: Callable[[Path], None]
) -> None:
    two_versions(root, sources)
    damage(root / "models" / "shapes" / "1.1.0")
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    actions = store.recover()
    assert any(a.startswith("shapes@1.1.0 is unusable") for a in actions), actions
    assert actions[-1] == "current is now shapes@1.0.0"
    assert assert_current_verified(root, ["shapes@1.0.0"]) == "shapes@1.0.0"
    assert not (root / "models" / "shapes" / "1.1.0").exists()
    assert idents(store.versions()) == ["shapes@1.0.0"] and store.previous() is None


def test_recover_with_nothing_usable_leaves_no_current(root: Path, sources: Dict[str, Path]) -> None:
    two_versions(root, sources)
    for v in ("1.0.0", "1.1.0"):
        (root / "models" / "shapes" / v / "model.tflite").unlink()
    store = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20)
    actions = store.recover()
    assert actions[-1] == "no installed version verifies: the store has no current version"
    assert store.current() is None and not (root / "current.json").exists()


def test_recover_from_a_corrupted_pointer_picks_the_highest_verified_version(
    root: Path, sources: Dict[str, Path]
) -> None:
    store = two_versions(root, sources)
    store.set_current(store.find("1.0.0"))  # type: ignore[arg-type]
    (root / "models" / "shapes" / "1.1.0" / "model.xml").write_bytes(b"broken")
    install(store, sources["1.2.0"])
    (root / "current.json").write_bytes(b"\x00\x00\x00 garbage")
    actions = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20).recover()
    assert "not a valid pointer" in actions[0]
    assert assert_current_verified(root, ["shapes@1.2.0"]) == "shapes@1.2.0"


def test_recover_restores_a_current_version_left_in_staging(root: Path, sources: Dict[str, Path]) -> None:
    """A power cut while an installed copy was being replaced: the complete copy sits in staging/."""
    two_versions(root, sources)
    aside = root / "staging" / "retired-q"
    aside.mkdir()
    os.replace(root / "models" / "shapes" / "1.1.0", aside / "bundle")
    actions = ModelStore(root, keep_versions=3, max_bundle_bytes=1 << 20).recover()
    assert "shapes@1.1.0: restored the complete copy left in staging/" in actions
    assert assert_current_verified(root, ["shapes@1.1.0"]) == "shapes@1.1.0"
    assert list((root / "staging").iterdir()) == []


class PowerCut(BaseException):
    """Raised by the crash injector; a BaseException, as nothing should catch a power cut."""


class CrashInjector:
    """Counts the store's durable steps (renames, deletes, fsyncs) and cuts power at the Nth:
    that step and every later one (clean-up handlers included) fail, as on a dead machine."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, crash_at: Optional[int]) -> None:
        self.calls = 0
        self.crash_at = crash_at
        real_replace, real_rmtree, real_fsync, real_unlink = os.replace, shutil.rmtree, os.fsync, os.unlink

        def step() -> None:
            self.calls += 1
            if self.crash_at is not None and self.calls >= self.crash_at:
                raise PowerCut()

        def replace(src, dst):
            step()
            real_replace(src, dst)

        def rmtree(path, ignore_errors=False, onerror=None):
            step()
            files = sorted(p for p in Path(path).rglob("*") if p.is_file())
            if self.crash_at is not None and self.calls + 1 == self.crash_at and files:
                real_unlink(files[0])  # a cut mid-delete: one file gone, then the lights go out
                step()
            real_rmtree(path, ignore_errors=ignore_errors)

        def fsync(fd):
            step()
            real_fsync(fd)

        def unlink(path, *args, **kwargs):
            step()
            real_unlink(path, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(shutil, "rmtree", rmtree)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "unlink", unlink)


def _upgrade(store: ModelStore, sources: Dict[str, Path]) -> None:
    """What a deploy does to the store: import, activate, prune."""
    store.set_current(store.import_bundle(sources["1.2.0"]))
    store.prune()


def _repair(store: ModelStore, sources: Dict[str, Path]) -> None:
    """Re-installing the current version over a damaged copy of it (a redeploy)."""
    store.import_bundle(sources["1.1.0"])


@pytest.mark.parametrize(
    ("scenario", "damage_current", "allowed"),
    [
        (_upgrade, False, ["shapes@1.1.0", "shapes@1.2.0"]),
        (_repair, True, ["shapes@1.1.0", "shapes@1.0.0"]),
    ],
    ids=["upgrade", "repair"],
)
def test_a_power_cut_at_any_step_leaves_a_complete_verified_current_version(
    tmp_path: Path,
    sources: Dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
    scenario: Callable[[ModelStore, Dict[str, Path]], None],
    damage_current: bool,
    allowed: List[str],
) -> None:
    base = tmp_path / "base"
    two_versions(base, sources)
    if damage_current:
        (base / "models" / "shapes" / "1.1.0" / "model.xml").write_bytes(b"<bit rot/>")

    with monkeypatch.context() as m:
        counter = CrashInjector(m, crash_at=None)
        scenario(
            ModelStore(_copy(base, tmp_path / "count"), keep_versions=2, max_bundle_bytes=1 << 20), sources
        )
        steps = counter.calls
    assert steps > 10

    outcomes = set()
    for crash_at in range(1, steps + 1):
        root = _copy(base, tmp_path / f"cut-{crash_at}")
        with monkeypatch.context() as m:
            CrashInjector(m, crash_at)
            with pytest.raises(PowerCut):
                scenario(ModelStore(root, keep_versions=2, max_bundle_bytes=1 << 20), sources)
        ModelStore(root, keep_versions=2, max_bundle_bytes=1 << 20).recover()
        outcomes.add(assert_current_verified(root, allowed))
        assert list((root / "staging").iterdir()) == []
    if damage_current:
        assert "shapes@1.1.0" in outcomes  # repaired, or restored from its complete download
    else:
        assert outcomes == set(allowed)  # early cuts keep the old version, late ones the new


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
