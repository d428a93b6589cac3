"""The gateway object: everything a request handler needs, in one place.

One :class:`Gateway` per process holds the store, the account keys, the settings, the app
sessions, the handle tables, the shared decrypted-chunk cache and the limiter that bounds the
worker threads doing CPU and store work. Handlers reach it as ``call.gateway``.
"""

from __future__ import annotations

import fcntl
import hmac
import logging
import os
import secrets
import shutil
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import trio

from safefs import malloc, paths, selfenc
from safefs.keys import Account
from safefs.store import Store, open_store

from . import (
    DEFAULT_AUTH_TIMEOUT,
    DEFAULT_HANDLE_CAPACITY,
    DEFAULT_THREADS,
    blobs,
    read_admin_secret,
    read_info,
)
from .handles import Handles
from .sessions import AuthRequests, Session, SessionStore
from .state import open_state_db

if TYPE_CHECKING:
    import sqlite3

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Transfers of at least this many bytes give malloc's free memory back when they end
#: (``malloc.release_free_memory``); smaller ones leave too little to matter.
RELEASE_MEMORY_AFTER = 64 * 1024 * 1024


#: Blocking calls in flight per worker thread (the chunk workers bound the CPU work).
BLOCKING_CALLS_PER_THREAD = 4


@dataclass(frozen=True)
class GatewaySettings:
    handle_capacity: int = DEFAULT_HANDLE_CAPACITY
    # Let every caller use every handle, as the launcher did (for its test suite).
    shared_handles: bool = False
    # How long POST /auth waits for a person to approve or reject the app.
    auth_timeout: float = DEFAULT_AUTH_TIMEOUT
    # Approve every app at once (tests only).
    auto_approve: bool = False
    # Decrypted chunks shared by all readers, so that small sequential reads of one chunk
    # decrypt it once: four maximum-size chunks. Long reads decrypt ahead of the cache anyway.
    chunk_cache_bytes: int = 16 * 1024 * 1024
    # Worker threads for encryption, decryption and store calls.
    threads: int = DEFAULT_THREADS
    # Chunk size and compression of newly written data.
    selfenc: selfenc.Settings = selfenc.DEFAULT_SETTINGS


class Gateway:
    def __init__(self, store: Store, account: Account, settings: GatewaySettings,
                 state_db: sqlite3.Connection, spool_dir: Path, admin_secret: str) -> None:
        self.store = store
        self.account = account
        self.settings = settings
        self.state_db = state_db
        self.spool_dir = spool_dir
        self._admin_secret = admin_secret
        self.sessions = SessionStore(state_db)
        self.auth_requests = AuthRequests()
        self.handles = Handles(settings.handle_capacity, settings.shared_handles)
        self.chunk_cache = blobs.ChunkCache(settings.chunk_cache_bytes)
        # Blocking calls mostly wait (store I/O, a seal's durability barrier, which one flush
        # serves for every seal waiting at the time): more of them than cores may be in flight.
        self.limiter = trio.CapacityLimiter(BLOCKING_CALLS_PER_THREAD * settings.threads)
        # Chunk encryption of uploads and decryption ahead of readers, shared by all of them.
        self.chunk_workers = ThreadPoolExecutor(settings.threads, thread_name_prefix="chunks")
        self._lock_fd: int | None = None

    @classmethod
    def open(cls, store_url: str, settings: GatewaySettings) -> Gateway:
        """Open the store, the account (created on first use), the state and the admin secret.

        Raises :class:`GatewayRunning` if another gateway uses this data directory.
        """
        lock_fd = lock_data_dir()
        store = None
        try:
            store = open_store(store_url)
            account = load_or_create_account()
            spool_dir = paths.data_dir() / "spool"
            # Spooled uploads belong to writer handles, which do not survive a restart.
            shutil.rmtree(spool_dir, ignore_errors=True)
            paths.ensure_private_dir(spool_dir)
            gateway = cls(store, account, settings, open_state_db(), spool_dir,
                          ensure_admin_secret())
        except BaseException:
            if store is not None:
                store.close()
            os.close(lock_fd)
            raise
        gateway._lock_fd = lock_fd
        return gateway

    def close(self) -> None:
        self.auth_requests.cancel_all()
        self.handles.clear()
        self.chunk_workers.shutdown(wait=True, cancel_futures=True)
        self.store.close()
        self.state_db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def is_admin(self, secret: str | None) -> bool:
        return secret is not None and hmac.compare_digest(secret, self._admin_secret)

    def app_key(self, session: Session) -> bytes:
        """The symmetric key of the session's app (SYMMETRIC cipher opts)."""
        return self.account.app_key(session.app.key_id)

    def new_spool(self, prefix: str, head: bytes = b"", md5: bool = False) -> blobs.Spool:
        """A temporary upload in the spool directory, encrypted as it grows (blocking)."""
        return blobs.Spool(self.spool_dir, self.store, self.settings.selfenc,
                           self.chunk_workers, self.settings.threads, prefix=prefix,
                           head=head, md5=md5)

    def release_spool(self, spool: blobs.Spool) -> None:
        """Drop an upload's spool (see :meth:`transfer_ended`)."""
        spool.release()
        self.transfer_ended(spool.size)

    def transfer_ended(self, size: int) -> None:
        """An upload or download of ``size`` bytes ended: after a large one, malloc's free
        memory goes back to the system (on a worker: it takes milliseconds)."""
        if size >= RELEASE_MEMORY_AFTER:
            self.chunk_workers.submit(malloc.release_free_memory)

    async def run_sync(self, fn: Callable[..., T], *args: Any) -> T:
        """Run blocking work (crypto, store calls, file I/O) in a bounded worker thread."""
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)


async def wait_future(future: Future[T]) -> T:
    """Wait for a worker pool's future without holding a thread; cancelling cancels it."""
    token = trio.lowlevel.current_trio_token()
    done = trio.Event()
    future.add_done_callback(lambda _: token.run_sync_soon(done.set))
    try:
        await done.wait()
    except BaseException:
        future.cancel()
        raise
    return future.result()


class GatewayRunning(Exception):
    """Another gateway already uses this data directory (its state, spool and secrets)."""


def lock_data_dir() -> int:
    """Hold the data directory's lock for the life of the process; its file descriptor."""
    path = paths.gateway_state_file().with_name("gateway.lock")
    paths.ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        info = read_info()
        where = f" (pid {info['pid']}, {info['url']})" if info else ""
        raise GatewayRunning(
            f"a gateway is already running on {paths.data_dir()}{where}") from None
    return fd


def ensure_admin_secret() -> str:
    """The admin secret, created (mode 0600) on first use."""
    secret = read_admin_secret()
    if secret is None:
        secret = secrets.token_hex(32)
        paths.write_secret(paths.admin_secret_file(), secret.encode())
    return secret


def load_or_create_account() -> Account:
    """The account of this device; a new one is created the first time (as ``safefs mount``)."""
    path = paths.account_key_file()
    if path.exists():
        return Account.load(path)
    account = Account.generate()
    account.save(path)
    log.warning("created a new account in %s; `safefs account show` prints its public id; "
                "back up that file, it is the only way to recover your data", path)
    return account
