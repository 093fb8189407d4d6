"""``edge-agent``: the device command line (SPEC §7)."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import List, Optional, Sequence

import cv2

from . import __version__
from .backends import registry
from .backends.auto import plan
from .bundle import load_bundle
from .cli_support import run as run_cli
from .detector import Thresholds
from .loading import open_detector
from .messages import DetectionMessage

log = logging.getLogger("edge_agent")


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="bundle directory (holds manifest.json)")
    p.add_argument("--backend", default="auto", help="auto | " + " | ".join(registry.available_names()))
    p.add_argument("--device", default=None, help='e.g. "usb:0", "pci", "MYRIAD", "CPU", "GPU", "AUTO"')
    p.add_argument("--threads", type=int, default=None, help="CPU threads for the runtime")


def cmd_detect(args: argparse.Namespace) -> int:
    thresholds = Thresholds(score_threshold=args.score_threshold, iou_threshold=args.iou_threshold)
    detector, _ = open_detector(args.bundle, args.backend, args.device, args.threads, thresholds)
    status = 0
    try:
        for name in args.images:
            image = cv2.imread(name, cv2.IMREAD_COLOR)
            if image is None:
                why = "no such file" if not Path(name).exists() else "not an image OpenCV can read"
                print(f"edge-agent: {name}: {why}", file=sys.stderr)
                status = 1
                continue
            result = detector.detect(image)
            msg = DetectionMessage(
                file=name,
                model=detector.model,
                backend=detector.backend.name,
                image=result.image,
                latency_ms=result.latency,
                detections=result.detections,
            )
            print(json.dumps(msg.to_json_dict()), flush=True)
    finally:
        detector.close()
    return status


def cmd_devices(args: argparse.Namespace) -> int:
    probes = [registry.backend_class(n).probe().as_dict() for n in registry.available_names()]
    out: dict = {"agent_version": __version__, "backends": probes}
    if args.bundle:
        runtimes: List[str] = [a.runtime for a in load_bundle(args.bundle, verify=False).manifest.artifacts]
    else:
        runtimes = registry.artifact_runtimes()
        out["assumed_artifacts"] = runtimes
    steps = plan(runtimes)
    pick = next(((n, d) for n, d, skip in steps if not skip), None)
    out["auto"] = {
        "backend": pick[0] if pick else None,
        "device": pick[1] if pick else None,
        "skipped": [f"{n}{' on ' + d if d else ''}: {skip}" for n, d, skip in steps if skip],
    }
    print(json.dumps(out, indent=2))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from . import bench
    from .sources.synthetic import SceneGenerator

    detector, reasons = open_detector(args.bundle, args.backend, args.device, args.threads)
    try:
        gen = SceneGenerator(width=args.width, height=args.height, seed=0)
        image, _ = gen.render(0)
        if args.pipeline:
            report = bench.pipeline(detector, args.width, args.height, args.seconds)
        else:
            report = bench.run(detector, image, args.seconds)
        if reasons:
            report["auto_skipped"] = reasons
        print(json.dumps(report, indent=2 if args.pretty else None))
    finally:
        detector.close()
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    from .config import dump, load_config
    from .loading import check_options

    config = load_config(args.config, args.set)
    check_options(config.detector)
    print(dump(config), end="")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from .config import DEFAULT_PATH, load_config
    from .service.agent import Agent
    from .systemd import setup_logging

    setup_logging(args.verbose)
    path = args.config if args.config is not None else (DEFAULT_PATH if DEFAULT_PATH.exists() else None)
    config = load_config(path, args.set)
    return Agent(config).run()


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import run_demo
    from .systemd import setup_logging

    setup_logging(args.verbose)
    if not args.verbose:
        # the demo prints what a dashboard sees; the agent's own log only with -v
        logging.getLogger("edge_agent").setLevel(logging.WARNING)
    return run_demo(
        broker=args.broker,
        seconds=args.seconds,
        swap_after=args.swap_after,
        http=args.http,
        workdir=args.workdir,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description="edgewatch edge detection agent")
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v info, -vv debug (to stderr)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="the service: camera -> detector -> MQTT, with remote commands")
    p.add_argument(
        "-c", "--config", default=None, help="YAML file (default /etc/edge-agent/config.yaml if present)"
    )
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a key")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo", help="the whole loop on this machine: broker, synthetic camera, live model swap"
    )
    p.add_argument("--broker", default=None, help="mqtt://HOST[:PORT] to use instead of the embedded broker")
    p.add_argument("--seconds", type=float, default=30.0, help="how long to run (0: until Ctrl-C)")
    p.add_argument("--swap-after", type=float, default=8.0, help="seconds before deploying version 1.1.0")
    p.add_argument("--http", default="127.0.0.1:8080", help='live view address ("" disables)')
    p.add_argument(
        "--workdir", default=None, help="keep the demo's store and keys here (default: a temp dir)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("detect", help="detect objects in image files, one JSON line per image")
    _add_model_args(p)
    p.add_argument("--score-threshold", type=float, default=None)
    p.add_argument("--iou-threshold", type=float, default=None)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("devices", help="runtimes and accelerators found, and what auto would pick")
    p.add_argument("--bundle", default=None, help="decide auto's pick for this bundle's artifacts")
    p.set_defaults(func=cmd_devices)

    p = sub.add_parser("bench", help="a backend's raw throughput and latency, as JSON")
    _add_model_args(p)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--width", type=int, default=640, help="synthetic frame width")
    p.add_argument("--height", type=int, default=480, help="synthetic frame height")
    p.add_argument("--pretty", action="store_true")
    p.add_argument(
        "--pipeline",
        action="store_true",
        help="camera-to-message fps: step by step vs the service's pipeline",
    )
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("check-config", help="validate a configuration and print the effective one")
    p.add_argument("-c", "--config", default=None, help="YAML file (default: built-in defaults only)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="override a key")
    p.set_defaults(func=cmd_check_config)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli("edge-agent", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
