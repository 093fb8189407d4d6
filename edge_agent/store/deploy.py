"""The staged deploy and rollback of SPEC §6, independent of MQTT and of the pipeline's threads.

A deploy goes through ``downloading``, ``verifying``, ``loading``, ``warming`` and ``activating``;
a rollback through ``loading``, ``warming`` and ``activating``. Each stage is reported through the
caller's ``report(stage, progress, detail)`` and runs its blocking work in a worker thread under
the stage's timeout (``store.timeouts``). Any failure raises :class:`DeployFailed` naming the
stage and the reason, with the old model still serving, the staging directory removed and the
store's current version unchanged.

What the caller (the agent) supplies and must know:

- ``build(bundle_dir, backend)`` loads a detector from a verified bundle directory while the old
  one keeps serving: for a new version that is its staging copy, which is renamed into the
  store only once the detector has loaded and warmed (so the detector must not reopen files by
  path afterwards; the backends read or map them at load, and a rename keeps both valid), and a
  deploy that fails before that never touches the store. ``close(detector)`` releases one that
  was never activated. A ``build`` or
  ``warm()`` that outlives its timeout is abandoned: the deploy fails at once, and when the
  worker finishes later, whatever it built is closed.
- ``activate(detector)`` hands the detector to the pipeline and returns once it serves. If it
  raises, the detector is closed. If it does not return within ``timeouts.activating_s`` the deploy
  fails; should it return later after all, the pipeline serves the new model, so it is then
  recorded as current (and logged) rather than closed under the pipeline's feet.
- If ``activate`` succeeded but recording the new version as current failed, the new detector
  is serving while the store still names the old version: ``DeployFailed("activating", …)`` is
  raised with ``activated=True``, and switching back to the previous detector (and closing the
  new one) is the agent's job.
- ``report`` may be called from a worker thread (download progress); its exceptions are logged,
  never allowed to fail a deploy.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any, Callable, Generic, Mapping, Optional, Sequence, Tuple, TypeVar

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


class DeployFailed(EdgewatchError):
    """A deploy or rollback failed in ``stage`` for ``reason``. ``activated`` is True only when
    the new detector was activated but could not be recorded as current (see the module doc)."""

    def __init__(self, stage: str, reason: str, *, activated: bool = False) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.activated = activated


LateHandler = Callable[[Optional[T], Optional[BaseException]], None]


class _Job(Generic[T]):
    """Blocking work in a daemon thread that the caller waits for with a timeout. When the
    caller gives up, ``on_late(result, error)`` runs in the worker once the work ends, so that
    what the work produced is never leaked."""

    def __init__(self, name: str, work: Callable[[], T], on_late: Optional[LateHandler[T]] = None) -> None:
        self._work = work
        self._on_late = on_late
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._abandoned = False
        self.result: Optional[T] = None
        self.error: Optional[BaseException] = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        result: Optional[T] = None
        error: Optional[BaseException] = None
        try:
            result = self._work()
        except BaseException as e:  # handed to the waiting caller, or to on_late
            error = e
        with self._lock:
            self.result, self.error = result, error
            self._done.set()
            late = self._abandoned
        if late and self._on_late is not None:
            try:
                self._on_late(result, error)
            except Exception:
                log.exception("cleaning up after an abandoned %s", self._thread.name)

    def wait(self, timeout: float) -> bool:
        """True when the work ended in time; False when it is abandoned to ``on_late``."""
        self._done.wait(timeout)
        with self._lock:
            if self._done.is_set():
                return True
            self._abandoned = True
            return False


def _reason(e: BaseException) -> str:
    text = str(e)
    return text if text else type(e).__name__


class Deployer:
    """Runs one deploy or rollback at a time in the caller's thread (see the module doc)."""

    def __init__(
        self,
        store: ModelStore,
        *,
        s3: S3Config,
        trusted_keys: Sequence[Ed25519PublicKey],
        build: Callable[[Path, Optional[str]], Any],
        activate: Callable[[Any], None],
        close: Callable[[Any], None],
        timeouts: StoreTimeouts = StoreTimeouts(),
        cafile: Optional[Path] = None,
    ) -> None:
        self.store = store
        self.s3 = s3
        self.trusted_keys = list(trusted_keys)
        self.build = build
        self.activate = activate
        self.close = close
        self.timeouts = timeouts
        self.cafile = cafile
        self._slot = threading.Lock()
        self._busy = False
        self._stage = "downloading"  # the stage under way, for errors nobody foresaw

    # -- the one-at-a-time slot -----------------------------------------------------------------

    def try_begin(self) -> bool:
        """Take the slot; False when a deploy or rollback is running (the agent answers busy)."""
        with self._slot:
            if self._busy:
                return False
            self._busy = True
            return True

    @property
    def busy(self) -> bool:
        return self._busy

    def _end(self) -> None:
        with self._slot:
            self._busy = False

    def _require_slot(self) -> None:
        if not self._busy:
            raise RuntimeError("call try_begin() first, and deploy or roll back only when it returned True")

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
        """Download, verify, load, warm and activate the bundle at ``manifest_uri``; returns the
        activated version or raises DeployFailed. Releases the slot taken by try_begin()."""
        self._require_slot()
        try:
            return self._deploy(manifest_uri, sha256, backend, allow_downgrade, files, report)
        except DeployFailed:
            raise
        except Exception as e:  # a bug or an unexpected OS error is still a failed deploy
            log.exception("deploy of %s", redact(manifest_uri))
            raise DeployFailed(self._stage, _reason(e)) from None
        finally:
            self._end()

    def rollback(self, version: Optional[str], *, report: Report) -> StoredVersion:
        """Activate the installed ``version`` (of the current model's name, preferably), or the
        previous one, without downloading. Releases the slot taken by try_begin()."""
        self._require_slot()
        try:
            return self._rollback(version, report)
        except DeployFailed:
            raise
        except Exception as e:
            log.exception("rollback to %s", version or "the previous version")
            raise DeployFailed(self._stage, _reason(e)) from None
        finally:
            self._end()

    # -- stages ---------------------------------------------------------------------------------

    def _say(self, report: Report, stage: str, progress: Optional[float], detail: Optional[str]) -> None:
        self._stage = stage
        try:
            report(stage, progress, detail)
        except Exception:
            log.exception("reporting %s", stage)

    def _close_quietly(self, detector: Any) -> None:
        try:
            self.close(detector)
        except Exception:
            log.exception("closing a detector that was not activated")

    def _wait(self, stage: str, job: _Job[T], timeout: float) -> T:
        if not job.wait(timeout):
            raise DeployFailed(stage, f"timed out after {timeout:g} s")
        if job.error is not None:
            if isinstance(job.error, DeployFailed):
                raise job.error
            raise DeployFailed(stage, _reason(job.error))
        return job.result  # type: ignore[return-value]  # set when the work ended without error

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
                raise DeployFailed("verifying", str(e)) from None

        def late(_result: Optional[None], _error: Optional[BaseException]) -> None:
            self.store.discard(staging)  # the worker may have written after the first discard

        try:
            self._wait("downloading", _Job("deploy-downloading", work, late), self.timeouts.download_s)
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
        def late(result: Optional[Tuple[StoredVersion, bool]], _error: Optional[BaseException]) -> None:
            if result is not None and result[1]:
                self._remove_quietly(result[0])

        job = _Job("deploy-installing", lambda: self._install(staging), late)
        return self._wait("activating", job, self.timeouts.activating_s)

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

    def _load(
        self, directory: Path, ident: str, backend: Optional[str], report: Report, check_files: bool
    ) -> Any:
        self._say(report, "loading", None, ident)

        def work() -> Any:
            if check_files:  # a rollback: the files have sat on disk since they were verified
                try:
                    load_bundle(directory, verify=True)
                except BundleError as e:
                    raise DeployFailed("loading", str(e)) from e
            return self.build(directory, backend)

        def late(detector: Optional[Any], error: Optional[BaseException]) -> None:
            if error is None and detector is not None:
                log.warning("closing the detector for %s that finished loading after its timeout", ident)
                self._close_quietly(detector)

        return self._wait("loading", _Job("deploy-loading", work, late), self.timeouts.loading_s)

    def _warm(self, ident: str, detector: Any, report: Report) -> None:
        """Warm the detector; on failure it is closed (at once, or by the worker after a timeout)."""
        self._say(report, "warming", None, ident)

        def work() -> None:
            warm = getattr(detector, "warm", None)
            if callable(warm):
                warm()

        def late(_result: Optional[None], _error: Optional[BaseException]) -> None:
            self._close_quietly(detector)

        job = _Job("deploy-warming", work, late)
        if not job.wait(self.timeouts.warming_s):
            raise DeployFailed("warming", f"timed out after {self.timeouts.warming_s:g} s")
        if job.error is not None:
            self._close_quietly(detector)
            raise DeployFailed("warming", _reason(job.error))

    def _activate(
        self, sv: StoredVersion, detector: Any, report: Report, fresh: bool, backend: Optional[str] = None
    ) -> StoredVersion:
        """activate(), then record as current, then prune. ``fresh``: this deploy installed
        ``sv``, so a failure before the pipeline took it removes it again."""
        self._say(report, "activating", None, sv.ident)

        def late(_result: Optional[None], error: Optional[BaseException]) -> None:
            if error is not None:
                self._close_quietly(detector)
                return
            log.warning("%s was activated after its timeout; recording it as current", sv.ident)
            try:
                self.store.set_current(sv, backend)
            except EdgewatchError:
                log.exception("recording %s as current after a late activation", sv.ident)

        job = _Job("deploy-activating", lambda: self.activate(detector), late)
        if not job.wait(self.timeouts.activating_s):
            raise DeployFailed(
                "activating",
                f"the pipeline did not take the new model within {self.timeouts.activating_s:g} s",
            )
        if job.error is not None:
            self._close_quietly(detector)
            if fresh:
                self._remove_quietly(sv)
            raise DeployFailed("activating", _reason(job.error))
        try:
            self.store.set_current(sv, backend)
        except Exception as e:
            raise DeployFailed(
                "activating", f"{sv.ident} serves but cannot be recorded as current: {e}", activated=True
            ) from None
        try:
            for removed in self.store.prune():
                log.info("pruned %s", removed.ident)
        except Exception:  # the deploy succeeded; a version too many on disk is no failure
            log.exception("pruning the model store")
        return sv

    def _deploy(
        self,
        uri: str,
        sha256: Optional[str],
        backend: Optional[str],
        allow_downgrade: bool,
        files: Optional[Mapping[str, str]],
        report: Report,
    ) -> StoredVersion:
        """Download and verify into staging, load and warm from there, and only then install into
        the store (making room) and activate: a deploy that fails before activating leaves the
        store as it was, every rollback target included."""
        self._stage = "downloading"
        staging: Optional[Path] = None
        try:
            installed = self._installed_with_sha256(sha256) if sha256 else None
            if installed is not None:
                self._say(report, "downloading", 1.0, f"{installed.ident} is already installed")
                directory = installed.dir
            else:
                staging = self.store.new_staging()
                self._say(report, "downloading", 0.0, redact(uri))
                self._download(uri, staging, files, report)
                directory = staging
            self._say(report, "verifying", None, None)
            ident = self._wait(
                "verifying",
                _Job("deploy-verifying", lambda: self._check(directory, sha256, allow_downgrade)),
                self.timeouts.verifying_s,
            )
            detector = self._load(directory, ident, backend, report, check_files=False)
            self._warm(ident, detector, report)
            self._stage = "activating"
            try:
                sv, fresh = (installed, False) if installed is not None else self._install_in_time(directory)
            except BaseException:
                self._close_quietly(detector)
                raise
        finally:
            if staging is not None and staging.exists():  # install() renamed it on success
                self.store.discard(staging)
        return self._activate(sv, detector, report, fresh, backend)

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
        detector = self._load(target.dir, target.ident, None, report, check_files=True)
        self._warm(target.ident, detector, report)
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


__all__ = ["DeployFailed", "Deployer", "Report"]
