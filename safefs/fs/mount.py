"""The mount daemon: gateway connection, local state, pyfuse3 main loop, clean stop.

Start-up: find the gateway (``--gateway``, else the running one, else the configured one, else
an embedded gateway started as a child process on the local store), authorise as the mount's
fixed app identity with the local admin secret, open this mount point's cache directory (one
per mount point: metadata database, cache files, a lock), mount, and tell systemd ``READY=1``
once the mount answers. The mount also starts offline from an existing cache.

Stop: SIGTERM or SIGINT flush pending changes (at most ``FLUSH_TIMEOUT``), then unmount;
``fusermount -u`` (as ``safefs umount`` does after its own flush) ends the loop the same way.
Whatever could not be uploaded stays in the cache and goes up at the next mount.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
import trio

from safefs import paths
from safefs.client import GatewayClient, GatewayError, GatewayUnavailable
from safefs.fs import UPLOAD_DELAY
from safefs.fs.cache import FileCache
from safefs.fs.ctrl import Control
from safefs.fs.meta import COMMIT_DELAY, ROOT_INODE, Metadata
from safefs.fs.operations import Operations
from safefs.fs.remote import Remote
from safefs.fs.sync import SyncTask
from safefs.sdnotify import sd_notify

log = logging.getLogger(__name__)

#: Longest clean stop on SIGTERM, below systemd's default TimeoutStopSec (90 s).
FLUSH_TIMEOUT = 75.0
#: How long to wait for an embedded gateway to come up.
GATEWAY_START_TIMEOUT = 60.0
EMBEDDED_LISTEN = "127.0.0.1:8100"


class MountError(Exception):
    """A problem the user can fix (printed as one line by the CLI)."""


@dataclass
class MountOptions:
    mountpoint: Path
    gateway: str | None = None
    cache_size: int = 10 << 30
    upload_delay: float = UPLOAD_DELAY
    poll_interval: float = 15.0


def cache_dir_for(mountpoint: Path) -> Path:
    """The cache directory of one mount point (metadata, cache files, log)."""
    key = hashlib.sha256(os.fsencode(mountpoint.resolve())).hexdigest()[:16]
    return paths.cache_dir() / "mounts" / key


def run(options: MountOptions) -> None:
    """Mount in the foreground until unmounted or stopped (blocking)."""
    trio.run(serve, options)


async def serve(options: MountOptions) -> None:
    mountpoint = options.mountpoint.resolve()
    if not mountpoint.is_dir():
        raise MountError(f"{options.mountpoint} is not a directory")
    if os.path.ismount(mountpoint):
        raise MountError(f"{mountpoint} is already a mount point")
    cache_dir = paths.ensure_private_dir(cache_dir_for(mountpoint))
    with open(cache_dir / "lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise MountError(f"another safefs daemon uses {cache_dir}") from None
        async with Gateway(options.gateway) as gateway:
            await _serve(options, mountpoint, cache_dir, gateway)


async def _serve(options: MountOptions, mountpoint: Path, cache_dir: Path,
                 gateway: Gateway) -> None:
    client = GatewayClient(gateway.url, retries=2)
    remote = Remote(client, gateway.ensure_running)
    meta = Metadata(cache_dir / "meta.sqlite", (os.getuid(), os.getgid()))
    try:
        await _connect(remote, meta, cache_dir)
        untrusted: list[int] = []
        if meta.setting("mounted"):
            # Not stopped cleanly: a power loss may have lost cached blocks the metadata lists
            # (changes are safe: fsync made them durable, and they are uploaded below).
            log.warning("the last mount of %s did not stop cleanly; recovering", mountpoint)
            untrusted = meta.forget_clean_cached_blocks()
        meta.set_setting("mounted", 1)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_commit_grouped, meta)
            cache = FileCache(meta, cache_dir / "files", options.cache_size, remote.fetch,
                              nursery)
            for inode in untrusted:
                cache.drop(inode)
            for orphan in meta.orphans():
                cache.drop(orphan)
                meta.purge(orphan)
            sync = SyncTask(meta, cache, remote, upload_delay=options.upload_delay,
                            poll_interval=options.poll_interval)
            control = Control(sync.flush, lambda: _status(sync, gateway, mountpoint,
                                                          cache_dir, cache),
                              lambda: sync.uploaded_bytes)
            operations = Operations(meta, cache, sync, control, nursery)
            try:
                await sync.ensure_loaded(ROOT_INODE)
            except GatewayError as exc:
                log.warning("starting offline (%s): the root is listed once the gateway "
                            "answers", exc)
            await _run_fuse(operations, sync, control, mountpoint, nursery)
            nursery.cancel_scope.cancel()
            operations.forget_all()
        cache.close()
        meta.set_setting("mounted", 0)
    finally:
        meta.close()
        await remote.aclose()
        await client.aclose()


async def _commit_grouped(meta: Metadata) -> None:
    """Group metadata commits: commit ``COMMIT_DELAY`` after the first change since the last
    commit (until cancelled; then every change commits at once again)."""
    try:
        while True:
            opened = trio.Event()
            meta.on_uncommitted = opened.set
            await opened.wait()
            await trio.sleep(COMMIT_DELAY)
            meta.commit()
    finally:
        meta.on_uncommitted = None
        meta.commit()


async def _connect(remote: Remote, meta: Metadata, cache_dir: Path) -> None:
    """Authorise and learn the root's record name; offline, fall back on the cache."""
    try:
        root_name = await remote.connect()
    except GatewayUnavailable as exc:
        stored = meta.setting("root_name")
        if not isinstance(stored, bytes):
            raise MountError(exc.description) from None
        log.warning("gateway unreachable (%s): mounting from the cache", exc.description)
        return
    stored = meta.setting("root_name")
    if stored is not None and stored != root_name:
        raise MountError(f"the cache {cache_dir} belongs to another account: unmount, move "
                         "it away and mount again")
    meta.init_root(root_name)


