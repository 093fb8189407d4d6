"""``cloud-trainer keygen NAME``: an Ed25519 key pair for signing bundles (SPEC §2).

Writes ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` (SubjectPublicKeyInfo PEM).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Tuple

from edge_agent.bundle import signing

from ..cli import TrainerError


def _write(path: Path, data: bytes, mode: int, force: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if force else os.O_EXCL)
    if force and path.exists():
        path.unlink()  # a new file gets ``mode``; an old one might be readable by others
    fd = os.open(path, flags, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(path, mode)  # whatever the umask


def write_keypair(name: str, force: bool = False) -> Tuple[Path, Path]:
    """Write ``NAME.key`` and ``NAME.pub``; refuse to replace either unless ``force``.
    Returns (private path, public path)."""
    base = Path(name).expanduser()
    private, public = Path(f"{base}.key"), Path(f"{base}.pub")
    if not base.name or base.name in (".", ".."):
        raise TrainerError(f"{name!r} is not a usable key name")
    if not base.parent.is_dir():
        raise TrainerError(f"{base.parent}: no such directory")
    if not force:
        existing = [str(p) for p in (private, public) if p.exists() or p.is_symlink()]
        if existing:
            verb = "exists" if len(existing) == 1 else "exist"
            raise TrainerError(f"{' and '.join(existing)} already {verb}; --force replaces the key pair")
    private_pem, public_pem = signing.generate_keypair()
    try:
        _write(private, private_pem, 0o600, force)
        _write(public, public_pem, 0o644, force)
    except OSError as e:
        raise TrainerError(f"cannot write the key pair: {e.filename}: {e.strerror}") from None
    return private, public


def run(args: argparse.Namespace) -> int:
    private, public = write_keypair(args.name, force=args.force)
    print(private)
    print(public)
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "keygen",
        help="write an Ed25519 key pair for signing bundles",
        description="Write NAME.key (PKCS#8 PEM private key, mode 0600) and NAME.pub "
        "(SubjectPublicKeyInfo PEM public key) and print the two paths. Sign bundles with "
        "`package --sign-key NAME.key`; devices trust NAME.pub.",
    )
    p.add_argument("name", metavar="NAME", help="path and base name of the two files")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=run)
