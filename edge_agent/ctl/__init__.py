"""``edge-ctl``, the operator's tool (SPEC §7): keys, signed commands, results, live view."""

from .cli import build_parser, main

__all__ = ["build_parser", "main"]