async def _run_fuse(operations: Operations, sync: SyncTask, control: Control,
                    mountpoint: Path, nursery: trio.Nursery) -> None:
    options = set(pyfuse3.default_options)
    options |= {"fsname=safefs", "subtype=safefs"}
    try:
        pyfuse3.init(operations, str(mountpoint), options)
    except RuntimeError as exc:  # fusermount3 printed why on stderr
        raise MountError(f"cannot mount {mountpoint}: {exc}") from None
    # The last upload, after the kernel let go; a stop signal starts its clock earlier.
    final_flush = trio.CancelScope(shield=True)
    unmount = False
    try:
        nursery.start_soon(sync.run)
        nursery.start_soon(control.run)
        nursery.start_soon(_stop_on_signals, sync, final_flush)
        nursery.start_soon(_notify_ready, mountpoint)
        nursery.start_soon(operations.busy_poll.run)
        await pyfuse3.main()
        unmount = True
    finally:
        pyfuse3.close(unmount=unmount)
    log.info("unmounted %s; uploading what is left", mountpoint)
    if final_flush.deadline == math.inf:
        final_flush.deadline = trio.current_time() + FLUSH_TIMEOUT
    with final_flush:
        try:
            await sync.flush()
        except GatewayError as exc:
            log.warning("final upload failed: %s", exc)
    sync.stop()
    files, size, dirs = sync.pending_counts()
    if files or dirs:
        log.warning("%d files (%d bytes) and %d directories are not uploaded yet; they stay in "
                    "the cache and go up at the next mount", files, size, dirs)


async def _notify_ready(mountpoint: Path) -> None:
    """READY=1 once the mount answers (the stat goes through our own request loop)."""
    await trio.to_thread.run_sync(os.stat, mountpoint)
    log.info("mounted %s", mountpoint)
    sd_notify("READY=1")


