"""``cloud-trainer publish BUNDLE s3://BUCKET/PREFIX``: upload a bundle (SPEC §2, §7)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..publish import DEFAULT_MULTIPART_THRESHOLD, MiB, publish


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of MiB")
    return value


def run(args: argparse.Namespace) -> int:
    result = publish(
        args.bundle,
        args.destination,
        endpoint_url=args.endpoint_url,
        region=args.region,
        profile=args.profile,
        channel=args.channel,
        force=args.force,
        progress=not args.quiet and sys.stderr.isatty(),
        multipart_threshold=args.multipart_threshold * MiB,
        multipart_chunksize=args.multipart_threshold * MiB,
    )
    print(json.dumps(result.summary()))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "publish",
        help="upload a bundle to S3",
        description="Verify BUNDLE locally, then upload it to s3://BUCKET/PREFIX/NAME/VERSION/: the "
        "artifact files side by side, then manifest.sig, and manifest.json last. Files already there "
        "with the same size and sha256 are skipped; an existing version with a different manifest is refused "
        "(versions are immutable) unless --force. With --channel C, also write "
        "s3://BUCKET/PREFIX/NAME/channels/C.json. Prints one JSON line "
        '{"manifest", "sha256", "version"[, "channel"]}. Credentials come from the usual AWS '
        "chain (environment, --profile, config files, instance role).",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory")
    p.add_argument("destination", metavar="s3://BUCKET/PREFIX")
    p.add_argument("--endpoint-url", metavar="URL", help="S3-compatible endpoint (MinIO, Ceph, …)")
    p.add_argument("--channel", metavar="C", help="also point channel C (e.g. stable) at this version")
    p.add_argument("--region", metavar="R", help="AWS region")
    p.add_argument("--profile", metavar="P", help="AWS profile from the shared config files")
    p.add_argument("--force", action="store_true", help="replace an existing version whose manifest differs")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--multipart-threshold",
        metavar="MIB",
        type=_positive,
        default=DEFAULT_MULTIPART_THRESHOLD // MiB,
        help="upload files of this many MiB or more in parts of this size "
        "(default %(default)s; parts are at least 5 MiB)",
    )
    p.set_defaults(func=run)
