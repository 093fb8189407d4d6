"""The model bundle: manifest, files, signature (SPEC §2)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .manifest import Artifact, DecoderSpec, Defaults, InputSpec, Manifest

if TYPE_CHECKING:
    from .loader import MANIFEST, SIGNATURE, Bundle, load_bundle, parse_manifest, sha256_file

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


def __getattr__(name: str) -> Any:
    """The loader's names, imported on first use (PEP 562): the loader checks a manifest's
    decoder params against the decoders, which import numpy, and what needs only the manifest
    model or the signatures (edge-ctl: ``edge_agent.bundle.signing``) must not carry them."""
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from . import loader

    value = globals()[name] = getattr(loader, name)
    return value
