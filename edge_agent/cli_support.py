"""What every edgewatch command line shares: logging to stderr by -v count, and user-facing
errors printed as one line (exit 1) instead of a traceback."""

from __future__ import annotations

import argparse
import logging
import sys

from .errors import EdgewatchError


def run(prog: str, args: argparse.Namespace) -> int:
    level = logging.WARNING - 10 * min(getattr(args, "verbose", 0), 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except EdgewatchError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `... | head` closed our stdout
        sys.stderr.close()
        return 0
