"""``cloud-trainer``: labelled images in, signed bundles out (SPEC §7).

Each subcommand lives in ``cloud_trainer/commands/<name>.py`` with ``register(subparsers)``
that adds its parser and sets ``func``; this module only assembles them. A command whose module
cannot be imported (a missing dependency, a missing file) stays listed, marked unavailable with
the reason, and running it is a one-line error that names the module and the import error. A
third-party module missing when a command runs (tensorflow is imported only to train) is a
one-line error too.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Optional, Sequence

from edge_agent.cli_support import run as run_cli

from . import __version__
from .errors import TrainerError

__all__ = ["COMMANDS", "TrainerError", "build_parser", "main"]  # TrainerError: importable from here too

COMMANDS = (
    "synth",
    "inspect",
    "train",
    "evaluate",
    "export",
    "package",
    "import-darknet",
    "zoo",
    "keygen",
    "publish",
)

_OWN_PACKAGES = ("cloud_trainer", "edge_agent")  # a module of these missing is not a dependency


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cloud-trainer", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cloud-trainer {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        module_name = f"cloud_trainer.commands.{name.replace('-', '_')}"
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            _register_unavailable(sub, name, module_name, e)
        else:
            module.register(sub)
    return parser


def _register_unavailable(
    sub: argparse._SubParsersAction[argparse.ArgumentParser], name: str, module_name: str, error: ImportError
) -> None:
    """List ``name`` with the reason it cannot run; running it raises that reason as a
    TrainerError (its arguments are not parsed: its parser could not be built)."""
    reason = f"cannot import {module_name}: {_describe(error)}"

    def unavailable(args: argparse.Namespace) -> NoReturn:
        raise TrainerError(f"{name}: {reason}") from error

    p = sub.add_parser(name, help=f"unavailable: {reason}", description=f"unavailable: {reason}")
    p.set_defaults(func=unavailable, unavailable=True)


def _describe(error: ImportError) -> str:
    """The first line of an import error, and how to install what it lacks when that is a
    third-party package (tensorflow, openvino, pycocotools, ...)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    if _is_missing_dependency(error):
        return f"{line} (install the trainer's dependencies: pip install 'edgewatch[trainer]')"
    return line


def _is_missing_dependency(error: ImportError) -> bool:
    return isinstance(error, ModuleNotFoundError) and (error.name or "").split(".")[0] not in _OWN_PACKAGES


def _missing_dependency_is_an_error(args: argparse.Namespace) -> int:
    """Run the command; a third-party module it imports on the way (the trainer imports
    tensorflow only when it trains) that is not installed is a one-line TrainerError."""
    try:
        return int(args.command_func(args) or 0)
    except ModuleNotFoundError as e:
        if not _is_missing_dependency(e):
            raise  # a bug, not an installation
        raise TrainerError(f"{args.command}: {_describe(e)}") from e


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "unavailable", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")  # what parse_args says
    args.command_func, args.func = args.func, _missing_dependency_is_an_error
    return run_cli("cloud-trainer", args)


if __name__ == "__main__":
    sys.exit(main())
