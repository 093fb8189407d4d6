"""``cloud-trainer``: labelled images in, signed bundles out (SPEC §7).

Each subcommand lives in ``cloud_trainer/commands/<name>.py`` with ``register(subparsers)``
that adds its parser and sets ``func``; this module only assembles them.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from edge_agent.cli_support import run as run_cli
from edge_agent.errors import EdgewatchError

from . import __version__

COMMANDS = ("synth", "inspect", "train", "evaluate", "export", "package", "keygen", "publish")


class TrainerError(EdgewatchError):
    """A user-facing failure of a trainer command: printed as one line, exit 1."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cloud-trainer {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"cloud_trainer.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"cloud_trainer.commands.{name}":
                continue  # not built yet
            raise
        module.register(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    return run_cli("cloud-trainer", build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
