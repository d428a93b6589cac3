"""The write-back cache: the plaintext content of files, one sparse cache file per inode.

Small files (up to ``SMALL_FILE_MAX``) without a cache file keep their content in the metadata
database instead (``small_files``); once uploaded, one that travels inline in its directory's
record is read from that inline copy, and one in a pack keeps its row as its cached copy (evicted
like a block): no cache file is created or deleted for them. A small file that grows moves into
a cache file and stays there.

A cache file always has the file's current size. Its bytes are valid except in blocks below the
inode's ``fetch_limit`` that ``cache_blocks`` does not list: those are fetched from the last
uploaded content (``data``) on first use, one ``BLOCK_SIZE`` block at a time. Writes land in the
cache file and bump the inode's generation; no write ever goes to the network (a write into a
block that is not there yet fetches that block first, like a read).

Eviction drops whole blocks of *clean* files only (they can be fetched again), least recently
used first, by punching holes; dirty data is never evicted. Durability: a write is in the page
cache and its metadata change made when the call returns (committed within ``COMMIT_DELAY``,
see ``meta``); :meth:`fsync` commits both and makes them survive a power loss.

Every method runs on the trio thread; the synchronous parts between two ``await`` are critical
sections, so after every ``await`` the state is read again before it is used.
"""

from __future__ import annotations

import errno
import logging
import os
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import trio

from safefs import osutil
from safefs.fs import run_all
from safefs.fs.dirrecord import AT_GATEWAY, Ref
from safefs.fs.meta import BLOCK_SIZE, SMALL_FILE_MAX, Inode, Metadata, NoSuchEntry, blocks_in

log = logging.getLogger(__name__)

#: Fetches ``[start, end)`` of uploaded content given (data_ref, data).
Fetch = Callable[[int, bytes, int, int], Awaitable[bytes]]


#: Open cache-file descriptors kept for reuse.
MAX_OPEN_FILES = 128
#: Blocks fetched ahead of a sequential reader.
READ_AHEAD_BLOCKS = 8
#: Concurrent block fetches.
FETCH_CONNECTIONS = 4
#: The smallest cache worth mounting with: a few blocks per concurrent reader.
MIN_CACHE_SIZE = 64 * BLOCK_SIZE
#: The LRU's stand-in block number for a clean small file's content in the database.
IN_DATABASE = -1


