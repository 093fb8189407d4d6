"""The on-disk model store (SPEC §6.4, §6.6).

Layout under the store's root (``store.dir``)::

    models/NAME/VERSION/   installed bundles: manifest.json, manifest.sig?, the listed files
    staging/               downloads in progress, and directories on their way out
    current.json           which version is current, and the activation history

``current.json`` is the only thing that says which version is current. It is replaced as a
whole (temporary file, fsync, ``os.replace``, fsync of the directory), so a reader, or the agent
after a power cut, sees the old pointer or the new one, never half of one. Bundles enter
``models/`` by renaming a complete, verified, fsynced staging directory, and leave it by being
renamed into ``staging/`` before they are deleted; ``recover()`` at start deletes whatever a crash
left in ``staging/`` and checks that the current version is complete and verified, falling back
to the most recently activated version that is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..bundle import MANIFEST, load_bundle
from ..bundle.manifest import NAME_RE, SEMVER_RE, Manifest, version_key
from ..config import S3Config
from ..errors import BundleError, EdgewatchError
from ..messages import utc_now_iso
from .fetch import fetch_bundle

log = logging.getLogger(__name__)

POINTER = "current.json"
MODELS = "models"
STAGING = "staging"
MAX_HISTORY = 100


class StoreError(EdgewatchError):
    """The store cannot do what was asked; the message names the version or path."""


@dataclass(frozen=True)
class StoredVersion:
    """An installed bundle. ``manifest_sha256`` is the sha256 of its exact manifest.json bytes."""

    name: str
    version: str
    dir: Path
    manifest: Manifest
    manifest_sha256: str = ""

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.version}"


class Activation(BaseModel):
    model_config = ConfigDict(extra="ignore")

    name: str
    version: str
    manifest_sha256: str
    activated: str
    # The backend the activating command named (deploy --backend), so that a restart or a
    # reload loads the version where it was proven to load; None: the configured one.
    backend: Optional[str] = None

    @property
    def ident(self) -> str:
        return f"{self.name}@{self.version}"


class Pointer(BaseModel):
    """current.json: the current version, then the activation history (most recent first,
    one entry per version, the current one included)."""

    model_config = ConfigDict(extra="ignore")

    schema_: int = Field(1, alias="schema")
    name: str
    version: str
    manifest_sha256: str
    history: List[Activation]

    @classmethod
    def at(cls, history: List[Activation]) -> Pointer:
        """The pointer whose current version is ``history[0]``."""
        head = history[0]
        return cls(
            schema=1,
            name=head.name,
            version=head.version,
            manifest_sha256=head.manifest_sha256,
            history=history[:MAX_HISTORY],
        )


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_file():
            with child.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


class ModelStore:
    """Installed bundles and the current-version pointer. Thread-safe: the agent's command
    handler and its start-up code may use one store together."""

    def __init__(self, root: Union[str, Path], keep_versions: int, max_bundle_bytes: int) -> None:
        if keep_versions < 1:
            raise ValueError("keep_versions must be at least 1 (the current version)")
        self.root = Path(root)
        self.keep_versions = keep_versions
        self.max_bundle_bytes = max_bundle_bytes
        self.models_dir = self.root / MODELS
        self.staging_dir = self.root / STAGING
        self.pointer_path = self.root / POINTER
        self._lock = threading.RLock()
        self._manifests: Dict[Path, Tuple[int, StoredVersion]] = {}
        try:
            self.models_dir.mkdir(parents=True, exist_ok=True)
            self.staging_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"{self.root}: cannot create the model store: {e.strerror}") from e

    # -- reading ---------------------------------------------------------------------------

    def _read_pointer(self) -> Optional[Pointer]:
        """The pointer, or None when there is none. Raises StoreError when it is unreadable."""
        try:
            data = self.pointer_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{self.pointer_path}: cannot read: {e.strerror}") from e
        try:
            return Pointer.model_validate_json(data)
        except ValidationError as e:
            raise StoreError(f"{self.pointer_path}: not a valid pointer: {e.errors()[0]['msg']}") from e

    def _load(self, directory: Path) -> Optional[StoredVersion]:
        """The installed version in ``directory`` (manifest parsed, files not hashed), or None."""
        mpath = directory / MANIFEST
        try:
            stamp = mpath.stat().st_mtime_ns
        except OSError:
            return None
        cached = self._manifests.get(directory)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            bundle = load_bundle(directory, verify=False)
        except BundleError as e:
            log.warning("ignoring %s: %s", directory, e)
            return None
        sv = StoredVersion(
            name=bundle.manifest.name,
            version=bundle.manifest.version,
            dir=directory,
            manifest=bundle.manifest,
            manifest_sha256=bundle.manifest_sha256,
        )
        self._manifests[directory] = (stamp, sv)
        return sv

    def _installed_dir(self, name: str, version: str) -> Path:
        if not NAME_RE.match(name) or not SEMVER_RE.match(version):
            raise StoreError(f"{name}@{version}: not a valid bundle name and version")
        return self.models_dir / name / version

    def _installed(self, name: str, version: str) -> Optional[StoredVersion]:
        try:
            directory = self._installed_dir(name, version)
        except StoreError:
            return None
        sv = self._load(directory)
        # A directory whose manifest names another version is not that version.
        return sv if sv is not None and (sv.name, sv.version) == (name, version) else None

    def _all_installed(self) -> List[StoredVersion]:
        found = []
        for name_dir in sorted(p for p in self.models_dir.iterdir() if p.is_dir()):
            for version_dir in sorted(p for p in name_dir.iterdir() if p.is_dir()):
                sv = self._installed(name_dir.name, version_dir.name)
                if sv is not None:
                    found.append(sv)
        return found

    def current(self) -> Optional[StoredVersion]:
        """The current version, as the pointer names it (``recover()`` checked its files)."""
        with self._lock:
            try:
                pointer = self._read_pointer()
            except StoreError as e:
                log.error("%s", e)
                return None
            if pointer is None:
                return None
            return self._installed(pointer.name, pointer.version)

    def versions(self) -> List[StoredVersion]:
        """Installed versions, most recently activated first; never-activated ones last, the
        highest version first."""
        with self._lock:
            installed = {(sv.name, sv.version): sv for sv in self._all_installed()}
            try:
                pointer = self._read_pointer()
            except StoreError:
                pointer = None
            ordered: List[StoredVersion] = []
            for entry in pointer.history if pointer is not None else []:
                sv = installed.pop((entry.name, entry.version), None)
                if sv is not None:
                    ordered.append(sv)
            rest = sorted(installed.values(), key=lambda sv: (version_key(sv.version), sv.name), reverse=True)
            return ordered + rest

    def previous(self) -> Optional[StoredVersion]:
        """The installed version that was active before the current one (rollback's target)."""
        with self._lock:
            try:
                pointer = self._read_pointer()
            except StoreError:
                return None
            if pointer is None:
                return None
            for entry in pointer.history:
                if (entry.name, entry.version) == (pointer.name, pointer.version):
                    continue
                sv = self._installed(entry.name, entry.version)
                if sv is not None:
                    return sv
            return None

    def find(self, version: str, name: Optional[str] = None) -> Optional[StoredVersion]:
        """The installed ``version`` of ``name``; without a name, preferably of the current
        model's name, else the most recently activated one with that version."""
        with self._lock:
            matches = [
                sv for sv in self.versions() if sv.version == version and (name is None or sv.name == name)
            ]
            if not matches:
                return None
            current = self.current()
            if name is None and current is not None:
                for sv in matches:
                    if sv.name == current.name:
                        return sv
            return matches[0]

    # -- staging and installing -------------------------------------------------------------

    def new_staging(self) -> Path:
        """A fresh, empty directory under staging/."""
        self.staging_dir.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="fetch-", dir=self.staging_dir))

    def discard(self, staging: Path) -> None:
        """Delete a staging directory (never anything outside staging/)."""
        path = Path(staging)
        if path.resolve().parent != self.staging_dir.resolve():
            raise StoreError(f"{path}: not a staging directory of {self.root}")
        shutil.rmtree(path, ignore_errors=True)

    def _retire(self, directory: Path) -> None:
        """Take a directory out of models/ atomically, then delete it: a crash mid-delete leaves
        a half-deleted directory in staging/ (cleaned at start), never in models/."""
        trash = Path(tempfile.mkdtemp(prefix="retired-", dir=self.staging_dir))
        os.replace(directory, trash / "bundle")
        _fsync_dir(directory.parent)
        self._manifests.pop(directory, None)
        shutil.rmtree(trash, ignore_errors=True)
        with contextlib.suppress(OSError):  # the name's directory goes with its last version
            directory.parent.rmdir()

    def install(self, staging: Path, *, verify: bool = True) -> StoredVersion:
        """Move a complete staging directory to models/NAME/VERSION after verifying every file
        (``verify=False``: the caller has just done so).

        An installed directory with the same manifest that still verifies is kept (the staging
        copy is discarded); a broken one, or a different build of the same version that is not
        current, is replaced. The version is not made current."""
        staging = Path(staging)
        try:
            bundle = load_bundle(staging, verify=verify)
        except BundleError as e:
            raise StoreError(f"cannot install {staging}: {e}") from e
        name, version = bundle.manifest.name, bundle.manifest.version
        # Durable before anything in models/ changes: a power cut after this point finds a
        # complete copy here (recover() restores a current version from it).
        _fsync_tree(staging)
        with self._lock:
            target = self._installed_dir(name, version)
            existing = self._installed(name, version)
            if target.exists():
                if existing is not None and existing.manifest_sha256 == bundle.manifest_sha256:
                    try:
                        load_bundle(target, verify=True)
                    except BundleError as e:
                        log.warning("replacing the broken install of %s: %s", existing.ident, e)
                    else:
                        self.discard(staging)
                        return existing
                else:
                    current = self.current()
                    if current is not None and (current.name, current.version) == (name, version):
                        raise StoreError(
                            f"{name}@{version} is current and installed with a different manifest "
                            f"(sha256 {current.manifest_sha256}); versions are immutable: publish a new one"
                        )
                self._retire(target)
            else:
                # The store never holds more than keep_versions (SPEC §6.5), not even while a
                # deploy that a crash may cut short has installed its version and not yet
                # activated it. (keep_versions 1: the current one and the new one, until then.)
                for removed in self._retain(self.keep_versions - 1):
                    log.info("store: removed %s to make room for %s@%s", removed.ident, name, version)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging, target)
            _fsync_dir(target.parent)
            _fsync_dir(self.models_dir)
            sv = self._load(target)
            if sv is None:  # only if someone changed the directory under our feet
                raise StoreError(f"{target}: unreadable right after installing it")
            return sv

    def import_bundle(self, src: Union[str, Path]) -> StoredVersion:
        """Copy the local bundle directory ``src`` (config ``model.bundle``) into the store,
        hashing as it copies, and install it (not made current)."""
        source = Path(src).expanduser().resolve()
        staging = self.new_staging()
        try:
            fetch_bundle(source.as_uri() + "/", staging, s3=S3Config(), max_bytes=self.max_bundle_bytes)
            return self.install(staging)
        except EdgewatchError as e:
            raise StoreError(f"cannot import {source}: {e}") from e
        finally:
            if staging.exists():
                self.discard(staging)

    # -- the current pointer ----------------------------------------------------------------

    def _write_pointer(self, pointer: Optional[Pointer]) -> None:
        if pointer is None:
            self.pointer_path.unlink(missing_ok=True)
            _fsync_dir(self.root)
            return
        data = pointer.model_dump_json(by_alias=True, indent=2).encode("utf-8") + b"\n"
        fd, tmp = tempfile.mkstemp(prefix=f".{POINTER}.", dir=self.root)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.pointer_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)

    def activated_backend(self, sv: StoredVersion) -> Optional[str]:
        """The backend named when ``sv`` was last activated (None: the configured one)."""
        try:
            pointer = self._read_pointer()
        except StoreError:
            return None
        for entry in pointer.history if pointer is not None else []:
            if (entry.name, entry.version) == (sv.name, sv.version):
                return entry.backend
        return None

    def set_current(self, sv: StoredVersion, backend: Optional[str] = None) -> None:
        """Record ``sv`` as current, atomically on disk, at the head of the history; ``backend``:
        the one its activating command named."""
        with self._lock:
            installed = self._installed(sv.name, sv.version)
            if installed is None or (sv.manifest_sha256 and installed.manifest_sha256 != sv.manifest_sha256):
                raise StoreError(f"{sv.ident} is not installed in {self.models_dir}")
            try:
                old = self._read_pointer()
            except StoreError as e:
                log.warning("%s; starting a new history", e)
                old = None
            entry = Activation(
                name=installed.name,
                version=installed.version,
                manifest_sha256=installed.manifest_sha256,
                activated=utc_now_iso(),
                backend=backend,
            )
            history = [entry] + [
                h
                for h in (old.history if old is not None else [])
                if (h.name, h.version) != (sv.name, sv.version)
            ]
            self._write_pointer(Pointer.at(history))

    def remove(self, sv: StoredVersion) -> None:
        """Delete an installed version that is not current (a deploy that failed after installing)."""
        with self._lock:
            current = self.current()
            if current is not None and (current.name, current.version) == (sv.name, sv.version):
                raise StoreError(f"{sv.ident} is current; it cannot be removed")
            if self._installed(sv.name, sv.version) is not None:
                self._retire(self._installed_dir(sv.name, sv.version))

    def prune(self) -> List[StoredVersion]:
        """Keep the ``keep_versions`` most recently activated versions (the current one always);
        delete the others and drop them from the history. Returns what was removed."""
        return self._retain(self.keep_versions)

    def _retain(self, count: int) -> List[StoredVersion]:
        """Keep the current version and the most recently activated others, ``count`` in all
        (never fewer than the current one); versions never activated go first."""
        with self._lock:
            ordered = self.versions()  # most recently activated first, never-activated last
            current = self.current()
            keep: List[StoredVersion] = [current] if current is not None else []
            for sv in ordered:
                if len(keep) >= count:
                    break
                if current is None or (sv.name, sv.version) != (current.name, current.version):
                    keep.append(sv)
            kept = {(sv.name, sv.version) for sv in keep}
            removed = [sv for sv in ordered if (sv.name, sv.version) not in kept]
            for sv in removed:
                self._retire(sv.dir)
            pointer = self._read_pointer()
            if pointer is not None and removed:
                history = [h for h in pointer.history if (h.name, h.version) in kept]
                self._write_pointer(pointer.model_copy(update={"history": history}))
            return removed

    # -- start-up ---------------------------------------------------------------------------

    def _check(self, entry: Activation) -> Optional[str]:
        """None when the version ``entry`` names is installed, complete and verified, with the
        manifest it was activated with; else why not."""
        try:
            directory = self._installed_dir(entry.name, entry.version)
        except StoreError as e:
            return str(e)
        try:
            bundle = load_bundle(directory, verify=True)
        except BundleError as e:
            return str(e)
        if (bundle.manifest.name, bundle.manifest.version) != (entry.name, entry.version):
            return f"{directory / MANIFEST} names {bundle.manifest.ident}"
        if bundle.manifest_sha256 != entry.manifest_sha256:
            return (
                f"{directory / MANIFEST}: sha256 {bundle.manifest_sha256} "
                f"is not the activated {entry.manifest_sha256}"
            )
        return None

    def _restore_from_staging(self, entry: Activation) -> bool:
        """A crash while replacing an installed directory can leave the only complete copy of
        the current version in staging/: move it back."""
        target = self._installed_dir(entry.name, entry.version)
        for candidate in sorted(self.staging_dir.glob("*/bundle")) + sorted(self.staging_dir.glob("fetch-*")):
            try:
                bundle = load_bundle(candidate, verify=True)
            except BundleError:
                continue
            if bundle.manifest_sha256 != entry.manifest_sha256:
                continue
            if target.exists():
                self._retire(target)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(candidate, target)
            _fsync_dir(target.parent)
            return True
        return False

    def recover(self) -> List[str]:
        """Make the store consistent after whatever happened before this start (crash, power
        cut, disk corruption). Returns what it did, one line each, for the log."""
        actions: List[str] = []
        with self._lock:
            for tmp in self.root.glob(f".{POINTER}.*"):
                tmp.unlink(missing_ok=True)
                actions.append(f"removed the unfinished pointer file {tmp.name}")
            self._manifests.clear()
            try:
                pointer = self._read_pointer()
                lost_pointer = False
            except StoreError as e:
                actions.append(f"{e}; choosing the highest verified installed version")
                pointer, lost_pointer = None, True

            chosen: Optional[Activation] = None
            broken: List[Activation] = []
            for i, entry in enumerate(pointer.history if pointer is not None else []):
                why = self._check(entry)
                if why is not None and i == 0 and self._restore_from_staging(entry):
                    actions.append(f"{entry.ident}: restored the complete copy left in {STAGING}/")
                    why = self._check(entry)
                if why is None:
                    chosen = entry
                    break
                broken.append(entry)
                actions.append(f"{entry.ident} is unusable ({why}); removed it")

            if lost_pointer:
                for sv in sorted(self._all_installed(), key=lambda s: version_key(s.version), reverse=True):
                    candidate = Activation(
                        name=sv.name,
                        version=sv.version,
                        manifest_sha256=sv.manifest_sha256,
                        activated=utc_now_iso(),
                    )
                    if self._check(candidate) is None:
                        chosen = candidate
                        break

            for entry in broken:
                try:
                    directory = self._installed_dir(entry.name, entry.version)
                except StoreError:
                    continue
                if directory.exists():
                    self._retire(directory)

            for leftover in sorted(self.staging_dir.iterdir()):
                if leftover.is_dir() and not leftover.is_symlink():
                    shutil.rmtree(leftover, ignore_errors=True)
                else:
                    leftover.unlink(missing_ok=True)
                actions.append(f"removed the leftover {STAGING}/{leftover.name}")

            if pointer is not None and chosen is not None and not broken:
                actions += self._drop_unactivated(pointer)
                return actions  # the current version is intact: nothing to rewrite
            if chosen is None:
                if pointer is not None or lost_pointer:
                    self._write_pointer(None)
                    actions.append("no installed version verifies: the store has no current version")
                return actions
            gone = {(b.name, b.version) for b in broken}
            history = [chosen] + [
                h
                for h in (pointer.history if pointer is not None else [])
                if (h.name, h.version) not in gone and (h.name, h.version) != (chosen.name, chosen.version)
            ]
            new_pointer = Pointer.at(history)
            self._write_pointer(new_pointer)
            actions.append(f"current is now {chosen.ident}")
            if not lost_pointer:
                actions += self._drop_unactivated(new_pointer)
            return actions

    def _drop_unactivated(self, pointer: Pointer) -> List[str]:
        """At start: remove what an interrupted deploy installed and never activated (no command
        will ever activate it; its deploy ended as interrupted), then anything over
        ``keep_versions``. Without a readable pointer nothing counts as activated: then no-op."""
        activated = {(h.name, h.version) for h in pointer.history}
        actions = []
        for sv in self._all_installed():
            if (sv.name, sv.version) not in activated:
                self._retire(sv.dir)
                actions.append(f"removed {sv.ident}, installed by a deploy that never activated it")
        actions += [f"removed {sv.ident}: over keep_versions" for sv in self._retain(self.keep_versions)]
        return actions
