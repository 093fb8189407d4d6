"""The staged deploy and rollback of SPEC §6, independent of MQTT and of the pipeline's threads.

A deploy goes through ``downloading``, ``verifying``, ``loading``, ``warming`` and ``activating``;
a rollback through ``loading``, ``warming`` and ``activating``. Each stage is reported through the
caller's ``report(stage, progress, detail)`` and runs its blocking work in a worker thread under
the stage's timeout (``store.timeouts``). Any failure raises :class:`DeployFailed` naming the
stage and the reason, with the old model still serving, the staging directory removed and the
store's current version unchanged.

One long-lived worker thread (``start``) runs them one at a time and owns the one slot:
``try_submit`` takes it, or answers False while a deploy or rollback runs, and the worker frees
it when that ends. ``deploy`` and ``rollback`` run one in the caller's thread instead (tests,
tools), under the same slot. Stages whose work can hang on something outside this process (a
server, a disk, an accelerator's runtime) run on a stage thread with one deadline each; a stage
that outlives it is abandoned (its late handler releases whatever it produces) and the next
stage gets a fresh stage thread. The store's own file moves and the switch run on the worker.

What the caller (the agent) supplies and must know:

- ``build(bundle_dir, backend)`` loads a detector (a :class:`Servable`) from a verified bundle
  directory while the old one keeps serving: for a new version that is its staging copy, which
  is renamed into the store only once the detector has loaded and warmed (so the detector must
  not reopen files by path afterwards; the backends read or map them at load, and a rename
  keeps both valid), and a deploy that fails before that never touches the store. A detector
  that is not activated is closed (``Servable.close``), at once or, after a timeout, by the
  stage thread when its work ends.
- ``activate(detector, timeout_s)`` hands the detector to the pipeline and returns once it
  serves; it must return or raise within ``timeout_s`` (``timeouts.activating_s``, the one
  deadline of that stage), and when it raises nothing was switched: the detector is closed.
- If ``activate`` succeeded but recording the new version as current failed, the new detector
  is serving while the store still names the old version: ``DeployFailed("activating", …)`` is
  raised with ``activated=True``, and switching back to the previous detector (and closing the
  new one) is the agent's job.
- ``report`` may be called from the stage thread (download progress); its exceptions are
  logged, never allowed to fail a deploy.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, Optional, Protocol, Sequence, Tuple, TypeVar, Union

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..bundle import load_bundle, signing
from ..bundle.manifest import version_key
from ..config import S3Config, StoreTimeouts
from ..errors import BundleError, EdgewatchError
from .fetch import FetchIntegrityError, fetch_bundle, redact
from .models import ModelStore, StoredVersion

log = logging.getLogger(__name__)

T = TypeVar("T")

Report = Callable[[str, Optional[float], Optional[str]], None]
"""(stage, progress 0..1 or None, detail or None), for the ``in_progress`` results of SPEC §5."""


class Servable(Protocol):
    """What the deployer needs of a detector (``edge_agent.detector.Detector`` is one)."""

    def warm(self) -> None:
        """A first inference; raises when the model cannot serve."""

    def close(self) -> None:
        """Release it; never raises."""


D = TypeVar("D", bound=Servable)
D_co = TypeVar("D_co", bound=Servable, covariant=True)
D_contra = TypeVar("D_contra", bound=Servable, contravariant=True)


class Build(Protocol[D_co]):
    def __call__(self, bundle_dir: Path, backend: Optional[str]) -> D_co:
        """A detector for the verified bundle in ``bundle_dir`` on ``backend`` (None: the agent's choice)."""


class Activate(Protocol[D_contra]):
    def __call__(self, detector: D_contra, timeout_s: float) -> None:
        """Serve ``detector`` from the next frame; raises (having switched nothing) when the
        switch cannot happen within ``timeout_s``."""


class DeployFailed(EdgewatchError):
    """A deploy or rollback failed in ``stage`` for ``reason``. ``activated`` is True only when
    the new detector was activated but could not be recorded as current (see the module doc)."""

    def __init__(self, stage: str, reason: str, *, activated: bool = False) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.activated = activated


class _StageTimedOut(DeployFailed):
    """A stage's work outlived its deadline and was abandoned to its late handler."""


class DeployBusy(EdgewatchError):
    """A deploy or rollback was asked for while another runs."""


@dataclass(frozen=True)
class DeployRequest:
    manifest_uri: str
    sha256: Optional[str] = None
    backend: Optional[str] = None
    allow_downgrade: bool = False
    files: Optional[Mapping[str, str]] = None


@dataclass(frozen=True)
class RollbackRequest:
    version: Optional[str] = None  # None: the previous version


Request = Union[DeployRequest, RollbackRequest]
Outcome = Union[StoredVersion, DeployFailed]
LateHandler = Callable[[Optional[T], Optional[BaseException]], None]
_Queued = Tuple[Request, Report, Callable[[Outcome], None], Callable[[Outcome], None]]  # … settle, on_end


class _Task(Generic[T]):
    """One piece of stage work handed to a stage thread, and what became of it."""

    def __init__(self, work: Callable[[], T], on_late: Optional[LateHandler[T]]) -> None:
        self.work = work
        self.on_late = on_late
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.abandoned = False
        self.result: Optional[T] = None
        self.error: Optional[BaseException] = None


class _StageThread:
    """The thread a deploy's blocking stages run on: long-lived, so that a deploy does not start
    a thread per stage. ``run`` waits for one piece of work until its deadline; work that
    outlives it is abandoned to its ``on_late`` handler (run here once the work ends, so that
    what it produced is never leaked), and this thread retires: the caller takes a new one."""

    def __init__(self) -> None:
        self._tasks: queue.Queue[_Task[Any]] = queue.Queue()
        self.retired = False
        self._thread = threading.Thread(target=self._loop, name="edge-agent-deploy-stage", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self.retired:
            task = self._tasks.get()
            result, error = None, None
            try:
                result = task.work()
            except BaseException as e:  # handed to the waiting caller, or to on_late
                error = e
            with task.lock:
                task.result, task.error = result, error
                task.done.set()
                late = task.abandoned
            if late and task.on_late is not None:
                try:
                    task.on_late(result, error)
                except Exception:
                    log.exception("cleaning up after an abandoned deploy stage")

    def retire(self) -> None:
        """End the thread once what it runs now (if anything) has ended."""
        self.retired = True
        self._tasks.put(_Task(lambda: None, None))  # wakes an idle loop to see it

    def run(
        self, work: Callable[[], T], deadline_s: float, on_late: Optional[LateHandler[T]] = None
    ) -> _Task[T]:
        """Run ``work`` here; returns its task, ``done`` set unless the deadline passed first (then
        the task is abandoned and this thread retired)."""
        task: _Task[T] = _Task(work, on_late)
        self._tasks.put(task)
        task.done.wait(deadline_s)
        with task.lock:
            if not task.done.is_set():
                task.abandoned = True
                self.retired = True  # its loop ends once the abandoned work returns
        return task


def _reason(e: BaseException) -> str:
    text = str(e)
    return text if text else type(e).__name__


class Deployer(Generic[D]):
    """Runs the deploys and rollbacks of one device, one at a time (see the module doc)."""

    def __init__(
        self,
        store: ModelStore,
        *,
        s3: S3Config,
        trusted_keys: Sequence[Ed25519PublicKey],
        build: Build[D],
        activate: Activate[D],
        timeouts: StoreTimeouts = StoreTimeouts(),
        cafile: Optional[Path] = None,
    ) -> None:
        self.store = store
        self.s3 = s3
        self.trusted_keys = list(trusted_keys)
        self.build = build
        self.activate = activate
        self.timeouts = timeouts
        self.cafile = cafile
        self._slot = threading.Lock()
        self._busy = False
        self._stopped = False
        self._stage = "downloading"  # the stage under way, for errors nobody foresaw
        self._stage_thread: Optional[_StageThread] = None
        self._requests: queue.Queue[Optional[_Queued]] = queue.Queue()
        self._worker: Optional[threading.Thread] = None

    # -- the worker and its one slot ------------------------------------------------------------

    def start(self) -> None:
        """Start the worker thread that ``try_submit`` hands requests to."""
        self._worker = threading.Thread(target=self._work, name="edge-agent-deployer", daemon=True)
        self._worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Refuse new requests, let the worker finish what it runs (for up to ``timeout`` s),
        end it and the idle stage thread."""
        with self._slot:
            self._stopped = True
        self._requests.put(None)
        if self._worker is not None:
            self._worker.join(timeout)
        if self._stage_thread is not None:
            self._stage_thread.retire()

    def try_submit(
        self,
        request: Request,
        report: Report,
        on_end: Callable[[Outcome], None],
        accepted: Callable[[], None] = lambda: None,
        settle: Callable[[Outcome], None] = lambda outcome: None,
    ) -> bool:
        """Hand ``request`` to the worker; False (and nothing called) while another runs or
        after ``stop``. ``accepted`` runs in the caller's thread once the slot is taken and
        before the worker starts (the agent answers ``accepted`` there, so it precedes every
        ``in_progress``); if it raises, the slot is freed and the exception goes to the caller.
        On the worker, with the activated version or the failure: ``settle`` while the slot is
        still held (the agent commits or reverts its switch there, before anything else can
        start a switch), then ``on_end`` once it is free (the final result: a caller that
        deploys again on hearing it is not answered "busy")."""
        if not self._take_slot():
            return False
        try:
            accepted()
        except BaseException:
            self._free_slot()
            raise
        self._requests.put((request, report, settle, on_end))
        return True

    @property
    def busy(self) -> bool:
        return self._busy

    def _take_slot(self) -> bool:
        with self._slot:
            if self._busy or self._stopped:
                return False
            self._busy = True
            return True

    def _free_slot(self) -> None:
        with self._slot:
            self._busy = False

    def _work(self) -> None:
        while True:
            item = self._requests.get()
            if item is None:
                return
            request, report, settle, on_end = item
            try:
                outcome: Outcome = self._run(request, report)
            except DeployFailed as e:
                outcome = e
            try:
                settle(outcome)
            except Exception as e:  # the worker must outlive a bug in what the caller does next
                log.exception("settling the %s", type(request).__name__)
                outcome = DeployFailed(self._stage, f"internal error: {_reason(e)}")
            finally:
                self._free_slot()
            try:
                on_end(outcome)
            except Exception:
                log.exception("after the %s", type(request).__name__)

    # -- public operations ----------------------------------------------------------------------

    def deploy(
        self,
        manifest_uri: str,
        *,
        sha256: Optional[str] = None,
        backend: Optional[str] = None,
        allow_downgrade: bool = False,
        files: Optional[Mapping[str, str]] = None,
        report: Report,
    ) -> StoredVersion:
        """Download, verify, load, warm and activate the bundle at ``manifest_uri`` in the
        caller's thread; returns the activated version or raises DeployFailed (DeployBusy while
        another deploy or rollback runs)."""
        return self._run_now(DeployRequest(manifest_uri, sha256, backend, allow_downgrade, files), report)

    def rollback(self, version: Optional[str], *, report: Report) -> StoredVersion:
        """Activate the installed ``version`` (of the current model's name, preferably), or the
        previous one, without downloading, in the caller's thread."""
        return self._run_now(RollbackRequest(version), report)

    def _run_now(self, request: Request, report: Report) -> StoredVersion:
        if not self._take_slot():
            raise DeployBusy("another deploy or rollback is in progress")
        try:
            return self._run(request, report)
        finally:
            self._free_slot()

    def _run(self, request: Request, report: Report) -> StoredVersion:
        try:
            if isinstance(request, DeployRequest):
                return self._deploy(request, report)
            return self._rollback(request.version, report)
        except DeployFailed:
            raise
        except Exception as e:  # a bug or an unexpected OS error is still a failed deploy
            what = redact(request.manifest_uri) if isinstance(request, DeployRequest) else request
            log.exception("%s of %s", type(request).__name__, what)
            raise DeployFailed(self._stage, _reason(e)) from e

    # -- stages ---------------------------------------------------------------------------------

    def _say(self, report: Report, stage: str, progress: Optional[float], detail: Optional[str]) -> None:
        self._stage = stage
        try:
            report(stage, progress, detail)
        except Exception:
            log.exception("reporting %s", stage)

    def _in_stage(
        self, stage: str, work: Callable[[], T], deadline_s: float, on_late: Optional[LateHandler[T]] = None
    ) -> T:
        """``work`` on the stage thread, with the stage's one deadline; DeployFailed(stage, …)
        when it fails or is abandoned."""
        if self._stage_thread is None or self._stage_thread.retired:
            self._stage_thread = _StageThread()
        task = self._stage_thread.run(work, deadline_s, on_late)
        if not task.done.is_set():
            raise _StageTimedOut(stage, f"timed out after {deadline_s:g} s")
        if task.error is not None:
            if isinstance(task.error, DeployFailed):
                raise task.error
            raise DeployFailed(stage, _reason(task.error)) from task.error
        return task.result  # type: ignore[return-value]  # set when the work ended without error

    def _download(self, uri: str, staging: Path, files: Optional[Mapping[str, str]], report: Report) -> None:
        cancelled = threading.Event()

        def progress(fraction: float, name: str) -> None:
            if not cancelled.is_set():  # nothing in progress after the stage has failed
                try:
                    report("downloading", fraction, name)
                except Exception:
                    log.exception("reporting download progress")

        def work() -> None:
            try:
                fetch_bundle(
                    uri,
                    staging,
                    s3=self.s3,
                    max_bytes=self.store.max_bundle_bytes,
                    files=files,
                    progress=progress,
                    cancelled=cancelled,
                    stall_s=self.timeouts.download_stall_s,
                    cafile=self.cafile,
                )
            except FetchIntegrityError as e:  # what arrived is not what the manifest lists
                raise DeployFailed("verifying", str(e)) from e

        def late(_result: Optional[None], _error: Optional[BaseException]) -> None:
            self.store.discard(staging)  # the worker may have written after the first discard

        try:
            self._in_stage("downloading", work, self.timeouts.download_s, late)
        finally:
            cancelled.set()

    def _check(self, directory: Path, sha256: Optional[str], allow_downgrade: bool) -> str:
        """Verify the bundle in ``directory`` (staging, or an installed copy) against the command
        and the release keys; its ``name@version``."""
        try:
            bundle = load_bundle(directory, verify=True)
        except BundleError as e:
            raise DeployFailed("verifying", str(e)) from e
        manifest = bundle.manifest
        if sha256 is not None and bundle.manifest_sha256 != sha256.lower():
            raise DeployFailed(
                "verifying",
                f"manifest.json sha256 {bundle.manifest_sha256} is not the expected {sha256.lower()}",
            )
        if self.trusted_keys:
            if bundle.signature is None:
                raise DeployFailed("verifying", "manifest.sig is missing and trusted keys are set")
            if not signing.verify(bundle.manifest_bytes, bundle.signature, self.trusted_keys):
                raise DeployFailed("verifying", "manifest.sig does not verify against any trusted key")
        current = self.store.current()
        if (
            current is not None
            and (current.name, current.version) == (manifest.name, manifest.version)
            and current.manifest_sha256 != bundle.manifest_sha256
        ):
            raise DeployFailed(
                "verifying",
                f"{manifest.ident} is current with another manifest (sha256 {current.manifest_sha256}); "
                "versions are immutable: publish a new one",
            )
        if (
            current is not None
            and current.name == manifest.name
            and version_key(manifest.version) < version_key(current.version)
            and not allow_downgrade
        ):
            raise DeployFailed(
                "verifying",
                f"{manifest.ident} is older than the current {current.version}; "
                "a downgrade needs allow_downgrade (or use rollback)",
            )
        return manifest.ident

    def _install_in_time(self, staging: Path) -> Tuple[StoredVersion, bool]:
        """``_install`` under the activating deadline (it writes and syncs the whole bundle: a
        failing SD card can hang there); an install that ends after it is removed again."""

        def late(result: Optional[Tuple[StoredVersion, bool]], _error: Optional[BaseException]) -> None:
            if result is not None and result[1]:
                self._remove_quietly(result[0])

        return self._in_stage("activating", lambda: self._install(staging), self.timeouts.activating_s, late)

    def _install(self, staging: Path) -> Tuple[StoredVersion, bool]:
        """Move the verified staging copy into the store (which makes room first); (the installed
        version, whether this deploy installed it anew)."""
        bundle = load_bundle(staging, verify=False)
        before = self.store.find(bundle.manifest.version, bundle.manifest.name)
        try:
            installed = self.store.install(staging, verify=False)
        except EdgewatchError as e:
            raise DeployFailed("activating", str(e)) from e
        fresh = before is None or before.manifest_sha256 != installed.manifest_sha256
        return installed, fresh

    def _load_warm(
        self, directory: Path, ident: str, backend: Optional[str], report: Report, check_files: bool
    ) -> D:
        """Load (``loading``) and warm (``warming``) a detector, each under its own deadline; a
        detector that fails to warm, or that an abandoned stage still produces, is closed."""
        self._say(report, "loading", None, ident)

        def load() -> D:
            if check_files:  # a rollback: the files have sat on disk since they were verified
                try:
                    load_bundle(directory, verify=True)
                except BundleError as e:
                    raise DeployFailed("loading", str(e)) from e
            return self.build(directory, backend)

        def late_load(detector: Optional[D], error: Optional[BaseException]) -> None:
            if error is None and detector is not None:
                log.warning("closing the detector for %s that finished loading after its timeout", ident)
                detector.close()

        detector = self._in_stage("loading", load, self.timeouts.loading_s, late_load)
        self._say(report, "warming", None, ident)
        try:
            self._in_stage("warming", detector.warm, self.timeouts.warming_s, lambda _r, _e: detector.close())
        except _StageTimedOut:
            raise  # still warming: the stage thread closes it when warm() returns
        except DeployFailed:
            detector.close()
            raise
        return detector

    def _activate(
        self, sv: StoredVersion, detector: D, report: Report, fresh: bool, backend: Optional[str] = None
    ) -> StoredVersion:
        """activate(), then record as current, then prune. ``fresh``: this deploy installed
        ``sv``, so a failure before the pipeline took it removes it again."""
        self._say(report, "activating", None, sv.ident)
        try:
            self.activate(detector, self.timeouts.activating_s)
        except Exception as e:
            detector.close()
            if fresh:
                self._remove_quietly(sv)
            raise DeployFailed("activating", _reason(e)) from e
        try:
            self.store.set_current(sv, backend)
        except Exception as e:
            raise DeployFailed(
                "activating", f"{sv.ident} serves but cannot be recorded as current: {e}", activated=True
            ) from e
        try:
            for removed in self.store.prune():
                log.info("pruned %s", removed.ident)
        except Exception:  # the deploy succeeded; a version too many on disk is no failure
            log.exception("pruning the model store")
        return sv

    def _deploy(self, request: DeployRequest, report: Report) -> StoredVersion:
        """Download and verify into staging, load and warm from there, and only then install into
        the store (making room) and activate: a deploy that fails before activating leaves the
        store as it was, every rollback target included."""
        self._stage = "downloading"
        r = request
        staging: Optional[Path] = None
        try:
            installed = self._installed_with_sha256(r.sha256) if r.sha256 else None
            if installed is not None:
                self._say(report, "downloading", 1.0, f"{installed.ident} is already installed")
                directory = installed.dir
            else:
                staging = self.store.new_staging()
                self._say(report, "downloading", 0.0, redact(r.manifest_uri))
                self._download(r.manifest_uri, staging, r.files, report)
                directory = staging
            self._say(report, "verifying", None, None)
            ident = self._in_stage(
                "verifying",
                lambda: self._check(directory, r.sha256, r.allow_downgrade),
                self.timeouts.verifying_s,
            )
            detector = self._load_warm(directory, ident, r.backend, report, check_files=False)
            self._stage = "activating"
            try:
                sv, fresh = (installed, False) if installed is not None else self._install_in_time(directory)
            except BaseException:
                detector.close()
                raise
        finally:
            if staging is not None and staging.exists():  # install() renamed it on success
                self.store.discard(staging)
        return self._activate(sv, detector, report, fresh, r.backend)

    def _rollback(self, version: Optional[str], report: Report) -> StoredVersion:
        self._stage = "loading"
        current = self.store.current()
        target = self.store.find(version) if version is not None else self.store.previous()
        if target is None:
            have = ", ".join(sv.ident for sv in self.store.versions()) or "none"
            wanted = f"version {version}" if version is not None else "a previous version"
            raise DeployFailed("loading", f"{wanted} is not installed (installed: {have})")
        if current is not None and (current.name, current.version) == (target.name, target.version):
            raise DeployFailed("loading", f"{target.ident} is already the current version")
        detector = self._load_warm(target.dir, target.ident, None, report, check_files=True)
        return self._activate(target, detector, report, fresh=False)

    # -- helpers --------------------------------------------------------------------------------

    def _installed_with_sha256(self, sha256: str) -> Optional[StoredVersion]:
        wanted = sha256.lower()
        return next((sv for sv in self.store.versions() if sv.manifest_sha256 == wanted), None)

    def _remove_quietly(self, sv: StoredVersion) -> None:
        try:
            self.store.remove(sv)
        except EdgewatchError:
            log.exception("removing %s after a failed deploy", sv.ident)


__all__ = [
    "Activate",
    "Build",
    "DeployBusy",
    "DeployFailed",
    "DeployRequest",
    "Deployer",
    "Outcome",
    "Report",
    "RollbackRequest",
    "Servable",
]
