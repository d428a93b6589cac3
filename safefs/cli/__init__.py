"""The ``safefs`` command.

Each concern is a module ``safefs/cli/<name>.py`` exposing ``register(subparsers)``, which adds
its sub-command(s) with ``set_defaults(func=...)``; the function takes the parsed arguments and
returns an exit status (``None`` = 0). Add a module by appending its name to
``COMMAND_MODULES``. Errors a user can cause raise :class:`QuietError`: one line on stderr, a
non-zero exit, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from .common import OneLineParser, QuietError

__all__ = ["COMMAND_MODULES", "QuietError", "build_parser", "main"]

log = logging.getLogger(__name__)

COMMAND_MODULES = ["gateway", "apps", "account", "data", "mount", "keys", "service"]


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="safefs", description="An end-to-end encrypted, versioned "
                           "network drive: gateway, mount and tools.")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more (repeat for debug output)")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from safefs import malloc
    from safefs.errors import GatewayError
    from safefs.sdnotify import stderr_is_journal

    malloc.tune()

    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    stamp = "" if stderr_is_journal() else "%(asctime)s "  # the journal stamps lines itself
    logging.basicConfig(level=max(level, logging.DEBUG), stream=sys.stderr,
                        format=stamp + "%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args) or 0
    except QuietError as exc:
        print(f"safefs: {exc}", file=sys.stderr)
        return exc.exit_code
    except GatewayError as exc:
        print(f"safefs: {exc.description}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("safefs: interrupted", file=sys.stderr)
        return 130
