"""The control file: how ``safefs umount``, ``sync`` and ``status`` talk to a mount's daemon.

The root of every mount has a hidden file ``CTRL_NAME`` (not listed by readdir). Reading its
``STATUS_XATTR`` attribute returns the daemon's status as JSON, ``PROGRESS_XATTR`` the part of it
a client waiting for a flush reads (cheap: no counting of pending files), and ``WAIT_XATTR`` the
same once no requested flush is outstanding, or after ``WAIT_MAX`` seconds: a client waiting for a
flush learns of its end at once, without polling, and can still show progress. Writing
``FLUSH_XATTR`` asks for a flush: upload and publish everything, and with the value ``pull``
also merge the changes other mounts made (``safefs sync``; ``umount`` only pushes). Going
through the mount itself needs no socket and no discovery: a path inside the mount is enough.

Flushes are numbered: ``flush_requested`` counts requests, ``flush_done`` is the latest request
a completed flush covered and ``flush_failed`` the latest one a failed flush covered. A client
that asked for a flush waits until either reaches the ``flush_requested`` it saw afterwards.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

from safefs.errors import GatewayError

if TYPE_CHECKING:
    import trio

log = logging.getLogger(__name__)

CTRL_NAME = b".__safefs_ctrl__"
STATUS_XATTR = b"user.safefs.status"
PROGRESS_XATTR = b"user.safefs.progress"
FLUSH_XATTR = b"user.safefs.flush"
WAIT_XATTR = b"user.safefs.wait"
#: Longest a read of ``WAIT_XATTR`` waits (and so how often a progress bar moves; a request
#: blocked in the kernel holds off Ctrl-C until it returns).
WAIT_MAX = 0.25


class Control:
    """Daemon side: serves status and runs requested flushes one after the other."""

    def __init__(self, flush: Callable[[bool], Awaitable[None]],
                 status: Callable[[], dict], uploaded_bytes: Callable[[], int]) -> None:
        self._flush = flush
        self._status = status
        self._uploaded_bytes = uploaded_bytes
        self.flush_requested = 0
        self.flush_done = 0
        self.flush_failed = 0
        self.flush_error = ""
        self._pull = False
        import trio  # here, not at the top: the client side (``safefs sync``) starts faster

        self._trio = trio
        self._wake: trio.Event = trio.Event()
        self._finished: trio.Event = trio.Event()  # set (and replaced) after each flush

    def request_flush(self, pull: bool) -> None:
        self.flush_requested += 1
        self._pull |= pull
        self._wake.set()

    def status(self) -> bytes:
        status = self._status()
        status.update(self._progress())
        return json.dumps(status, sort_keys=True).encode()

    def progress(self) -> bytes:
        return json.dumps(self._progress(), sort_keys=True).encode()

    async def wait(self) -> bytes:
        """The progress once no requested flush is outstanding, or after ``WAIT_MAX``."""
        with self._trio.move_on_after(WAIT_MAX):
            while self._outstanding():
                await self._finished.wait()
        return self.progress()

    def _outstanding(self) -> bool:
        return max(self.flush_done, self.flush_failed) < self.flush_requested

    def _progress(self) -> dict:
        return {"flush_requested": self.flush_requested, "flush_done": self.flush_done,
                "flush_failed": self.flush_failed, "flush_error": self.flush_error,
                "uploaded_bytes": self._uploaded_bytes()}

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = self._trio.Event()
            while self._outstanding():
                covered, pull, self._pull = self.flush_requested, self._pull, False
                try:
                    await self._flush(pull)
                except GatewayError as exc:
                    log.warning("flush failed: %s", exc)
                    self.flush_error, self.flush_failed = str(exc), covered
                except Exception as exc:  # reported to the client; the mount stays up
                    log.exception("flush failed")
                    self.flush_error, self.flush_failed = str(exc), covered
                else:
                    self.flush_error = ""
                    self.flush_done = covered
                self._finished.set()
                self._finished = self._trio.Event()


# -- client side -----------------------------------------------------------------------------

def ctrl_path(mountpoint: str | os.PathLike) -> Path:
    return Path(mountpoint) / CTRL_NAME.decode()


def read_status(mountpoint: str | os.PathLike) -> dict:
    """The daemon's status (OSError if the mount does not answer)."""
    return json.loads(os.getxattr(ctrl_path(mountpoint), STATUS_XATTR.decode()))


def read_progress(mountpoint: str | os.PathLike) -> dict:
    """Flush numbers and uploaded bytes (OSError if the mount does not answer)."""
    return json.loads(os.getxattr(ctrl_path(mountpoint), PROGRESS_XATTR.decode()))


def wait_progress(mountpoint: str | os.PathLike) -> dict:
    """:func:`read_progress` once no requested flush is outstanding, or after ``WAIT_MAX``."""
    return json.loads(os.getxattr(ctrl_path(mountpoint), WAIT_XATTR.decode()))


def request_flush(mountpoint: str | os.PathLike, pull: bool) -> int:
    """Ask for a flush; returns the request number to wait for."""
    os.setxattr(ctrl_path(mountpoint), FLUSH_XATTR.decode(), b"pull" if pull else b"push")
    return int(read_progress(mountpoint)["flush_requested"])
