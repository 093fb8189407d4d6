"""Loading a bundle directory: parse the manifest, check every file it lists.

Every error names the bundle file and, for manifest problems, the field path, e.g.
``/models/shapes/manifest.json: artifacts.1.file: 'x/../y' is not a plain file name``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from pydantic import ValidationError

from ..decoders import parse_params
from ..errors import BundleError, DecoderError
from .manifest import Artifact, Manifest

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _describe(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        msg = e["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def manifest_document(data: bytes, where: str) -> Dict[str, Any]:
    """Manifest bytes as a JSON object, before any schema check."""
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BundleError(f"{where}: not valid UTF-8 JSON: {e}") from e
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: the manifest must be a JSON object")
    return raw


def parse_manifest(data: bytes, where: str) -> Manifest:
    """Parse manifest bytes; ``where`` names the file in errors."""
    raw = manifest_document(data, where)
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as e:
        raise BundleError(f"{where}: {_describe(e)}") from e
    # The decoder type and its params are part of the manifest's contract: check them now,
    # not at the first frame.
    try:
        parse_params(manifest.decoder.type, manifest.decoder.params)
    except DecoderError as e:
        raise BundleError(f"{where}: decoder: {e}") from e
    return manifest


@dataclass(frozen=True)
class Bundle:
    """A bundle on local disk whose files have been checked against its manifest."""

    dir: Path
    manifest: Manifest
    manifest_bytes: bytes
    signature: Optional[bytes]

    def path(self, name: str) -> Path:
        return self.dir / name

    def artifact(self, runtime: str) -> Artifact:
        art = self.manifest.artifact_for(runtime)
        if art is None:
            have = ", ".join(a.runtime for a in self.manifest.artifacts)
            raise BundleError(f"{self.dir / MANIFEST}: no {runtime!r} artifact (the bundle has: {have})")
        return art

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()


def verify_files(directory: Path, artifacts: Iterable[Artifact]) -> None:
    """Check size then sha256 of each listed file; size first because it is free."""
    for art in artifacts:
        for name, sha, size in art.files():
            path = directory / name
            if not path.is_file():
                raise BundleError(f"{path}: missing (listed by the {art.runtime} artifact)")
            actual_size = path.stat().st_size
            if actual_size != size:
                raise BundleError(
                    f"{path}: size {actual_size} bytes does not match the manifest's {size} "
                    f"({art.runtime} artifact)"
                )
            actual_sha = sha256_file(path)
            if actual_sha != sha:
                raise BundleError(
                    f"{path}: sha256 {actual_sha} does not match the manifest's {sha} "
                    f"({art.runtime} artifact)"
                )


def read_manifest(directory: Path) -> Tuple[Path, bytes]:
    """(path, exact bytes) of a bundle directory's manifest.json."""
    if not directory.is_dir():
        raise BundleError(f"{directory}: not a bundle directory")
    mpath = directory / MANIFEST
    try:
        return mpath, mpath.read_bytes()
    except FileNotFoundError as e:
        raise BundleError(f"{mpath}: missing; a bundle directory holds manifest.json") from e
    except OSError as e:
        raise BundleError(f"{mpath}: cannot read: {e.strerror}") from e


def load_bundle(
    directory: Union[str, Path],
    runtimes: Optional[List[str]] = None,
    verify: bool = True,
) -> Bundle:
    """Load the bundle in ``directory``. ``runtimes`` limits file verification to those
    artifacts (a device need not hash the files of runtimes it will never load)."""
    d = Path(directory).expanduser()
    mpath, data = read_manifest(d)
    manifest = parse_manifest(data, str(mpath))
    sig_path = d / SIGNATURE
    signature = sig_path.read_bytes() if sig_path.is_file() else None
    if verify:
        wanted = [a for a in manifest.artifacts if runtimes is None or a.runtime in runtimes]
        verify_files(d, wanted)
    return Bundle(dir=d, manifest=manifest, manifest_bytes=data, signature=signature)
