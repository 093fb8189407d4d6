"""Writing a bundle directory: copy the artifacts, hash them, write manifest.json (SPEC §2)."""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from edge_agent.bundle import MANIFEST, SIGNATURE, Manifest, load_bundle, sha256_file, signing

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
        "defaults": defaults or {"score_threshold": 0.4, "iou_threshold": 0.5, "max_detections": 100},
        "metrics": metrics or {},
        "source": {"producer": f"cloud_trainer {__version__}", **(source or {})},
    }
    data = (json.dumps(doc, indent=2) + "\n").encode("utf-8")
    (out / MANIFEST).write_bytes(data)
    if sign_key is not None:
        (out / SIGNATURE).write_bytes(signing.sign(data, signing.load_private_key(sign_key)) + b"\n")
    return load_bundle(out).manifest


def copy_into(out_dir: PathLike, *files: PathLike) -> List[Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copied = []
    for f in files:
        dest = out / Path(f).name
        if Path(f).resolve() != dest.resolve():
            shutil.copyfile(f, dest)
        copied.append(dest)
    return copied
