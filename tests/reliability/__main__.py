"""``python -m tests.reliability [--quick] [--only NAME…] [--out FILE]``: run the scenarios,
print the table, write it to FILE (docs/reliability.md for ``make reliability``)."""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import List

from .report import Row, document, table

SCENARIOS = [
    "outage",
    "deploy_kill",
    "bad_bundles",
    "command_fuzz",
    "forged_commands",
    "broker_acl",
    "camera",
    "accelerator",
]


def run_one(name: str, full: bool) -> Row:
    module = importlib.import_module(f"tests.reliability.{name}")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix=f"reliability-{name}-") as root:
        try:
            row: Row = module.run(Path(root), full)
        except Exception:  # a scenario that breaks is a wrong outcome too, never a silent gap
            traceback.print_exc()
            row = Row(module.NAME, 0, {}, {"scenario crashed": 1})
    row.seconds = time.monotonic() - started
    return row


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.reliability")
    parser.add_argument("--quick", action="store_true", help="the quick form make test runs")
    parser.add_argument("--only", nargs="*", choices=SCENARIOS, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    rows = []
    for name in args.only or SCENARIOS:
        print(f"reliability: {name} …", file=sys.stderr, flush=True)
        row = run_one(name, full=not args.quick)
        print(
            f"reliability: {name}: {row.wrong_total} wrong in {row.seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        rows.append(row)
    print(table(rows))
    if args.out is not None:
        command = "make reliability" if not args.quick else "python -m tests.reliability --quick"
        where = f"{platform.machine()}, Python {platform.python_version()}, {platform.system()}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(document(rows, command, where))
    return 1 if any(r.wrong_total for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
