"""Variants of a real bundle for deploy tests: another version, some files replaced (garbage that
is correctly hashed), signed by a chosen key."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, Mapping, Optional

from edge_agent.bundle import signing


def variant(
    src: Path,
    dst: Path,
    *,
    version: str,
    replace: Mapping[str, bytes] = {},
    sign_key: Optional[Path] = None,
) -> Path:
    """A copy of the bundle ``src`` in ``dst`` as ``version``, with the files in ``replace``
    swapped for the given bytes and the manifest's hashes and sizes made to match them."""
    dst.mkdir(parents=True, exist_ok=True)
    doc = json.loads((src / "manifest.json").read_text())
    doc["version"] = version
    contents: Dict[str, bytes] = {}
    for artifact in doc["artifacts"]:
        for name_key, sha_key, bytes_key in (
            ("file", "sha256", "bytes"),
            ("weights", "weights_sha256", "weights_bytes"),
        ):
            name = artifact.get(name_key)
            if name is None:
                continue
            data = replace[name] if name in replace else (src / name).read_bytes()
            contents[name] = data
            artifact[sha_key] = hashlib.sha256(data).hexdigest()
            artifact[bytes_key] = len(data)
    for name, data in contents.items():
        (dst / name).write_bytes(data)
    manifest = (json.dumps(doc, indent=2) + "\n").encode()
    (dst / "manifest.json").write_bytes(manifest)
    (dst / "manifest.sig").unlink(missing_ok=True)
    if sign_key is not None:
        (dst / "manifest.sig").write_bytes(signing.sign(manifest, signing.load_private_key(sign_key)))
    return dst
