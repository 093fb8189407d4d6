"""Ed25519 signatures over the exact bytes of manifest.json (SPEC §2).

Keys are PEM: PKCS#8 private keys, SubjectPublicKeyInfo public keys. The same primitives
sign command envelopes (SPEC §5).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import List, Sequence, Tuple, Union

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..errors import EdgewatchError


class SignatureError(EdgewatchError):
    pass


def generate_keypair() -> Tuple[bytes, bytes]:
    """(private PEM, public PEM)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, public


def _write_key_file(path: Path, data: bytes, mode: int, force: bool) -> None:
    """Write ``path`` with exactly ``mode``, whatever the umask; a replaced file is removed
    first, since an old one might be readable by others."""
    if force and (path.exists() or path.is_symlink()):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), mode)
        f.write(data)


def write_keypair(name: Union[str, Path], force: bool = False) -> Tuple[Path, Path]:
    """Write a new pair as ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub``
    (SubjectPublicKeyInfo PEM); refuse to replace either unless ``force``. Nothing is left
    half-written. Returns (private path, public path)."""
    base = Path(name).expanduser()
    private, public = Path(f"{base}.key"), Path(f"{base}.pub")
    if not base.name or base.name in (".", ".."):
        raise SignatureError(f"{str(name)!r} is not a usable key name")
    if not base.parent.is_dir():
        raise SignatureError(f"{base.parent}: no such directory")
    if not force:
        existing = [str(p) for p in (private, public) if p.exists() or p.is_symlink()]
        if existing:
            taken = ", ".join(f"{p} already exists" for p in existing)
            raise SignatureError(f"{taken}; --force replaces the key pair")
    private_pem, public_pem = generate_keypair()
    try:
        _write_key_file(private, private_pem, 0o600, force)
        try:
            _write_key_file(public, public_pem, 0o644, force)
        except OSError:
            private.unlink(missing_ok=True)
            raise
    except OSError as e:
        raise SignatureError(f"cannot write the key pair: {e.filename}: {e.strerror}") from e
    return private, public


def load_private_key(path: Union[str, Path]) -> Ed25519PrivateKey:
    p = Path(path)
    try:
        key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise SignatureError(f"{p}: not a readable unencrypted PEM private key: {e}") from e
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{p}: not an Ed25519 key")
    return key


def load_public_key(path: Union[str, Path]) -> Ed25519PublicKey:
    p = Path(path)
    try:
        key = serialization.load_pem_public_key(p.read_bytes())
    except (OSError, ValueError) as e:
        raise SignatureError(f"{p}: not a readable PEM public key: {e}") from e
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{p}: not an Ed25519 public key")
    return key


def load_public_keys(paths: Sequence[Union[str, Path]], setting: str) -> List[Ed25519PublicKey]:
    """The keys a configuration list names; an unusable one is an error naming the setting and
    its index (``store.trusted_keys[1]: /etc/...: not an Ed25519 public key``)."""
    keys = []
    for i, path in enumerate(paths):
        try:
            keys.append(load_public_key(path))
        except SignatureError as e:
            raise SignatureError(f"{setting}[{i}]: {e}") from e
    return keys


def sign(data: bytes, key: Ed25519PrivateKey) -> bytes:
    """base64 of the Ed25519 signature, as stored in manifest.sig."""
    return base64.b64encode(key.sign(data))


def verify(data: bytes, signature_b64: bytes, keys: Sequence[Ed25519PublicKey]) -> bool:
    """True when the signature verifies against any of ``keys``."""
    try:
        raw = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        return False
    for key in keys:
        try:
            key.verify(raw, data)
            return True
        except InvalidSignature:
            continue
    return False
