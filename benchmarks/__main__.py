"""``python -m benchmarks [--quick] [--rounds N] [--seconds S] [--out FILE] [--json FILE]``."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List

from edge_agent.bundle import MANIFEST, SIGNATURE
from edge_agent.bundle.signing import load_private_key, sign
from tests.agent_world import V1, World, make_world

from . import loops, machine, models, report, simulated
from .service import ServiceBench, bench_env

REPO = Path(__file__).resolve().parent.parent
BACKENDS = ("tflite", "openvino")
SIMULATED_MS = (40.0, 20.0, 10.0, 5.0)
MAX_CAMERA_FPS = 30.0  # a real camera's rate


def say(text: str) -> None:
    print(f"bench: {text}", file=sys.stderr, flush=True)


def build_models(root: Path, world: World) -> Dict[str, Path]:
    """The demo bundle and Tiny YOLOv2 (built in a subprocess, see benchmarks.models), both
    signed by the world's operator key as a release would be."""
    say("building Tiny YOLOv2 (import-darknet, export)")
    out = root / models.TINY_YOLOV2
    loops.run_python(["-m", "benchmarks.models", str(out)], "building Tiny YOLOv2", 900, cwd=REPO)
    bundle = out / "bundle"
    key = load_private_key(world.root / "op.key")
    (bundle / SIGNATURE).write_bytes(sign((bundle / MANIFEST).read_bytes(), key))
    return {"demo": world.bundles[V1], models.TINY_YOLOV2: bundle}


def measure(root: Path, rounds: int, seconds: float, quick: bool, trainer: bool = True) -> Dict[str, Any]:
    # long enough that no run reaches its end (the demo model runs at several hundred fps)
    video = machine.make_video(root / "clip.avi", frames=int((seconds + 2) * 500))
    sources = {"synthetic": "synthetic:7", "video": f"file:{video}"}
    site = simulated.install_plugin(root / "plugins")
    figures: Dict[str, Any] = {"rounds": rounds, "seconds": seconds, "cases": {}, "latency": {}}
    figures["simulated"] = {}
    cases = figures["cases"]
    with make_world(root / "world") as world:
        bundles = build_models(root, world)
        bench = ServiceBench(world, bench_env(REPO, site))
        detectors = {(m, b): loops.open_bench_detector(p, b) for m, p in bundles.items() for b in BACKENDS}
        try:
            for r in range(rounds):
                for (model, backend), detector in detectors.items():
                    bundle = str(bundles[model])
                    for kind, source in sources.items():
                        case = cases.setdefault(
                            f"{model} {backend}/{kind}", {"raw": [], "naive": [], "service": []}
                        )
                        say(f"round {r + 1}/{rounds}: {model} on {backend}, {kind}")
                        case["raw"].append(loops.raw_fps(detector, seconds))
                        port = world.broker.port
                        case["naive"].append(loops.naive_fps(detector, source, port, seconds))
                        run = bench.run(backend=backend, bundle=bundle, source=source, seconds=seconds)
                        case["service"].append(run.__dict__)
                    # latency with a camera slower than the model: what queueing does not hide
                    camera_fps = min(MAX_CAMERA_FPS, case["raw"][-1] / 2)
                    say(f"round {r + 1}/{rounds}: {model} on {backend}, latency at {camera_fps:.0f} fps")
                    run = bench.run(
                        backend=backend,
                        bundle=bundle,
                        source=sources["synthetic"],
                        seconds=seconds,
                        camera_fps=camera_fps,
                    )
                    figures["latency"].setdefault(f"{model} {backend}", []).append(
                        {**run.__dict__, "camera_fps": camera_fps, "raw_fps": case["raw"][-1]}
                    )
                for latency_ms in SIMULATED_MS:
                    say(f"round {r + 1}/{rounds}: simulated accelerator, {latency_ms:g} ms")
                    run = bench.run(
                        backend=simulated.NAME,
                        bundle=str(bundles["demo"]),
                        source=sources["synthetic"],
                        seconds=seconds,
                        options={"latency_ms": latency_ms},
                    )
                    figures["simulated"].setdefault(f"{latency_ms:g}", []).append(run.__dict__)
            say("memory: bare interpreter scripts")
            figures["bare_rss_mb"] = {
                f"{m} {b}": loops.bare_peak_rss_mb(b, bundles[m]) for m in bundles for b in BACKENDS
            }
            figures["imports_rss_mb"] = {
                f"{m} {b}": loops.bare_peak_rss_mb(b, bundles[m], agent_imports=True)
                for m in bundles
                for b in BACKENDS
            }
            figures["deploy"] = {}
            for label, camera_fps in (("saturated", 1000.0), ("camera", MAX_CAMERA_FPS)):
                say(f"deploy during a run ({label})")
                figures["deploy"][label] = _deploy(bench, sources["synthetic"], seconds, camera_fps)
        finally:
            for d in detectors.values():
                d.close()
            bench.close()
    if trainer:
        say("trainer")
        figures["trainer"] = _trainer(root / "trainer", quick)
    return figures


def _deploy(bench: ServiceBench, source: str, seconds: float, camera_fps: float) -> Dict[str, Any]:
    from tests.s3server import FAKE_ENV, moto_endpoint

    os.environ.update(FAKE_ENV)  # the agent, edge-ctl and cloud-trainer publish inherit them
    with moto_endpoint() as endpoint:
        published = bench.publish_v2(endpoint)
        run = bench.run(
            backend="tflite",
            bundle=str(bench.world.bundles[V1]),
            source=source,
            camera_fps=camera_fps,
            seconds=max(6.0, seconds * 2),
            deploy_uri=published,
            s3_endpoint=endpoint,
        )
    return {**run.deploy, "lost": run.lost, "frames": run.frames, "camera_fps": camera_fps}


def _trainer(workdir: Path, quick: bool) -> Dict[str, Any]:
    try:
        from .trainer import measure_trainer
    except ImportError as e:  # the trainer's extra (TensorFlow) is not installed
        return {"skipped": str(e)}
    workdir.mkdir(parents=True, exist_ok=True)
    # the trainer's default input (320) and backbone
    images, epochs = (64, 2) if quick else (160, 3)
    return measure_trainer(workdir, images=images, epochs=epochs, size=320)


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short round (a smoke run, not figures)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seconds", type=float, default=None, help="each measurement's length")
    parser.add_argument("--no-trainer", action="store_true", help="leave the trainer out")
    parser.add_argument("--out", type=Path, default=None, help="write the report (markdown) here")
    parser.add_argument("--json", type=Path, default=None, help="write every sample here")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 3)
    seconds = args.seconds or (2.0 if args.quick else 4.0)
    described = machine.describe()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="edgewatch-bench-") as root:
        figures = measure(Path(root), rounds, seconds, args.quick, trainer=not args.no_trainer)
    figures["machine"] = described
    figures["wall_s"] = round(time.monotonic() - started, 1)
    command = "make bench" if not args.quick else "python -m benchmarks --quick"
    text = report.document(figures, command)
    print(report.tables(figures))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
