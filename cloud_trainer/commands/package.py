"""``cloud-trainer package``: two jobs, one bundle format (SPEC §2, §7).

- ``package --model FILE [--weights FILE] [--labels FILE] [--decoder TYPE] [--name N --version V]
  --out DIR [--sign-key K]``: wrap a model the user already has in a new bundle, saying what it
  read from the files and inferred (``cloud_trainer.byom``);
- ``package BUNDLE_DIR [--name N] [--version V] [--sign-key K]``: make an existing bundle's
  manifest match its files, optionally with a new version or name, and sign it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_agent.bundle import load_bundle

from ..errors import TrainerError
from ..package import repackage


def run(args: argparse.Namespace) -> int:
    if args.model is not None:
        return _package_model(args)
    if args.bundle is None:
        raise TrainerError("package: give BUNDLE_DIR (repackage a bundle) or --model FILE --out DIR")
    for option in ("weights", "labels", "decoder", "out"):
        if getattr(args, option) is not None:
            raise TrainerError(f"package: --{option} goes with --model, not with BUNDLE_DIR")
    repackage(args.bundle, sign_key=args.sign_key, version=args.version, name=args.name)
    return _print_bundle(Path(args.bundle))


def _package_model(args: argparse.Namespace) -> int:
    from ..byom import ModelFiles, package_model

    if args.bundle is not None:
        raise TrainerError("package: --model makes a new bundle in --out; BUNDLE_DIR is for repackaging")
    if args.out is None:
        raise TrainerError("package: --model needs --out DIR (the new bundle directory)")
    files = ModelFiles(
        model=Path(args.model),
        weights=Path(args.weights) if args.weights else None,
        labels=Path(args.labels) if args.labels else None,
        decoder=args.decoder,
    )
    package_model(
        files,
        Path(args.out),
        name=args.name,
        version=args.version or "1.0.0",
        sign_key=Path(args.sign_key) if args.sign_key else None,
        echo=lambda line: print(line, file=sys.stderr, flush=True),
    )
    return _print_bundle(Path(args.out))


def _print_bundle(directory: Path) -> int:
    bundle = load_bundle(directory)
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
        help="wrap an existing model in a bundle (--model), or rewrite and sign a bundle's manifest",
        description="With --model: wrap a model file you already have (a TFLite SSD with "
        "TFLite_Detection_PostProcess, an Ultralytics YOLOv8/YOLO11 ONNX, OpenVINO or TFLite export, "
        "an OpenVINO IR with DetectionOutput, a TF frozen graph with its .pbtxt, darknet cfg/weights) "
        "in a new bundle in --out: labels, input size and decoder conventions are read from the files "
        "where they say them, inferred from the outputs where that is unambiguous, and printed; "
        "every artifact this machine can run is run once to check it. "
        "With BUNDLE_DIR: recompute the sha256 and size of every file its manifest lists, optionally "
        "set a new version or name, sign it with --sign-key (manifest.sig), validate the bundle. "
        "Other manifest fields are kept; without --sign-key a signature that no longer matches the "
        "manifest is removed. Both print one JSON line.",
    )
    p.add_argument("bundle", metavar="BUNDLE_DIR", nargs="?", help="a bundle to repackage")
    p.add_argument(
        "--model", metavar="FILE", help="the model file (or an Ultralytics *_openvino_model/ folder)"
    )
    p.add_argument("--weights", metavar="FILE", help="its weights, where they are a file of their own")
    p.add_argument("--labels", metavar="FILE", help="labels (.txt, .names, .yaml, label_map.pbtxt)")
    p.add_argument("--decoder", metavar="TYPE", help="decoder type, where the outputs leave it open")
    p.add_argument("--out", metavar="DIR", help="the new bundle directory (with --model)")
    p.add_argument("--sign-key", metavar="KEY", help="Ed25519 private key (PKCS#8 PEM), e.g. from keygen")
    p.add_argument("--version", metavar="V", help="semantic version (with --model: default 1.0.0)")
    p.add_argument("--name", metavar="N", help="bundle name (with --model: default from the file name)")
    p.set_defaults(func=run)
