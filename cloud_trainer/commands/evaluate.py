"""``cloud-trainer evaluate RUN|BUNDLE``: COCO mAP on the run's validation split, for the float
model and every artifact, through edge_agent's own backends and decoders."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..pipeline import evaluate_run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("evaluate", help="mAP of the float model and of every exported artifact")
    p.add_argument("run", help="run directory made by `cloud-trainer train`")
    p.add_argument("--bundle", default=None, help="bundle to evaluate (default RUN/bundle, when it exists)")
    p.add_argument("--data", default=None, help="evaluate on this dataset instead of the run's val split")
    p.add_argument("--format", default=None, help="format of --data")
    p.add_argument("--weights", choices=("best", "last"), default="best")
    p.add_argument("--no-update", action="store_true", help="do not write the metrics into the manifest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    metrics = evaluate_run(
        Path(args.run),
        bundle=Path(args.bundle) if args.bundle else None,
        data=args.data,
        fmt=args.format,
        weights=args.weights,
        update_manifest=not args.no_update,
    )
    print(json.dumps(metrics))
    return 0
