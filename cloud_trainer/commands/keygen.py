"""``cloud-trainer keygen NAME``: an Ed25519 key pair for signing bundles (SPEC §2).

Writes ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub`` (SubjectPublicKeyInfo PEM).
"""

from __future__ import annotations

import argparse
from typing import Any

from edge_agent.bundle.signing import write_keypair


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
        "`package --sign-key NAME.key`; devices list NAME.pub in store.trusted_keys "
        "(a release key signs models and never commands devices: operators use edge-ctl keygen).",
    )
    p.add_argument("name", metavar="NAME", help="path and base name of the two files")
    p.add_argument("--force", action="store_true", help="replace existing files")
    p.set_defaults(func=run)
