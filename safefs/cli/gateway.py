"""``safefs gateway``: run the gateway in the foreground."""

from __future__ import annotations

import argparse
import errno
import logging

from safefs import paths

from .common import QuietError


def register(subparsers: argparse._SubParsersAction) -> None:
    # Only light modules here: every safefs command builds this parser.
    from safefs.gateway import (
        DEFAULT_AUTH_TIMEOUT,
        DEFAULT_HANDLE_CAPACITY,
        DEFAULT_LISTEN,
        DEFAULT_THREADS,
    )

    parser = subparsers.add_parser(
        "gateway", help="run the gateway (the launcher REST API) in the foreground",
        description="Serve the SAFE launcher REST API over the store until SIGTERM/SIGINT.")
    parser.add_argument("--listen", metavar="HOST:PORT", default=DEFAULT_LISTEN,
                        help=f"address to listen on (default {DEFAULT_LISTEN})")
    parser.add_argument("--store", metavar="URL",
                        help="store URL: file:///DIR or memory:// (default "
                        "file://$XDG_DATA_HOME/safefs/store)")
    parser.add_argument("--tls-cert", metavar="FILE", help="TLS certificate (PEM)")
    parser.add_argument("--tls-key", metavar="FILE", help="TLS private key (PEM)")
    parser.add_argument("--auto-approve", action="store_true",
                        help="approve every app without asking (for tests only)")
    parser.add_argument("--auth-timeout", type=float, metavar="SECONDS",
                        default=DEFAULT_AUTH_TIMEOUT,
                        help="how long an app waits for approval (default %(default)s)")
    parser.add_argument("--handle-capacity", type=int, metavar="N",
                        default=DEFAULT_HANDLE_CAPACITY,
                        help="handles kept per kind before the least recently used is evicted "
                        "(default %(default)s)")
    parser.add_argument("--shared-handles", action="store_true",
                        help="let every caller use every handle, as the launcher did (to run "
                        "its test suite); by default a handle belongs to the app that made it")
    parser.add_argument("--threads", type=int, metavar="N", default=DEFAULT_THREADS,
                        help="worker threads for encryption and store calls "
                        "(default %(default)s)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    from safefs.gateway.core import GatewaySettings
    from safefs.gateway.server import parse_listen
    from safefs.gateway.server import run as run_server

    if bool(args.tls_cert) != bool(args.tls_key):
        raise QuietError("--tls-cert and --tls-key go together")
    try:
        parse_listen(args.listen)
    except ValueError as exc:
        raise QuietError(f"--listen: {exc}") from None
    if args.handle_capacity < 1 or args.threads < 1 or args.auth_timeout <= 0:
        raise QuietError("--handle-capacity, --threads and --auth-timeout must be positive")
    settings = GatewaySettings(handle_capacity=args.handle_capacity,
                               auth_timeout=args.auth_timeout, auto_approve=args.auto_approve,
                               shared_handles=args.shared_handles, threads=args.threads)
    from safefs.gateway.core import GatewayRunning
    from safefs.keys import AccountError
    from safefs.store import StoreError

    if args.verbose == 0:
        logging.getLogger("safefs").setLevel(logging.INFO)
    try:
        run_server(args.store or paths.default_store_url(), args.listen, settings,
                   certfile=args.tls_cert, keyfile=args.tls_key)
    except (AccountError, StoreError, GatewayRunning) as exc:
        raise QuietError(str(exc)) from None
    except BaseExceptionGroup as group:
        raise _startup_error(group, args.listen) from None
    except OSError as exc:
        raise _startup_error(exc, args.listen) from None


def _startup_error(exc: BaseException, listen: str) -> BaseException:
    """A one-line error for what typically goes wrong at start-up, else the original."""
    leaf = exc
    while isinstance(leaf, BaseExceptionGroup) and len(leaf.exceptions) == 1:
        leaf = leaf.exceptions[0]
    if isinstance(leaf, OSError):
        if leaf.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            return QuietError(f"cannot listen on {listen}: {leaf.strerror}")
        return QuietError(f"{leaf.strerror or leaf}: {leaf.filename or ''}".rstrip(": "))
    return exc
