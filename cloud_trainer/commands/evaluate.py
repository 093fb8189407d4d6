"""``cloud-trainer evaluate``: COCO mAP through edge_agent's own backends and decoders, two ways.

- ``evaluate RUN [--bundle B] [--data D [--format F]]``: a training run's float model and every
  artifact of its bundle, on the run's validation split (or on D); the metrics go into the
  bundle's manifest and ``RUN/metrics.json``.
- ``evaluate --bundle B [--bundle B2 …] DATA [--format F] [--split val]``: any bundles on any
  labelled dataset, side by side, per class (SPEC §7). Nothing is written.

The positional argument is a RUN when it is a directory holding ``run.json`` (what ``train``
writes), and a dataset otherwise; a dataset needs at least one ``--bundle``.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, Tuple

from ..data import FORMATS, load_dataset
from ..errors import TrainerError
from ..train import RUN_FILE, TrainConfig

USAGE = """cloud-trainer evaluate RUN [--bundle B] [--data D [--format F]] [--weights best|last] [--no-update]
       cloud-trainer evaluate --bundle B [--bundle B2 ...] DATA [--format F] [--split all|val]"""
EPILOG = (
    "With --bundle and a dataset: each bundle's labels are matched to the dataset's classes by name "
    "(exactly, else ignoring case where that is unambiguous); labels the dataset lacks are ignored, "
    "dataset classes a bundle lacks are reported not covered, and each mean is over the classes the "
    "bundle covers (plus, when bundles cover different classes, over the classes all of them cover). "
    "Every artifact runs through the device runtime; one this machine cannot run (an EdgeTPU model "
    "without an EdgeTPU) is reported skipped with the reason. A table goes to stderr, one JSON line "
    "to stdout."
)

_RUN_ONLY = ("data", "weights", "no_update")
_DATA_ONLY = ("split", "val_fraction", "seed")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = TrainConfig()
    p = subparsers.add_parser(
        "evaluate",
        help="mAP of a run and its bundle, or of any bundles side by side on any labelled dataset",
        usage=USAGE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__.split("\n", 1)[1].strip().replace("``", "`"),
        epilog=textwrap.fill(EPILOG, 92),
    )
    p.add_argument("target", metavar="RUN|DATA", help="a run directory (holds run.json), or a dataset")
    p.add_argument(
        "--bundle",
        action="append",
        default=[],
        metavar="B",
        help="bundle directory; repeat to compare bundles (with RUN: at most one, default RUN/bundle)",
    )
    p.add_argument("--format", choices=FORMATS, default=None, help="format of the dataset (default: detect)")
    p.add_argument(
        "--data", default=None, help="RUN: evaluate on this dataset instead of the run's val split"
    )
    p.add_argument(
        "--weights", choices=("best", "last"), default=None, help="RUN: which weights (default best)"
    )
    p.add_argument("--no-update", action="store_true", default=None, help="RUN: leave the manifest as it is")
    p.add_argument(
        "--split",
        choices=("all", "val"),
        default=None,
        help="DATA: every image (default), or the validation split the trainer holds out with "
        "--val-fraction and --seed: a fair comparison with a model trained on the same data",
    )
    p.add_argument(
        "--val-fraction",
        type=float,
        default=None,
        metavar="F",
        help=f"DATA, --split val (default {d.val_fraction})",
    )
    p.add_argument(
        "--seed", type=int, default=None, metavar="N", help=f"DATA, --split val (default {d.seed})"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    target = Path(args.target)
    if (target / RUN_FILE).is_file():
        return _run_form(args, target)
    if not args.bundle:
        raise TrainerError(
            f"{target}: not a training run (no {RUN_FILE}); to measure bundles on this dataset: "
            f"cloud-trainer evaluate --bundle B {target}"
        )
    return _data_form(args, target)


def _refuse(args: argparse.Namespace, options: Tuple[str, ...], form: str) -> None:
    given = [o for o in options if getattr(args, o) is not None]
    if given:
        flags = ", ".join("--" + o.replace("_", "-") for o in given)
        raise TrainerError(f"evaluate {form}: {flags} does not apply to this form (see evaluate --help)")


def _run_form(args: argparse.Namespace, run_dir: Path) -> int:
    from ..pipeline import evaluate_run

    _refuse(args, _DATA_ONLY, "RUN")
    if len(args.bundle) > 1:
        raise TrainerError(
            f"evaluate RUN takes one --bundle; to compare bundles give a dataset: "
            f"cloud-trainer evaluate --bundle B --bundle B2 DATA (with --split val for {run_dir}'s hold-out)"
        )
    if args.format is not None and args.data is None:
        raise TrainerError("evaluate RUN: --format goes with --data (the run knows its own dataset's format)")
    metrics = evaluate_run(
        run_dir,
        bundle=Path(args.bundle[0]) if args.bundle else None,
        data=args.data,
        fmt=args.format,
        weights=args.weights or "best",
        update_manifest=not args.no_update,
    )
    print(json.dumps(metrics))
    return 0


def _data_form(args: argparse.Namespace, data: Path) -> int:
    from ..evaluate import evaluate_bundles

    _refuse(args, _RUN_ONLY, "--bundle B DATA")
    d = TrainConfig()
    dataset = load_dataset(data, args.format)
    split = args.split or "all"
    if split == "val":
        fraction = d.val_fraction if args.val_fraction is None else args.val_fraction
        dataset = dataset.split(fraction, d.seed if args.seed is None else args.seed)[1]
        if not dataset.samples:
            raise TrainerError(f"{data}: --split val with --val-fraction {fraction} holds out no image")
    elif args.val_fraction is not None or args.seed is not None:
        raise TrainerError("evaluate: --val-fraction and --seed choose the images of --split val")
    doc: Dict[str, Any] = evaluate_bundles(
        [Path(b) for b in args.bundle], dataset, lambda line: print(line, file=sys.stderr, flush=True)
    )
    print(json.dumps({"split": split, **doc}))
    return 0
