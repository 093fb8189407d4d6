"""``cloud-trainer zoo list | pull NAME --out DIR``: well-known public detection models, fetched,
verified and packaged as bundles (SPEC §7; ``cloud_trainer.zoo``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..zoo import DEFAULT_TIMEOUT_S, MIRROR_ENV, catalog_document, find, load_catalog, pull, table


def run_list(args: argparse.Namespace) -> int:
    models = list(load_catalog([Path(p) for p in args.catalog]).values())
    if args.json:
        print(json.dumps(catalog_document(models), indent=2))
        return 0
    print(table(models))
    return 0


def run_pull(args: argparse.Namespace) -> int:
    entry = find(load_catalog([Path(p) for p in args.catalog]), args.name)
    summary = pull(
        entry,
        Path(args.out),
        mirror=args.mirror,
        name=args.bundle_name,
        version=args.version,
        sign_key=Path(args.sign_key) if args.sign_key else None,
        eval_data=args.eval,
        eval_format=args.format,
        timeout=args.timeout,
        progress=not args.quiet and sys.stderr.isatty(),
    )
    print(json.dumps(summary))
    return 0


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def register(subparsers: Any) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--catalog",
        metavar="FILE",
        action="append",
        default=[],
        help='also read entries from this JSON file ({"models": [...]}, the form of `zoo list --json`); '
        "an entry of the same name replaces the built-in one (repeatable)",
    )
    p = subparsers.add_parser(
        "zoo",
        help="list and pull well-known public detection models as bundles",
        description="A short catalogue of well-known public detection models (Coral's SSD MobileNet v2 "
        "and SSDLite MobileDet CPU/EdgeTPU pairs, Intel Open Model Zoo person and person/vehicle/bike "
        "detectors), each pinned to an immutable URL with its licence, labels and checksums. "
        "`zoo list` shows them; `zoo pull NAME --out DIR` downloads one, verifies it, packages it as "
        "a bundle (as `package --model` would) and evaluates it when given a dataset.",
    )
    sub = p.add_subparsers(dest="zoo_command", required=True)

    lp = sub.add_parser(
        "list",
        parents=[common],
        help="the catalogue: name, what it detects, runtimes, size, licence, source",
        description="Print the catalogue as a table, or with --json every field of every entry "
        "(file URLs, sizes, digests, licence URL, where the labels and checksums come from).",
    )
    lp.add_argument("--json", action="store_true", help="the whole catalogue as JSON")
    lp.set_defaults(func=run_list)

    pp = sub.add_parser(
        "pull",
        parents=[common],
        help="download, verify, package (and evaluate) one model",
        description="Download every file of NAME (a progress bar on a terminal) into a temporary "
        "directory and check it against each size and digest the catalogue states (sha256, the "
        "Open Model Zoo's sha384, git blob ids): a mismatch, an HTTP error or a broken download is "
        "a one-line error naming the URL, and nothing is left in --out. Where the catalogue has no "
        "sha256 for a file, pull says so, computes it and records it in its output and in the "
        "bundle's manifest (source.zoo). The files are then packaged into the new bundle directory "
        "--out (with an EdgeTPU twin, both artifacts), and every artifact this machine can run is "
        "run once. With --eval DATA the bundle is evaluated on that labelled dataset; without, "
        "pull says how to evaluate it later. Prints one JSON line: the bundle, its files with their "
        f"sha256, the licence and the evaluation. Mirrors: --mirror URL (or {MIRROR_ENV}) fetches "
        "every file from URL + the original path.",
    )
    pp.add_argument("name", metavar="NAME", help="an entry of `zoo list`")
    pp.add_argument("--out", metavar="DIR", required=True, help="the new bundle directory (absent or empty)")
    pp.add_argument(
        "--mirror",
        "--base-url",
        metavar="URL",
        default=None,
        help=f"fetch from URL + each file's path instead of its host (default: ${MIRROR_ENV} when set); "
        "http(s)://HOST[/PREFIX] or file:///DIR",
    )
    pp.add_argument("--eval", metavar="DATA", help="evaluate the bundle on this labelled dataset")
    pp.add_argument("--format", metavar="F", help="format of --eval DATA (detected when not given)")
    pp.add_argument("--name", dest="bundle_name", metavar="N", help="bundle name (default: the zoo name)")
    pp.add_argument("--version", metavar="V", help="bundle version (default: the entry's, 1.0.0)")
    pp.add_argument("--sign-key", metavar="KEY", help="Ed25519 private key (PKCS#8 PEM) to sign the bundle")
    pp.add_argument(
        "--timeout",
        metavar="S",
        type=_seconds,
        default=DEFAULT_TIMEOUT_S,
        help="give up on a connection, or a download that stalls, after S seconds (default %(default)g)",
    )
    pp.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    pp.set_defaults(func=run_pull)
