"""``cloud-trainer train DATA [--format F] --out RUN [--init RUN_OR_BUNDLE]``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..data import FORMATS, load_dataset
from ..model import BACKBONES
from ..train import InitModel, TrainConfig, train


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    d = TrainConfig()
    p = subparsers.add_parser("train", help="train a detector on a labelled dataset")
    p.add_argument("data", help="dataset folder or annotation file")
    p.add_argument("--format", choices=FORMATS, default=None, help="dataset format (default: detected)")
    p.add_argument("--out", required=True, help="run directory (weights, state, logs)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument(
        "--img-size",
        type=int,
        default=None,
        help=f"model input, a multiple of 32 (default {d.img_size}; with --init, the earlier model's)",
    )
    p.add_argument(
        "--backbone",
        choices=BACKBONES,
        default=None,
        help=f"default {d.backbone}; with --init, the earlier model's",
    )
    p.add_argument("--pretrained", choices=("imagenet",), default=None, help="ImageNet weights (mobilenetv2)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--patience", type=int, default=d.patience, help="early stop after N epochs without progress"
    )
    p.add_argument("--eval-every", type=int, default=d.eval_every, help="validate every N epochs")
    p.add_argument("--max-minutes", type=float, default=None, help="stop after this long, keeping the best")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last epoch")
    p.add_argument(
        "--init",
        metavar="RUN_OR_BUNDLE",
        default=None,
        help="start from an earlier model instead of from nothing: a run (its weights), or a bundle this "
        "trainer exported (the run's weights when the bundle sits in its run; elsewhere, its fp32 ONNX with "
        "batch norm folded, checked to compute what the bundle does). Same input size and backbone; the "
        "class heads keep the weights of the classes both have (matched by name) and start afresh for the "
        "others. Consider a lower --lr to fine-tune",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    d = TrainConfig()
    init = InitModel.open(Path(args.init)) if args.init else None
    if init is not None:
        img_size, backbone = init.settle(args.img_size, args.backbone)
    else:
        img_size = d.img_size if args.img_size is None else args.img_size
        backbone = d.backbone if args.backbone is None else args.backbone
    dataset = load_dataset(args.data, args.format)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch=args.batch,
        img_size=img_size,
        backbone=backbone,
        pretrained=args.pretrained,
        lr=args.lr,
        val_fraction=args.val_fraction,
        seed=args.seed,
        patience=args.patience,
        eval_every=args.eval_every,
        max_minutes=args.max_minutes,
    )
    summary = train(
        dataset,
        Path(args.out),
        cfg,
        resume=args.resume,
        data_path=args.data,
        data_format=args.format,
        init=init,
    )
    print(json.dumps(summary))
    return 0
