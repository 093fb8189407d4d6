"""``cloud-trainer import-darknet CFG WEIGHTS --names FILE --out RUN``: a darknet model as a run
that ``export`` and ``evaluate`` take like a trained one (see ``cloud_trainer.darknet.run``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..darknet.run import import_darknet
from ..data import FORMATS


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "import-darknet",
        help="convert a darknet YOLO (cfg + weights) into a run that export and evaluate take",
        description="Convert a darknet model (Tiny YOLOv2, YOLOv2, YOLOv3, YOLOv3-tiny and kin: "
        "convolutional, maxpool, route, reorg, upsample, shortcut, dropout, region and yolo layers) "
        "into a run directory; `cloud-trainer export RUN` then makes its bundle.",
    )
    p.add_argument("cfg", help="darknet .cfg")
    p.add_argument("weights", help="darknet .weights (any header version)")
    p.add_argument("--names", required=True, help="labels, one a line (.names), in class order")
    p.add_argument("--out", required=True, help="new run directory")
    p.add_argument(
        "--data",
        default=None,
        help="labelled dataset with these labels: int8 calibration and mAP for export and evaluate",
    )
    p.add_argument("--format", choices=FORMATS, default=None, help="format of --data (default: detected)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    summary = import_darknet(
        Path(args.cfg), Path(args.weights), Path(args.names), Path(args.out), data=args.data, fmt=args.format
    )
    print(json.dumps(summary))
    return 0
