"""The model bundle: manifest, files, signature (SPEC §2)."""

from .loader import MANIFEST, SIGNATURE, Bundle, load_bundle, parse_manifest, sha256_file
from .manifest import Artifact, DecoderSpec, Defaults, InputSpec, Manifest

__all__ = [
    "MANIFEST",
    "SIGNATURE",
    "Artifact",
    "Bundle",
    "DecoderSpec",
    "Defaults",
    "InputSpec",
    "Manifest",
    "load_bundle",
    "parse_manifest",
    "sha256_file",
]
