"""Run the gateway: Hypercorn's trio worker serving the Starlette app, until SIGTERM/SIGINT.

While it runs, ``paths.gateway_info_file()`` holds ``{"url", "pid"}`` so local clients can find
it. On the first SIGTERM or SIGINT the gateway stops accepting connections, answers waiting
authorisation requests with 503 and gives in-flight requests ``GRACEFUL_TIMEOUT`` seconds to
finish; a second signal cancels them at once. Either way nothing is left half-written under a
final name: the store writes atomically and spooled uploads are temporary files.
"""

from __future__ import annotations

import ipaddress
import logging
import signal
from functools import partial

import hypercorn.trio
import hypercorn.trio.tcp_server
import trio
from hypercorn.config import Config

from safefs.sdnotify import sd_notify

from . import DEFAULT_LISTEN, remove_info, write_info
from .app import create_app
from .core import Gateway, GatewaySettings

log = logging.getLogger(__name__)

# Hypercorn reads a connection at most MAX_RECV bytes at a time (64 KiB), and every read goes
# through h11, Hypercorn's stream and Starlette before a handler sees it. Reading up to 1 MiB
# when that much is waiting cut the gateway's time for a 1 GiB upload by 13 %
# (docs/BENCHMARKS.md). It is a module constant, not a setting, hence the assignment.
RECEIVE_BYTES = 1 << 20
if getattr(hypercorn.trio.tcp_server, "MAX_RECV", 0) < RECEIVE_BYTES:
    hypercorn.trio.tcp_server.MAX_RECV = RECEIVE_BYTES

GRACEFUL_TIMEOUT = 30.0


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (IPv6 as ``[::1]:8100``) → (host, port); ValueError when malformed."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(store_url: str, listen: str = DEFAULT_LISTEN, settings: GatewaySettings | None = None,
        certfile: str | None = None, keyfile: str | None = None) -> None:
    """Serve in the foreground until a signal (blocking); for ``safefs gateway``."""
    trio.run(partial(serve, store_url, listen, settings or GatewaySettings(),
                     certfile=certfile, keyfile=keyfile))


async def serve(store_url: str, listen: str, settings: GatewaySettings, *,
                certfile: str | None = None, keyfile: str | None = None,
                task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve until SIGTERM/SIGINT; ``task_status`` gets the URL once the socket is bound."""
    host, port = parse_listen(listen)
    if not is_loopback(host) and not certfile:
        log.warning("listening on %s without TLS: tokens and data cross the network in clear; "
                    "pass --tls-cert and --tls-key", host)
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.certfile = certfile
    config.keyfile = keyfile
    config.graceful_timeout = GRACEFUL_TIMEOUT
    gateway = Gateway.open(store_url, settings)
    app = create_app(gateway)
    # chainAPI signatures do not cover request bodies, so safefs.gateway.chain serves its API
    # keys only where nobody can alter a body on the way: loopback or TLS.
    app.state.secure_listener = is_loopback(host) or certfile is not None
    stop = trio.Event()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_watch_signals, gateway, stop, nursery.cancel_scope)

            async def serve_then_stop(task_status: trio.TaskStatus[list[str]]) -> None:
                await hypercorn.trio.serve(app, config,
                                           shutdown_trigger=stop.wait, task_status=task_status)
                nursery.cancel_scope.cancel()

            urls = await nursery.start(serve_then_stop)
            url = urls[0]
            write_info(url)
            log.info("gateway listening on %s (store %s)", url, store_url)
            sd_notify("READY=1")  # systemd (Type=notify): clients may connect from now on
            task_status.started(url)
        log.info("gateway stopped")
    finally:
        remove_info()
        gateway.close()


async def _watch_signals(gateway: Gateway, stop: trio.Event, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            if stop.is_set():
                log.warning("second signal: cancelling in-flight requests")
                scope.cancel()
                return
            log.info("%s: finishing in-flight requests, then stopping",
                     signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            gateway.auth_requests.cancel_all()
            stop.set()
