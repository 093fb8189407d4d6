"""``cloud-trainer export RUN --formats tflite,edgetpu,openvino,onnx``: the bundle directory
``RUN/bundle`` with every export, checked by the device runtimes, and its manifest."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..pipeline import export_run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("export", help="export a trained run for every backend, as a bundle")
    p.add_argument("run", help="run directory made by `cloud-trainer train`")
    p.add_argument("--formats", default="tflite,edgetpu,openvino,onnx", help="comma-separated")
    p.add_argument("--out", default=None, help="bundle directory (default RUN/bundle)")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the run's folder name)")
    p.add_argument("--version", default="1.0.0", help="semantic version of the bundle")
    p.add_argument("--weights", choices=("best", "last"), default="best")
    p.add_argument("--no-evaluate", action="store_true", help="skip measuring mAP of every artifact")
    p.add_argument("--sign-key", default=None, help="Ed25519 private key (PEM) to sign the manifest")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_dir = Path(args.run)
    result = export_run(
        run_dir,
        formats=[f.strip() for f in args.formats.split(",") if f.strip()],
        out=Path(args.out) if args.out else None,
        name=args.name,
        version=args.version,
        weights=args.weights,
        evaluate=not args.no_evaluate,
        sign_key=Path(args.sign_key) if args.sign_key else None,
    )
    print(json.dumps(result))
    return 0
