"""What safefs tells systemd and learns from it: sd_notify(3) state messages (``READY=1``,
``STOPPING=1``) for ``Type=notify`` units, and whether stderr is the journal.

The notification socket belongs to this process alone. It is taken out of the environment on
import, as ``sd_notify(unset_environment=1)`` does, so that a child (the mount's embedded
gateway) cannot report ``READY=1`` in the parent's name.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)

_NOTIFY_SOCKET = os.environ.pop("NOTIFY_SOCKET", None)


def sd_notify(message: str) -> None:
    """Tell systemd (or whoever set ``NOTIFY_SOCKET``) about our state; a no-op otherwise.

    A failure is logged, not raised: the service itself works on without it.
    """
    if not _NOTIFY_SOCKET:
        return
    address = _NOTIFY_SOCKET
    if address.startswith("@"):  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError as exc:
        log.warning("cannot send %s to %s: %s", message, _NOTIFY_SOCKET, exc)


def stderr_is_journal() -> bool:
    """True when systemd connected stderr to the journal, which stamps every line itself.

    ``JOURNAL_STREAM`` names the journal's stream as ``DEVICE:INODE``; it is inherited, so it
    only counts while stderr is still that stream.
    """
    try:
        device, inode = map(int, os.environ["JOURNAL_STREAM"].split(":"))
        stat = os.fstat(2)
    except (KeyError, ValueError, OSError):
        return False
    return (stat.st_dev, stat.st_ino) == (device, inode)