class FileCache:
    """Cache files of one mount.

    :limit: bytes of cache the eviction aims to stay under.
    :usage: bytes allocated by all cache files now, and held by clean small files' rows.
    :lru: cached blocks of clean files (``IN_DATABASE`` for a small file's row), least recently
        used first: what eviction may drop.
    """

    def __init__(self, meta: Metadata, directory: Path, limit: int, fetch: Fetch,
                 nursery: trio.Nursery) -> None:
        self.meta = meta
        self.directory = directory
        self.limit = limit
        self._fetch = fetch
        self._nursery = nursery
        self._fds: OrderedDict[int, int] = OrderedDict()
        self._in_flight: dict[tuple[int, int], trio.Event] = {}
        self._fetch_limiter = trio.CapacityLimiter(FETCH_CONNECTIONS)
        self._pins: Counter[tuple[int, int]] = Counter()
        self._over_limit = False
        self._new_files = False  # cache files created since the directory was last fsynced
        self._allocated: dict[int, int] = {}  # inodes that have a cache file: its bytes on disk
        self._clean_rows: dict[int, int] = {}  # clean small files in the database: their size
        self.usage = 0
        self.lru: OrderedDict[tuple[int, int], None] = OrderedDict()
        self._lru_by_inode: dict[int, set[int]] = {}
        directory.mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(directory):
            if not entry.name.isdigit() or not meta.exists(int(entry.name)):
                os.unlink(entry.path)  # left by an inode purged before a crash
            else:
                self._allocated[int(entry.name)] = entry.stat().st_blocks * 512
        self.usage = sum(self._allocated.values())
        for inode, block in meta.clean_cached_blocks():
            self._lru_add(inode, block)
        for inode, size in meta.clean_small_files():
            self._lru_add_row(inode, size)

    def close(self) -> None:
        while self._fds:
            os.close(self._fds.popitem()[1])

    def path(self, inode: int) -> Path:
        return self.directory / str(inode)

    # -- file descriptors ---------------------------------------------------------------------

    def _fd(self, inode: int) -> int:
        """The open cache file of ``inode``, created with the file's size when missing."""
        fd = self._fds.get(inode)
        if fd is not None:
            self._fds.move_to_end(inode)
            return fd
        size = self.meta.get(inode).size
        # One call whether or not the file exists (an open that fails first cost 40 us more per
        # new file): _allocated lists every cache file, so it tells which this is.
        fd = os.open(self.path(inode), os.O_RDWR | os.O_CREAT, 0o600)
        if inode not in self._allocated:
            self._new_files = True
            self._allocated[inode] = 0
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)
        self._fds[inode] = fd
        if len(self._fds) > MAX_OPEN_FILES:
            os.close(self._fds.popitem(last=False)[1])
        return fd

    def _account(self, inode: int, fd: int) -> None:
        allocated = os.fstat(fd).st_blocks * 512
        self.usage += allocated - self._allocated.get(inode, 0)
        self._allocated[inode] = allocated

    # -- small files --------------------------------------------------------------------------

    def _is_small(self, ino: Inode) -> bool:
        """Whether the file's content is in the database rather than a cache file: small, no
        cache file, and nothing to fetch from an ImmutableData upload."""
        return ino.size <= SMALL_FILE_MAX and ino.id not in self._allocated and (
            ino.data_ref not in AT_GATEWAY or ino.fetch_limit == 0)

    def _small_content(self, ino: Inode) -> bytes:
        content = self.meta.small_content(ino.id)
        if content is not None:
            return content
        inline = (ino.data or b"") if ino.data_ref == Ref.INLINE else b""
        return inline[:min(ino.fetch_limit, ino.size)].ljust(ino.size, b"\0")

    def small_content(self, inode: int) -> bytes | None:
        """The whole content of a small file kept in the database (None: it has a cache file)."""
        ino = self.meta.get(inode)
        return self._small_content(ino) if self._is_small(ino) else None

    def to_cache_file(self, inode: int) -> None:
        """Move a small file's content into a cache file of its own (it outgrew the database)."""
        ino = self.meta.get(inode)
        if not self._is_small(ino):
            return
        content = self._small_content(ino)
        self._lru_discard_inode(inode)
        fd = self._fd(inode)
        os.pwrite(fd, content, 0)
        self.meta.small_to_cache_file(inode)
        self._account(inode, fd)

    def _write_small(self, ino: Inode, offset: int, data: bytes) -> bool:
        """Write into a small file's content; False if the result would not be small."""
        end = offset + len(data)
        if max(ino.size, end) > SMALL_FILE_MAX:
            return False
        if offset == 0 and end >= ino.size:  # all of it new (a file written afresh)
            content = bytes(data)
        else:
            buffer = bytearray(self._small_content(ino))
            if offset > len(buffer):
                buffer.extend(bytes(offset - len(buffer)))
            buffer[offset:end] = data
            content = bytes(buffer)
        self._lru_discard_inode(ino.id)  # dirty from here on
        self.meta.write_small(ino.id, content)
        return True

    # -- reading ------------------------------------------------------------------------------

    async def read(self, inode: int, offset: int, length: int, read_ahead: bool = False) -> bytes:
        ino = self.meta.get(inode)
        end = min(offset + length, ino.size)
        if offset >= end:
            return b""
        if self._is_small(ino):
            return self._small_content(ino)[offset:end]
        if offset < ino.fetch_limit:  # parts may still be at the gateway only
            with self._pinned(inode, offset, end):
                await self.ensure_present(inode, offset, end)
                if read_ahead and offset % BLOCK_SIZE < length:  # once per block
                    self._read_ahead(inode, end)
                # No await since ensure_present returned: the blocks are still there.
                end = min(end, self.meta.get(inode).size)
                data = os.pread(self._fd(inode), max(end - offset, 0), offset)
            for block in range(offset // BLOCK_SIZE, blocks_in(end)):
                if (inode, block) in self.lru:
                    self.lru.move_to_end((inode, block))
            self._evict()
            return data
        return os.pread(self._fd(inode), end - offset, offset)

    async def ensure_present(self, inode: int, start: int, end: int) -> None:
        """Fetch the missing blocks that hold ``[start, end)``."""
        with self._pinned(inode, start, end):
            while missing := self._missing(inode, start, end):
                await run_all(partial(self._fetch_block, inode), missing)

    @contextmanager
    def _pinned(self, inode: int, start: int, end: int) -> Iterator[None]:
        """Keep eviction away from blocks a caller is about to use."""
        keys = [(inode, block) for block in range(start // BLOCK_SIZE, blocks_in(end))]
        self._pins.update(keys)
        try:
            yield
        finally:
            self._pins.subtract(keys)
            for key in keys:
                if self._pins[key] <= 0:
                    del self._pins[key]

    def _missing(self, inode: int, start: int, end: int) -> list[int]:
        try:
            ino = self.meta.get(inode)
        except NoSuchEntry:
            return []
        end = min(end, ino.fetch_limit)
        if start >= end or self._is_small(ino):
            return []
        first, last = start // BLOCK_SIZE, blocks_in(end)
        present = self.meta.cached_blocks(inode, first, last)
        return [block for block in range(first, last) if block not in present]

    def _read_ahead(self, inode: int, offset: int) -> None:
        first = blocks_in(offset)
        for block in self._missing(inode, first * BLOCK_SIZE,
                                   (first + READ_AHEAD_BLOCKS) * BLOCK_SIZE):
            if (inode, block) not in self._in_flight:
                self._nursery.start_soon(self._fetch_block_quietly, inode, block)

    async def _fetch_block_quietly(self, inode: int, block: int) -> None:
        """Read-ahead: a failure only means the reader fetches the block itself later."""
        try:
            await self._fetch_block(inode, block)
        except Exception as exc:  # read-ahead is a hint, never an error
            log.debug("read-ahead of inode %d block %d failed: %s", inode, block, exc)

    async def _fetch_block(self, inode: int, block: int) -> None:
        key = (inode, block)
        if (event := self._in_flight.get(key)) is not None:
            await event.wait()
            return
        self._in_flight[key] = event = trio.Event()
        try:
            ino = self.meta.get(inode)
            start = block * BLOCK_SIZE
            end = min(start + BLOCK_SIZE, ino.fetch_limit)
            if start >= end or ino.data_ref is None:
                return
            source = (ino.data_ref, ino.data)
            async with self._fetch_limiter:
                payload = await self._fetch(ino.data_ref, ino.data or b"", start, end)
            # Check again: the file may be gone, replaced, truncated or written meanwhile.
            try:
                ino = self.meta.get(inode)
            except NoSuchEntry:
                return
            if (ino.data_ref, ino.data) != source or \
                    self.meta.cached_blocks(inode, block, block + 1):
                return
            fd = self._fd(inode)
            os.pwrite(fd, payload[:max(min(end, ino.fetch_limit) - start, 0)], start)
            self.meta.add_cached_block(inode, block)
            if not ino.dirty:
                self._lru_add(inode, block)
            self._account(inode, fd)
            self._evict()
        finally:
            del self._in_flight[key]
            event.set()

    # -- writing ------------------------------------------------------------------------------

    async def write(self, inode: int, offset: int, data: bytes) -> int:
        if not data:
            return 0
        end = offset + len(data)
        ino = self.meta.get(inode)
        if self._is_small(ino):
            if self._write_small(ino, offset, data):
                return len(data)
            self.to_cache_file(inode)
            ino = self.meta.get(inode)
        while True:
            # Blocks of uploaded content that this write covers only in part: fetch them first.
            partly = [block for block in {offset // BLOCK_SIZE, (end - 1) // BLOCK_SIZE}
                      if block * BLOCK_SIZE < ino.fetch_limit
                      and not (offset <= block * BLOCK_SIZE
                               and end >= min((block + 1) * BLOCK_SIZE, ino.fetch_limit))]
            missing = [block for block in partly
                       if not self.meta.cached_blocks(inode, block, block + 1)]
            if not missing:
                break
            await run_all(partial(self._fetch_block, inode), missing)
            ino = self.meta.get(inode)
        fd = self._fd(inode)
        os.pwrite(fd, data, offset)
        # Every touched block below fetch_limit is whole now: fetched above, or overwritten.
        for block in range(offset // BLOCK_SIZE,
                           min(blocks_in(end), blocks_in(ino.fetch_limit))):
            self.meta.add_cached_block(inode, block)
        if self.meta.content_changed(inode, max(ino.size, end)):
            self._lru_discard_inode(inode)
        self._account(inode, fd)
        return len(data)

    def truncate(self, inode: int, size: int) -> None:
        """Set the size; bytes beyond a shrink become local zeros if the file grows again."""
        ino = self.meta.get(inode)
        if self._is_small(ino):
            if size <= SMALL_FILE_MAX:
                self._lru_discard_inode(inode)
                self.meta.write_small(inode, self._small_content(ino)[:size].ljust(size, b"\0"))
                return
            self.to_cache_file(inode)
            ino = self.meta.get(inode)
        fd = self._fd(inode)
        os.ftruncate(fd, size)
        if size < ino.fetch_limit:
            self.meta.drop_cached_blocks(inode, list(range(blocks_in(size),
                                                           blocks_in(ino.fetch_limit))))
        if self.meta.content_changed(inode, size):
            self._lru_discard_inode(inode)
        self._account(inode, fd)

    async def fsync(self, inode: int) -> None:
        """Make the file's content and metadata survive a power loss."""
        if not self._is_small(self.meta.get(inode)):  # else the database holds the content
            fd = os.dup(self._fd(inode))  # the shared descriptor may be closed meanwhile
            try:
                await trio.to_thread.run_sync(os.fsync, fd)
            finally:
                os.close(fd)
            if self._new_files:
                self._new_files = False
                await trio.to_thread.run_sync(_fsync_dir, self.directory)
        self.meta.commit()
        await trio.to_thread.run_sync(self.meta.make_durable)

    # -- life cycle ---------------------------------------------------------------------------

    def drop(self, inode: int) -> None:
        """Forget an inode's cache file (the inode is gone, or its content was replaced)."""
        fd = self._fds.pop(inode, None)
        if fd is not None:
            os.close(fd)
        if inode in self._allocated:
            self.path(inode).unlink(missing_ok=True)
            self.usage -= self._allocated.pop(inode)
        self._lru_discard_inode(inode)

    def replaced(self, inode: int) -> None:
        """The file's content was replaced remotely: nothing cached is valid any more."""
        self.drop(inode)

    def uploaded(self, inode: int) -> None:
        """The file is clean now: its blocks (or its row) may be evicted from here on."""
        for block in self.meta.cached_blocks(inode):
            self._lru_add(inode, block)
        ino = self.meta.get(inode)
        if ino.data_ref in AT_GATEWAY and self._is_small(ino):
            self._lru_add_row(inode, ino.size)
        self._evict()

    def open_for_upload(self, inode: int) -> int:
        """A new descriptor on the cache file (the caller closes it)."""
        self._fd(inode)  # creates the file if it is missing
        return os.open(self.path(inode), os.O_RDONLY)

    # -- eviction -----------------------------------------------------------------------------

    def _lru_add(self, inode: int, block: int) -> None:
        self.lru[(inode, block)] = None
        self.lru.move_to_end((inode, block))
        self._lru_by_inode.setdefault(inode, set()).add(block)

    def _lru_add_row(self, inode: int, size: int) -> None:
        self.usage += size - self._clean_rows.get(inode, 0)
        self._clean_rows[inode] = size
        self._lru_add(inode, IN_DATABASE)

    def _lru_discard_inode(self, inode: int) -> None:
        for block in self._lru_by_inode.pop(inode, ()):
            self.lru.pop((inode, block), None)
        self.usage -= self._clean_rows.pop(inode, 0)

    def _evict(self) -> None:
        """Drop least recently used clean blocks until the cache fits its limit again."""
        if self.usage <= self.limit:
            return
        target = self.limit * 9 // 10
        for _ in range(len(self.lru)):
            if self.usage <= target or not self.lru:
                break
            (inode, block), _ = self.lru.popitem(last=False)
            if (inode, block) in self._pins:
                self.lru[(inode, block)] = None  # in use: look at it again later
                continue
            self._lru_by_inode.get(inode, set()).discard(block)
            if block == IN_DATABASE:
                self.meta.evict_small(inode)
                self.usage -= self._clean_rows.pop(inode, 0)
                continue
            fd = self._fd(inode)
            try:
                osutil.punch_hole(fd, block * BLOCK_SIZE, BLOCK_SIZE)
            except OSError as exc:
                if exc.errno != errno.EOPNOTSUPP:
                    raise
                log.warning("cache directory %s cannot punch holes: nothing is evicted",
                            self.directory)
                self.lru.clear()
                self._lru_by_inode.clear()
                return
            self.meta.drop_cached_blocks(inode, [block])
            self._account(inode, fd)
        over = self.usage > self.limit
        if over and not self._over_limit:
            log.info("cache holds %d MiB, over its %d MiB limit, in changes not uploaded yet",
                     self.usage >> 20, self.limit >> 20)
        self._over_limit = over


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
