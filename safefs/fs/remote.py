"""The gateway as the file system sees it: directory records, file uploads, ranged reads.

Files are ImmutableData written through a writer handle and read through reader handles;
directories are tag-501 StructuredData. Both use the SYMMETRIC cipher, the key of the mount's
fixed app identity, so only this account's mounts can read them. ``online`` follows the
outcome of the latest request, for status and for the sync task's backoff.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterable, Awaitable, Callable
from typing import ParamSpec, TypeVar

import blake3
import trio

from safefs.client import GatewayClient, GatewayUnavailable, Reader, Unauthorized
from safefs.fs import APP_INFO, CPU_THREADS, DIR_TAG, ROOT_CONTEXT
from safefs.fs.dirrecord import DirRecord, Ref, unpack_ref

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

CIPHER = "SYMMETRIC"
#: Reader handles kept open for further ranged reads of the same content.
MAX_READERS = 32
#: Seconds between health probes while the gateway does not answer.
OFFLINE_PROBE = 1.0


class Remote:
    """:online: whether the latest request reached the gateway.
    :last_ok: wall-clock time of the latest successful request (0: none yet).
    :on_unreachable: called while the gateway does not answer (restarts an embedded one)."""

    def __init__(self, client: GatewayClient,
                 on_unreachable: Callable[[], Awaitable[None]] | None = None) -> None:
        self.client = client
        self.online = False
        self.last_ok = 0.0
        self.on_unreachable = on_unreachable
        self._readers: OrderedDict[bytes, Reader] = OrderedDict()
        self._opening: dict[bytes, trio.Lock] = {}
        self._cpu = trio.CapacityLimiter(CPU_THREADS)

    async def connect(self) -> bytes:
        """Authorise as the mount's app; returns the root directory's record name."""
        await self._authorise()
        return await self.root_name()

    async def _authorise(self) -> None:
        from safefs.gateway import read_admin_secret

        secret = read_admin_secret()
        if secret is None:
            log.warning("no local admin secret: approve the mount with `safefs apps approve`")
        await self._call(self.client.authorise, APP_INFO, admin_secret=secret)

    async def wait_online(self) -> None:
        """Return once the gateway answers again."""
        while True:
            if self.on_unreachable is not None:
                await self.on_unreachable()
            if await self.client.health():
                self.online = True
                return
            await trio.sleep(OFFLINE_PROBE)

    async def aclose(self) -> None:
        while self._readers:
            await self._readers.popitem()[1].close()

    def _result(self, ok: bool) -> None:
        self.online = ok
        if ok:
            self.last_ok = time.time()

    async def _call(self, method: Callable[P, Awaitable[T]], *args: P.args,
                    **kwargs: P.kwargs) -> T:
        try:
            try:
                result = await method(*args, **kwargs)
            except Unauthorized:
                if method == self.client.authorise:
                    raise
                log.info("the mount's token is not valid (any more): authorising again")
                await self._authorise()
                result = await method(*args, **kwargs)
        except GatewayUnavailable:
            self._result(False)
            raise
        self._result(True)
        return result

    # -- directories ----------------------------------------------------------------------------

    async def root_name(self) -> bytes:
        """The root directory's record name, derived from the account's public signing key."""
        handle = await self._call(self.client.sign_key)
        try:
            response = await self._call(self.client.request, "GET",
                                        f"/sign-key/serialise/{handle}")
        finally:
            await self.client.request("DELETE", f"/sign-key/{handle}", idempotent=True)
        return blake3.blake3(response.content, derive_key_context=ROOT_CONTEXT).digest()

    async def read_dir(self, name: bytes) -> tuple[int, DirRecord, bytes]:
        """(version, record, encoded record) of the latest version (NotFound if none)."""
        version, data = await self._call(self.client.sd_read, name, DIR_TAG)
        record = await trio.to_thread.run_sync(DirRecord.decode, data, limiter=self._cpu)
        return version, record, data

    async def create_dir(self, name: bytes, encoded: bytes) -> int:
        """Store version 0 of a record (Conflict if it exists)."""
        await self._call(self.client.sd_create, name, DIR_TAG, encoded, CIPHER)
        return 0

    async def update_dir(self, name: bytes, encoded: bytes, expected_version: int) -> int:
        """Publish the next version if the record is still at ``expected_version`` (else
        Conflict); returns the new version."""
        return await self._call(self.client.sd_update, name, DIR_TAG, encoded, expected_version,
                                CIPHER)

    async def dir_version(self, name: bytes) -> int:
        return int((await self._call(self.client.sd_info, name, DIR_TAG))["version"])

    # -- file content ---------------------------------------------------------------------------

    async def upload(self, chunks: AsyncIterable[bytes], size: int | None) -> bytes:
        """Store content (``size`` bytes, or however many ``chunks`` give if None); returns its
        serialised DataIdentifier."""
        return await self._call(self.client.put_stream, chunks, size, CIPHER)

    async def fetch(self, ref: int, data: bytes, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of uploaded content (inline content is its own source)."""
        if ref == Ref.INLINE:
            return data[start:end]
        offset = 0
        if ref == Ref.PACKED:
            offset, data = unpack_ref(data)
        reader = await self._reader(data)
        return await self._call(reader.read, offset + start, offset + end)

    async def _reader(self, data_id: bytes) -> Reader:
        lock = self._opening.setdefault(data_id, trio.Lock())
        async with lock:
            reader = self._readers.get(data_id)
            if reader is None:
                reader = await self._call(self.client.open_reader, data_id)
                self._readers[data_id] = reader
                if len(self._readers) > MAX_READERS:
                    _, oldest = self._readers.popitem(last=False)
                    await oldest.close()
            else:
                self._readers.move_to_end(data_id)
        if not lock.locked() and not lock.statistics().tasks_waiting:
            self._opening.pop(data_id, None)
        return reader
