"""The staged deploy and rollback (SPEC §6) with real bundles and a real store; the detector and
the pipeline are small fakes (the real ones are the agent's)."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest

from edge_agent.bundle import signing
from edge_agent.config import S3Config, StoreTimeouts
from edge_agent.errors import BackendError
from edge_agent.store import (
    DeployBusy,
    Deployer,
    DeployFailed,
    DeployRequest,
    ModelStore,
    RollbackRequest,
    StoredVersion,
    StoreError,
)
from tests.agent.test_store import make_bundle
from tests.bundle_http import BundleServer
from tests.waiting import wait_for

STAGES = ["downloading", "verifying", "loading", "warming", "activating"]


class FakeDetector:
    def __init__(self, bundle_dir: Path, backend: Optional[str], harness: Harness) -> None:
        self.dir = bundle_dir
        self.backend = backend
        self.harness = harness
        self.warmed = False
        self.closed = False

    def close(self) -> None:
        assert self is not self.harness.active, "closed the detector that serves"
        self.closed = True

    def warm(self) -> None:
        if self.harness.warm_gate is not None:
            self.harness.warm_gate.wait()
        if self.harness.warm_error is not None:
            raise self.harness.warm_error
        self.warmed = True


class Harness:
    """The agent's side: build, and activate (the pipeline's one active detector, switched as
    ``Pipeline.swap`` does: within the deadline, or not at all)."""

    def __init__(self) -> None:
        self.built: List[FakeDetector] = []
        self.active: Optional[FakeDetector] = None
        self.build_error: Optional[Exception] = None
        self.warm_error: Optional[Exception] = None
        self.activate_error: Optional[Exception] = None
        self.build_gate: Optional[threading.Event] = None
        self.warm_gate: Optional[threading.Event] = None
        self.activate_gate: Optional[threading.Event] = None
        self.reports: List[Tuple[str, Optional[float], Optional[str]]] = []
        self.activate_deadlines: List[float] = []

    def build(self, bundle_dir: Path, backend: Optional[str]) -> FakeDetector:
        assert (bundle_dir / "manifest.json").is_file()
        if self.build_gate is not None:
            self.build_gate.wait()
        if self.build_error is not None:
            raise self.build_error
        detector = FakeDetector(bundle_dir, backend, self)
        self.built.append(detector)
        return detector

    def activate(self, detector: FakeDetector, timeout_s: float) -> None:
        self.activate_deadlines.append(timeout_s)
        if self.activate_gate is not None and not self.activate_gate.wait(timeout_s):
            raise RuntimeError(f"the pipeline did not reach a frame boundary within {timeout_s:g} s")
        if self.activate_error is not None:
            raise self.activate_error
        assert detector.warmed and not detector.closed
        self.active = detector

    def report(self, stage: str, progress: Optional[float], detail: Optional[str]) -> None:
        self.reports.append((stage, progress, detail))

    def stages(self) -> List[str]:
        out: List[str] = []
        for stage, _, _ in self.reports:
            if not out or out[-1] != stage:
                out.append(stage)
        return out


@pytest.fixture
def sources(tmp_path: Path) -> Dict[str, Path]:
    return {v: make_bundle(tmp_path / "src" / v, v) for v in ("1.0.0", "1.1.0", "1.2.0")}


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "store", keep_versions=3, max_bundle_bytes=1 << 20)


@pytest.fixture
def harness() -> Harness:
    return Harness()


def make_deployer(
    store: ModelStore, harness: Harness, timeouts: StoreTimeouts = StoreTimeouts(), **kwargs: object
) -> Deployer:
    return Deployer(
        store,
        s3=S3Config(),
        trusted_keys=kwargs.pop("trusted_keys", []),  # type: ignore[arg-type]
        build=harness.build,
        activate=harness.activate,
        timeouts=timeouts,
        **kwargs,  # type: ignore[arg-type]
    )


def deploy(deployer: Deployer, harness: Harness, src: Path, **kwargs: object) -> StoredVersion:
    return deployer.deploy(src.as_uri() + "/", report=harness.report, **kwargs)  # type: ignore[arg-type]


def sha(path: Path) -> str:
    return hashlib.sha256((path / "manifest.json").read_bytes()).hexdigest()


def staging_is_empty(store: ModelStore) -> bool:
    return list(store.staging_dir.iterdir()) == []


def test_deploy_goes_through_every_stage(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    deployer = make_deployer(store, harness)
    sv = deploy(deployer, harness, sources["1.0.0"], backend="tflite", sha256=sha(sources["1.0.0"]))
    assert harness.stages() == STAGES
    downloads = [p or 0.0 for stage, p, _ in harness.reports if stage == "downloading"]
    assert downloads[0] == 0.0 and downloads[-1] == 1.0 and downloads == sorted(downloads)
    assert sv.ident == "shapes@1.0.0" and sv.dir == store.models_dir / "shapes" / "1.0.0"
    current = store.current()
    assert current is not None and current.ident == "shapes@1.0.0"
    active = harness.active
    # Built from the verified staging copy, which then became the installed version by a rename.
    assert active is not None and active.backend == "tflite" and not active.closed
    assert active.dir.parent == store.staging_dir and not active.dir.exists() and sv.dir.is_dir()
    assert staging_is_empty(store) and not deployer.busy


@pytest.mark.parametrize("stage", STAGES)
def test_a_failure_at_each_stage_keeps_the_old_model(
    store: ModelStore, harness: Harness, sources: Dict[str, Path], tmp_path: Path, stage: str
) -> None:
    deployer = make_deployer(store, harness)
    deploy(deployer, harness, sources["1.0.0"])
    old = harness.active
    harness.reports.clear()

    src, kwargs = sources["1.1.0"], {}
    if stage == "downloading":
        src = tmp_path / "not-there"
    elif stage == "verifying":
        kwargs = {"sha256": "0" * 64}
    elif stage == "loading":
        harness.build_error = BackendError("the EdgeTPU is not connected")
    elif stage == "warming":
        harness.warm_error = RuntimeError("output [1, 7, 2100] does not fit yolov8 with 2 labels")
    else:
        harness.activate_error = RuntimeError("the pipeline is stopping")

    with pytest.raises(DeployFailed) as e:
        deploy(deployer, harness, src, **kwargs)
    assert e.value.stage == stage and str(e.value).startswith(f"{stage}: ")
    expected = {
        "downloading": "not-there/manifest.json: not found",
        "verifying": f"is not the expected {'0' * 64}",
        "loading": "the EdgeTPU is not connected",
        "warming": "does not fit yolov8",
        "activating": "the pipeline is stopping",
    }[stage]
    assert expected in e.value.reason
    assert harness.stages()[-1] == stage
    current = store.current()
    assert current is not None and current.ident == "shapes@1.0.0"
    assert harness.active is old and old is not None and not old.closed
    assert all(d.closed for d in harness.built if d is not old)  # nothing built is leaked
    assert staging_is_empty(store)
    assert not (store.models_dir / "shapes" / "1.1.0").exists()  # the fresh install went again
    assert not deployer.busy


def test_corrupt_download_fails_verifying_naming_the_file(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    (sources["1.0.0"] / "model.bin").write_bytes(b"\xff" * 2048)
    with pytest.raises(DeployFailed) as e:
        deploy(make_deployer(store, harness), harness, sources["1.0.0"])
    assert e.value.stage == "verifying" and "model.bin: sha256" in e.value.reason
    assert store.current() is None and harness.built == [] and staging_is_empty(store)


def test_signatures_are_required_when_trusted_keys_are_set(
    store: ModelStore, harness: Harness, tmp_path: Path
) -> None:
    keys = {}
    for who in ("operator", "stranger"):
        private_pem, public_pem = signing.generate_keypair()
        (tmp_path / f"{who}.key").write_bytes(private_pem)
        (tmp_path / f"{who}.pub").write_bytes(public_pem)
        keys[who] = tmp_path / f"{who}.key"
    trusted = [signing.load_public_key(tmp_path / "operator.pub")]
    deployer = make_deployer(store, harness, trusted_keys=trusted)

    unsigned = make_bundle(tmp_path / "unsigned", "1.0.0")
    with pytest.raises(DeployFailed, match="verifying: manifest.sig is missing and trusted keys are set"):
        deploy(deployer, harness, unsigned)
    forged = make_bundle(tmp_path / "forged", "1.0.0", sign_key=keys["stranger"])
    with pytest.raises(DeployFailed, match="verifying: manifest.sig does not verify against any trusted key"):
        deploy(deployer, harness, forged)
    assert harness.built == [] and store.versions() == [] and staging_is_empty(store)

    signed = make_bundle(tmp_path / "signed", "1.0.0", sign_key=keys["operator"])
    assert deploy(deployer, harness, signed).ident == "shapes@1.0.0"


def test_a_downgrade_needs_allow_downgrade(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    deployer = make_deployer(store, harness)
    deploy(deployer, harness, sources["1.1.0"])
    with pytest.raises(DeployFailed, match=r"verifying: shapes@1.0.0 is older than the current 1.1.0"):
        deploy(deployer, harness, sources["1.0.0"])
    assert not (store.models_dir / "shapes" / "1.0.0").exists()
    assert deploy(deployer, harness, sources["1.0.0"], allow_downgrade=True).ident == "shapes@1.0.0"
    current = store.current()
    assert current is not None and current.ident == "shapes@1.0.0"


def test_an_installed_version_is_not_downloaded_again(
    store: ModelStore, harness: Harness, sources: Dict[str, Path], tmp_path: Path
) -> None:
    deployer = make_deployer(store, harness)
    deploy(deployer, harness, sources["1.0.0"])
    deploy(deployer, harness, sources["1.1.0"])
    harness.reports.clear()
    gone = tmp_path / "deleted-from-the-bucket"  # nothing there: only the store can supply it
    sv = deploy(deployer, harness, gone, sha256=sha(sources["1.0.0"]), allow_downgrade=True)
    assert sv.ident == "shapes@1.0.0" and harness.active is not None and harness.active.dir == sv.dir
    assert harness.reports[0] == ("downloading", 1.0, "shapes@1.0.0 is already installed")
    assert harness.stages() == STAGES


def test_a_hanging_build_times_out_and_is_closed_when_it_returns(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    deployer = make_deployer(store, harness, StoreTimeouts(loading_s=0.2))
    deploy(deployer, harness, sources["1.0.0"])
    old = harness.active
    harness.build_gate = threading.Event()
    started = time.monotonic()
    with pytest.raises(DeployFailed) as e:
        deploy(deployer, harness, sources["1.1.0"])
    assert (e.value.stage, e.value.reason) == ("loading", "timed out after 0.2 s")
    assert time.monotonic() - started < 5
    assert not deployer.busy  # the slot is free although the build still hangs
    current = store.current()
    assert current is not None and current.ident == "shapes@1.0.0" and harness.active is old

    harness.build_gate.set()  # the backend finally returns: what it built must be released
    wait_for(lambda: len(harness.built) == 2 and harness.built[1].closed)
    assert harness.active is old and not old.closed  # type: ignore[union-attr]


def test_a_hanging_warm_times_out_and_is_closed_when_it_returns(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    deployer = make_deployer(store, harness, StoreTimeouts(warming_s=0.2))
    harness.warm_gate = threading.Event()
    with pytest.raises(DeployFailed, match=r"warming: timed out after 0.2 s"):
        deploy(deployer, harness, sources["1.0.0"])
    assert not harness.built[0].closed  # still warming: closing it now would pull it from under warm()
    harness.warm_gate.set()
    wait_for(lambda: harness.built[0].closed)
    assert store.current() is None and harness.active is None


def test_an_activation_that_misses_its_one_deadline_switches_nothing(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    """The switch gets the stage's deadline itself (Pipeline.swap withdraws a switch it could not
    make in time), so nothing can activate late behind the store's back."""
    deployer = make_deployer(store, harness, StoreTimeouts(activating_s=0.2))
    deploy(deployer, harness, sources["1.0.0"])
    old = harness.active
    harness.activate_gate = threading.Event()
    with pytest.raises(
        DeployFailed, match=r"activating: the pipeline did not reach a frame boundary within 0.2 s"
    ):
        deploy(deployer, harness, sources["1.1.0"])
    assert harness.activate_deadlines == [0.2, 0.2]  # one deadline, handed to the switch
    current = store.current()
    assert current is not None and current.ident == "shapes@1.0.0" and harness.active is old
    assert harness.built[-1].closed and not (store.models_dir / "shapes" / "1.1.0").exists()
    assert not deployer.busy


