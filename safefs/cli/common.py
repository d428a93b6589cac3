"""Helpers shared by the ``safefs`` sub-commands."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from safefs.gateway import read_admin_secret, read_info

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8100"


class QuietError(Exception):
    """An error the user can fix: printed as one line, exits with ``exit_code``."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports bad flags in one line (usage stays available through --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def run_async(function: Callable[..., Any], *args: Any) -> Any:
    """``trio.run``, importing trio only for the commands that need it: every command builds
    the whole parser, and a `safefs sync` in a script should start quickly."""
    import trio

    return trio.run(function, *args)


def add_gateway_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gateway", metavar="URL",
                        help="gateway URL (default: the running gateway, else "
                        f"$SAFEFS_GATEWAY, else {DEFAULT_GATEWAY_URL})")


def gateway_url(args: argparse.Namespace) -> str:
    if getattr(args, "gateway", None):
        return args.gateway
    info = read_info()
    if info:
        return info["url"]
    return os.environ.get("SAFEFS_GATEWAY", DEFAULT_GATEWAY_URL)


def admin_secret() -> str:
    secret = read_admin_secret()
    if secret is None:
        raise QuietError("no admin secret found: is the gateway running as this user "
                         "(with the same XDG_DATA_HOME)?")
    return secret


@contextmanager
def progress_bar(total: int, label: str,
                 finishing: str = "") -> Iterator[Callable[[int], None]]:
    """A progress callback (bytes done so far += n) drawing on a terminal, silent otherwise.

    ``finishing`` is shown once every byte is through, while the work ends (e.g. encrypting).
    """
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    done = 0
    started = last_draw = time.monotonic()

    def draw(final: bool = False) -> None:
        fraction = done / total if total else 1.0
        width = 30
        filled = int(fraction * width)
        rate = done / max(time.monotonic() - started, 1e-6)
        status = f"{finishing}..." if finishing and done >= total and not final else ""
        sys.stderr.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] "
                         f"{fraction:6.1%} {_human(done)}/{_human(total)} {_human(rate)}/s "
                         f"{status:<16}")
        if final:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def update(n: int) -> None:
        nonlocal done, last_draw
        done += n
        now = time.monotonic()
        if now - last_draw >= 0.1 or done >= total:
            last_draw = now
            draw()

    try:
        yield update
    finally:
        draw(final=True)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"