async def _stop_on_signals(sync: SyncTask, final_flush: trio.CancelScope) -> None:
    """SIGTERM/SIGINT: upload pending changes, then leave the FUSE loop, all within
    ``FLUSH_TIMEOUT``; a second signal leaves at once."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async for signum in signals:
            log.info("%s: uploading pending changes, then unmounting",
                     signal.Signals(signum).name)
            sd_notify("STOPPING=1")
            final_flush.deadline = trio.current_time() + FLUSH_TIMEOUT
            with trio.move_on_at(final_flush.deadline) as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(_flush_quietly, sync, nursery.cancel_scope)
                    async for _ in signals:
                        nursery.cancel_scope.cancel()
                        final_flush.deadline = trio.current_time()
                        break
            if scope.cancelled_caught:
                log.warning("pending changes not all uploaded within %.0f s", FLUSH_TIMEOUT)
            pyfuse3.terminate()
            return


async def _flush_quietly(sync: SyncTask, done: trio.CancelScope) -> None:
    try:
        await sync.flush()
    except GatewayError as exc:
        log.warning("upload before stopping failed: %s", exc)
    done.cancel()


def _status(sync: SyncTask, gateway: Gateway, mountpoint: Path, cache_dir: Path,
            cache: FileCache) -> dict:
    status = sync.status()
    status.update(pid=os.getpid(), mountpoint=str(mountpoint), gateway=gateway.url,
                  cache_dir=str(cache_dir), cache_bytes=cache.usage, cache_limit=cache.limit)
    return status


# Runs ``python -m safefs ARGS`` in this process, which gets SIGTERM when the daemon that
# started it dies, even by SIGKILL (PR_SET_PDEATHSIG outlives the exec).
_EXEC_TIED_TO_PARENT = """
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGTERM)
if os.getppid() != int(sys.argv[1]):
    sys.exit("the mount daemon is gone")
os.execv(sys.executable, [sys.executable, "-m", "safefs", *sys.argv[2:]])
"""


class Gateway:
    """The gateway this mount talks to, started here (embedded) when none is available.

    An embedded gateway is a child process on the local store: restarted if it dies, stopped
    with the mount, and gone with the daemon even if that is killed.
    """

    def __init__(self, url: str | None) -> None:
        self.url = url or ""
        self._process: subprocess.Popen | None = None

    async def __aenter__(self) -> Gateway:
        if not self.url:
            self.url = _configured_gateway() or await self._start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            await trio.to_thread.run_sync(self._process.wait)

    async def ensure_running(self) -> None:
        """Restart an embedded gateway that died (called while the gateway is unreachable)."""
        if self._process is not None and self._process.poll() is not None:
            log.warning("the embedded gateway exited with %s; starting it again",
                        self._process.returncode)
            try:  # on the same address: the client keeps its URL
                await self._start(self.url.rpartition("//")[2])
            except MountError as exc:
                log.warning("%s; trying again", exc)

    async def _start(self, listen: str | None = None) -> str:
        from safefs.gateway import read_info

        listen = listen or (EMBEDDED_LISTEN if _port_free(EMBEDDED_LISTEN) else "127.0.0.1:0")
        log.info("no gateway running: starting one on %s", listen)
        self._process = subprocess.Popen(
            [sys.executable, "-c", _EXEC_TIED_TO_PARENT, str(os.getpid()), "gateway",
             "--listen", listen], stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + GATEWAY_START_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise MountError(f"the embedded gateway exited with {self._process.returncode}")
            info = read_info()
            if info and info.get("pid") == self._process.pid:
                async with GatewayClient(info["url"]) as client:
                    if await client.health():
                        return str(info["url"])
            await trio.sleep(0.1)
        self._process.kill()
        raise MountError("the embedded gateway did not start")


def _configured_gateway() -> str | None:
    """A running gateway, else $SAFEFS_GATEWAY, else ``gateway`` in the config file."""
    from safefs.gateway import read_info

    info = read_info()
    if info:
        return str(info["url"])
    if url := os.environ.get("SAFEFS_GATEWAY"):
        return url
    try:
        return json.loads(paths.config_file().read_text()).get("gateway")
    except (FileNotFoundError, ValueError, AttributeError):
        return None


def _port_free(listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    with socket.socket() as sock:
        try:
            sock.bind((host, int(port)))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True

