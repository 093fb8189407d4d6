"""``cloud-trainer package BUNDLE_DIR``: make an existing bundle's manifest match its files,
optionally with a new version or name, and sign it (SPEC §2)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from edge_agent.bundle import load_bundle

from ..package import repackage


def run(args: argparse.Namespace) -> int:
    repackage(args.bundle, sign_key=args.sign_key, version=args.version, name=args.name)
    bundle = load_bundle(args.bundle)
    out = {
        "bundle": str(bundle.dir),
        "name": bundle.manifest.name,
        "version": bundle.manifest.version,
        "manifest_sha256": bundle.manifest_sha256,
        "signed": bundle.signature is not None,
    }
    print(json.dumps(out))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "package",
        help="rewrite and sign the manifest of a bundle directory",
        description="Recompute the sha256 and size of every file the manifest of BUNDLE_DIR "
        "lists, optionally set a new version or name, sign it with --sign-key (manifest.sig), "
        "validate the bundle and print one JSON line. Other manifest fields are kept. "
        "Without --sign-key a signature that no longer matches the manifest is removed.",
    )
    p.add_argument("bundle", metavar="BUNDLE_DIR")
    p.add_argument("--sign-key", metavar="KEY", help="Ed25519 private key (PKCS#8 PEM), e.g. from keygen")
    p.add_argument("--version", metavar="V", help="new semantic version")
    p.add_argument("--name", metavar="N", help="new bundle name")
    p.set_defaults(func=run)