def test_set_current_failing_after_activation_is_reported_as_activated(
    store: ModelStore, harness: Harness, sources: Dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    deployer = make_deployer(store, harness)
    deploy(deployer, harness, sources["1.0.0"])

    def disk_full(sv: StoredVersion) -> None:
        raise StoreError("current.json: No space left on device")

    monkeypatch.setattr(store, "set_current", disk_full)
    with pytest.raises(DeployFailed) as e:
        deploy(deployer, harness, sources["1.1.0"])
    assert e.value.stage == "activating" and e.value.activated
    assert "shapes@1.1.0 serves but cannot be recorded as current" in e.value.reason
    # The agent switches back; the files of what serves meanwhile stay in place.
    assert harness.active is harness.built[-1] and (store.models_dir / "shapes" / "1.1.0").is_dir()


def test_one_deploy_at_a_time(store: ModelStore, harness: Harness, sources: Dict[str, Path]) -> None:
    """The deployer's worker owns the one slot: a second request is refused (the agent answers
    "busy") until the first has ended, and so is a deploy in the caller's thread."""
    deployer = make_deployer(store, harness)
    deployer.start()
    try:
        harness.build_gate = threading.Event()
        outcomes: List[object] = []
        order: List[str] = []
        request = DeployRequest(sources["1.0.0"].as_uri() + "/")
        assert deployer.try_submit(request, harness.report, outcomes.append, lambda: order.append("accepted"))
        wait_for(lambda: harness.stages()[-1:] == ["loading"])
        assert order == ["accepted"]  # before the worker's first report
        refused: List[str] = []
        assert not deployer.try_submit(
            RollbackRequest(), harness.report, outcomes.append, lambda: refused.append("x")
        )
        assert deployer.busy and refused == []
        with pytest.raises(DeployBusy):
            deployer.rollback(None, report=harness.report)
        harness.build_gate.set()
        wait_for(lambda: outcomes)
        assert [sv.ident for sv in outcomes] == ["shapes@1.0.0"]  # type: ignore[attr-defined]
        assert not deployer.busy
        assert deployer.try_submit(RollbackRequest(), harness.report, outcomes.append)
        wait_for(lambda: len(outcomes) == 2)
        failed = outcomes[1]
        assert isinstance(failed, DeployFailed) and "a previous version is not installed" in failed.reason
    finally:
        deployer.stop()
    assert not deployer.try_submit(RollbackRequest(), harness.report, outcomes.append)  # stopped


def test_the_stages_share_one_stage_thread_until_one_is_abandoned(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    """No thread per stage: the blocking stages of many deploys run on one stage thread; a stage
    that outlives its deadline keeps that thread (it is abandoned) and the next gets a fresh one."""
    threads: List[threading.Thread] = []  # kept alive here, so none is mistaken for another
    real_build = harness.build

    def build(bundle_dir: Path, backend: Optional[str]) -> FakeDetector:
        threads.append(threading.current_thread())
        return real_build(bundle_dir, backend)

    harness.build = build  # type: ignore[method-assign]
    deployer = make_deployer(store, harness, StoreTimeouts(loading_s=0.3))
    for v in ("1.0.0", "1.1.0"):
        deploy(deployer, harness, sources[v])
    assert threads[0] is threads[1] and threads[0].name == "edge-agent-deploy-stage"
    harness.build_gate = threading.Event()
    with pytest.raises(DeployFailed, match="loading: timed out after 0.3 s"):
        deploy(deployer, harness, sources["1.2.0"])
    harness.build_gate.set()
    wait_for(lambda: len(harness.built) == 3 and harness.built[2].closed)
    harness.build_gate = None
    deploy(deployer, harness, sources["1.2.0"])
    assert len(threads) == 4 and threads[2] is threads[0] and threads[3] is not threads[0]


def test_rollback_to_previous_and_to_a_named_version(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    deployer = make_deployer(store, harness)
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        deploy(deployer, harness, sources[v])
    harness.reports.clear()

    assert deployer.rollback(None, report=harness.report).ident == "shapes@1.1.0"
    assert harness.stages() == ["loading", "warming", "activating"]
    assert harness.active is not None and harness.active.dir.name == "1.1.0"
    previous = store.previous()
    assert previous is not None and previous.ident == "shapes@1.2.0"

    assert deployer.rollback("1.0.0", report=harness.report).ident == "shapes@1.0.0"
    current = store.current()
    assert current is not None and current.ident == "shapes@1.0.0"

    with pytest.raises(
        DeployFailed, match=r"loading: version 9.9.9 is not installed \(installed: shapes@1.0.0"
    ):
        deployer.rollback("9.9.9", report=harness.report)
    with pytest.raises(DeployFailed, match=r"loading: shapes@1.0.0 is already the current version"):
        deployer.rollback("1.0.0", report=harness.report)

    (store.models_dir / "shapes" / "1.2.0" / "model.xml").write_bytes(b"<rot/>")
    with pytest.raises(DeployFailed, match=r"loading: .*1.2.0/model.xml: size 6 bytes does not match"):
        deployer.rollback("1.2.0", report=harness.report)
    current = store.current()
    assert current is not None and current.ident == "shapes@1.0.0" and harness.active.dir.name == "1.0.0"


def test_rollback_without_a_previous_version(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    deployer = make_deployer(store, harness)
    deploy(deployer, harness, sources["1.0.0"])
    with pytest.raises(DeployFailed, match=r"loading: a previous version is not installed"):
        deployer.rollback(None, report=harness.report)


def test_deploys_prune_to_keep_versions(tmp_path: Path, harness: Harness, sources: Dict[str, Path]) -> None:
    store = ModelStore(tmp_path / "store", keep_versions=2, max_bundle_bytes=1 << 20)
    deployer = make_deployer(store, harness)
    for v in ("1.0.0", "1.1.0", "1.2.0"):
        deploy(deployer, harness, sources[v])
    assert [sv.ident for sv in store.versions()] == ["shapes@1.2.0", "shapes@1.1.0"]


def test_a_stalled_download_times_out_and_its_staging_goes(
    store: ModelStore, harness: Harness, tmp_path: Path
) -> None:
    deployer = make_deployer(store, harness, StoreTimeouts(download_s=0.3, download_stall_s=1.0))
    with socket.socket() as silent:  # accepts connections, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        with pytest.raises(DeployFailed) as e:
            deployer.deploy(f"http://127.0.0.1:{silent.getsockname()[1]}/b/", report=harness.report)
        assert (e.value.stage, e.value.reason) == ("downloading", "timed out after 0.3 s")
        wait_for(lambda: staging_is_empty(store))
    assert store.current() is None and harness.built == []


def test_a_trickling_server_fails_the_download_as_stalled_long_before_its_time_limit(
    store: ModelStore, harness: Harness, sources: Dict[str, Path]
) -> None:
    """One byte every 0.05 s never trips a socket timeout; the stall window (store.timeouts
    download_stall_s) ends the deploy, frees the slot and removes the staging files."""
    deployer = make_deployer(store, harness, StoreTimeouts(download_s=600, download_stall_s=0.5))
    with BundleServer(sources["1.0.0"], trickle=(1, 0.05)) as server, pytest.raises(DeployFailed) as e:
        deployer.deploy(server.manifest, report=harness.report)
    assert e.value.stage == "downloading" and "stalled" in e.value.reason, e.value.reason
    assert "download_stall_s" in e.value.reason
    assert not deployer.busy and store.current() is None and harness.built == []
    wait_for(lambda: staging_is_empty(store))


@pytest.mark.parametrize("failing", ["loading", "warming"])
def test_a_failed_deploy_keeps_every_rollback_target(
    tmp_path: Path, harness: Harness, sources: Dict[str, Path], failing: str
) -> None:
    """keep_versions 2 with 1.0.0 current and 1.1.0 before it: a deploy of 1.2.0 whose model does
    not load or warm must not have made room by removing 1.1.0 (the version to roll back to).
    (Room is made when the loaded model is installed, just before the switch: a switch that then
    fails, a hung pipeline, has cost the oldest version.)"""
    store = ModelStore(tmp_path / "store", keep_versions=2, max_bundle_bytes=1 << 20)
    deployer = make_deployer(store, harness)
    deploy(deployer, harness, sources["1.1.0"])
    deploy(deployer, harness, sources["1.0.0"], allow_downgrade=True)
    assert [sv.ident for sv in store.versions()] == ["shapes@1.0.0", "shapes@1.1.0"]
    error = RuntimeError(f"broken at {failing}")
    if failing == "loading":
        harness.build_error = error
    else:
        harness.warm_error = error
    with pytest.raises(DeployFailed) as e:
        deploy(deployer, harness, sources["1.2.0"])
    assert e.value.stage == failing
    assert [sv.ident for sv in store.versions()] == ["shapes@1.0.0", "shapes@1.1.0"]
    assert staging_is_empty(store)
    prev = store.previous()
    assert prev is not None and prev.ident == "shapes@1.1.0"
