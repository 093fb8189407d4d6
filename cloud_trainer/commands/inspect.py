"""``cloud-trainer inspect``: read a dataset and say what is in it and what the import fixed."""

from __future__ import annotations

import argparse
import json

from ..data import FORMATS, describe, format_report, load_dataset, parse_classes


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="classes, counts and box sizes of a dataset",
        description="Read a dataset (format detected unless given) and print its classes, image and "
        "box counts, box-size statistics, image sizes, and every fix the import made.",
    )
    p.add_argument("data", metavar="DATA", help="dataset folder or annotation file")
    p.add_argument("--format", choices=FORMATS, default=None, help="dataset format (default: detect)")
    p.add_argument("--images", default=None, help="folder of the images, if not where the format puts them")
    p.add_argument("--classes", default=None, help="class list: a file (one name a line) or a,b,c")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    classes = parse_classes(args.classes) if args.classes else None
    dataset = load_dataset(args.data, args.format, images=args.images, classes=classes)
    info = describe(dataset)
    if args.json:
        print(json.dumps(info, indent=2, ensure_ascii=False))
    else:
        print(format_report(info))
    return 0
