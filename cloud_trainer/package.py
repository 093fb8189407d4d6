"""Writing a bundle directory: copy the artifacts, hash them, write manifest.json (SPEC §2)."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from edge_agent.bundle import MANIFEST, SIGNATURE, Manifest, load_bundle, parse_manifest, sha256_file, signing
from edge_agent.bundle.loader import manifest_document, read_manifest
from edge_agent.bundle.manifest import Defaults, check_plain_file_name
from edge_agent.errors import BundleError

from . import __version__

# Companion files an artifact may carry: manifest key -> suffix of the file.
PathLike = Union[str, Path]


def _file_entry(prefix: str, path: Path) -> Dict[str, Any]:
    key = "" if prefix == "file" else f"{prefix}_"
    return {prefix: path.name, f"{key}sha256": sha256_file(path), f"{key}bytes": path.stat().st_size}


def artifact_entry(
    runtime: str,
    precision: str,
    file: PathLike,
    weights: Optional[PathLike] = None,
    config: Optional[PathLike] = None,
) -> Dict[str, Any]:
    """A manifest artifact record for files that already sit in the bundle directory."""
    entry: Dict[str, Any] = {"runtime": runtime, "precision": precision}
    entry.update(_file_entry("file", Path(file)))
    if weights is not None:
        entry.update(_file_entry("weights", Path(weights)))
    if config is not None:
        entry.update(_file_entry("config", Path(config)))
    return entry


def write_bundle(
    out_dir: PathLike,
    *,
    name: str,
    version: str,
    labels: Sequence[str],
    input: Dict[str, Any],
    decoder: Dict[str, Any],
    artifacts: List[Dict[str, Any]],
    defaults: Optional[Dict[str, Any]] = None,
    metrics: Optional[Dict[str, Any]] = None,
    source: Optional[Dict[str, Any]] = None,
    sign_key: Optional[PathLike] = None,
) -> Manifest:
    """Write manifest.json (and manifest.sig with ``sign_key``) into ``out_dir``, which must
    already hold the artifact files; then load it back through the agent's own loader."""
    out = Path(out_dir)
    doc: Dict[str, Any] = {
        "schema": 1,
        "name": name,
        "version": version,
        "created": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "task": "detect",
        "labels": list(labels),
        "input": input,
        "decoder": decoder,
        "artifacts": artifacts,
        "defaults": defaults or Defaults().model_dump(),
        "metrics": metrics or {},
        "source": {"producer": f"cloud_trainer {__version__}", **(source or {})},
    }
    data = _manifest_bytes(doc)
    (out / MANIFEST).write_bytes(data)
    if sign_key is not None:
        (out / SIGNATURE).write_bytes(signing.sign(data, signing.load_private_key(sign_key)) + b"\n")
    return load_bundle(out).manifest


def _manifest_bytes(doc: Dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data`` so that a reader sees the old or the new file, never half."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def repackage(
    bundle_dir: PathLike,
    sign_key: Optional[PathLike] = None,
    version: Optional[str] = None,
    name: Optional[str] = None,
) -> Manifest:
    """Rewrite the manifest of an existing bundle directory so that it matches its files.

    The sha256 and size of every file each artifact lists (``file``, ``weights``, ``config``)
    are recomputed, so a hand-edited or re-exported bundle becomes consistent; ``version`` and
    ``name`` replace the manifest's (a new version also gets a new ``created``); every other
    field is kept as it is. With ``sign_key`` manifest.sig is (re)written; without it a
    signature that no longer matches the manifest is removed rather than left stale.
    The result is loaded back through the agent's own loader."""
    d = Path(bundle_dir).expanduser()
    mpath, old = read_manifest(d)
    doc = manifest_document(old, str(mpath))
    artifacts = doc.get("artifacts")
    if not isinstance(artifacts, list) or not artifacts:
        raise BundleError(f"{mpath}: artifacts: must be a non-empty list")
    for i, art in enumerate(artifacts):
        if not isinstance(art, dict):
            raise BundleError(f"{mpath}: artifacts.{i}: must be an object")
        for part in ("file", "weights", "config"):
            fname = art.get(part)
            if fname is None and part != "file":
                continue
            if not isinstance(fname, str):
                raise BundleError(f"{mpath}: artifacts.{i}.{part}: must be a file name")
            try:
                check_plain_file_name(fname)
            except ValueError as e:
                raise BundleError(f"{mpath}: artifacts.{i}.{part}: {e}") from e
            path = d / fname
            if not path.is_file():
                raise BundleError(f"{path}: missing (listed by artifacts.{i}.{part})")
            field = "" if part == "file" else f"{part}_"
            art[f"{field}sha256"] = sha256_file(path)
            art[f"{field}bytes"] = path.stat().st_size
    if name is not None:
        doc["name"] = name
    if version is not None and version != doc.get("version"):
        doc["version"] = version
        doc["created"] = _now()
    data = _manifest_bytes(doc)
    parse_manifest(data, str(mpath))  # validate before anything on disk changes
    private_key = signing.load_private_key(sign_key) if sign_key is not None else None
    if data != old:
        _write_atomic(mpath, data)
    sig_path = d / SIGNATURE
    if private_key is not None:
        _write_atomic(sig_path, signing.sign(data, private_key) + b"\n")
    elif data != old and sig_path.exists():
        sig_path.unlink()
    return load_bundle(d).manifest
