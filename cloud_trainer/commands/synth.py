"""``cloud-trainer synth``: a synthetic dataset from the agent's scene generator."""

from __future__ import annotations

import argparse
from typing import Any, Dict

from ..data import WRITE_FORMATS, synthesize


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic dataset (shapes on textured backgrounds)",
        description="Render scenes of circles, squares and triangles on cluttered backgrounds with "
        "exact boxes, into a new folder, as a labelled dataset. The same seed gives the same dataset.",
    )
    p.add_argument("--out", required=True, help="new (or empty) folder to write")
    p.add_argument("--images", type=int, default=1000, help="number of images (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--format", choices=WRITE_FORMATS, default="voc", help="annotation format (default voc)")
    p.add_argument("--width", type=int, default=640, help="image width (default 640)")
    p.add_argument("--height", type=int, default=480, help="image height (default 480)")
    p.add_argument("--image-format", choices=("jpg", "png"), default="jpg", help="default jpg (quality 95)")
    p.add_argument("--min-objects", type=int, default=None, help="shapes per image, at least (default 1)")
    p.add_argument("--max-objects", type=int, default=None, help="shapes per image, at most (default 4)")
    p.add_argument(
        "--scale",
        type=float,
        nargs=2,
        metavar=("MIN", "MAX"),
        default=None,
        help="shape size as a fraction of the image's short side (default 0.08 0.45)",
    )
    p.add_argument("--no-overlap", action="store_true", help="shapes never touch")
    p.add_argument("--plain", action="store_true", help="plain backgrounds instead of textured ones")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    options: Dict[str, Any] = {}
    if args.min_objects is not None:
        options["min_objects"] = args.min_objects
    if args.max_objects is not None:
        options["max_objects"] = args.max_objects
    if args.min_objects is not None and args.max_objects is None:
        options["max_objects"] = max(args.min_objects, 4)
    if args.max_objects is not None and args.min_objects is None:
        options["min_objects"] = min(args.max_objects, 1)
    if args.scale is not None:
        options["scale_range"] = tuple(args.scale)
    if args.no_overlap:
        options["allow_overlap"] = False
    if args.plain:
        options["textured"] = False
    dataset = synthesize(
        args.out,
        args.images,
        args.seed,
        args.format,
        args.width,
        args.height,
        image_format=args.image_format,
        **options,
    )
    boxes = sum(len(s.boxes) for s in dataset.samples)
    print(
        f"wrote {len(dataset.samples)} images, {boxes} boxes of {len(dataset.classes)} classes "
        f"({', '.join(dataset.classes)}) to {args.out} as {args.format} (seed {args.seed})"
    )
    return 0
