"""The write-back cache: block fetching, read-modify-write, truncation, eviction."""

from __future__ import annotations

import os
import random
import stat
from pathlib import Path

import pytest
import trio

from safefs.fs.cache import FileCache
from safefs.fs.dirrecord import Ref
from safefs.fs.meta import BLOCK_SIZE, ROOT_INODE, SMALL_FILE_MAX, Metadata

CONTENT = random.Random(1).randbytes(5 * BLOCK_SIZE + 1234)


class Source:
    """Uploaded content kept inline (the INLINE content reference), counting fetches."""

    def __init__(self) -> None:
        self.fetched: list[int] = []

    async def fetch(self, ref: int, data: bytes, start: int, end: int) -> bytes:
        assert ref == Ref.INLINE
        self.fetched.append(start // BLOCK_SIZE)
        await trio.sleep(0)
        return data[start:end]


@pytest.fixture
def meta(tmp_path: Path) -> Metadata:
    meta = Metadata(tmp_path / "meta.sqlite", (os.getuid(), os.getgid()))
    meta.init_root(b"r" * 32)
    yield meta
    meta.close()


def uploaded_file(meta: Metadata, cache: FileCache, content: bytes = CONTENT) -> int:
    """A clean file whose content is only at the source (nothing cached)."""
    ino = meta.create(ROOT_INODE, b"f", stat.S_IFREG | 0o644, 0, 0)
    meta.db.execute("UPDATE inodes SET size=? WHERE id=?", (len(content), ino.id))
    assert meta.mark_uploaded(ino.id, ino.generation, Ref.INLINE, content, len(content), 0)
    meta.drop_cached_blocks(ino.id)
    cache.drop(ino.id)
    return ino.id


async def test_reads_fetch_only_the_blocks_they_need(meta: Metadata, tmp_path: Path) -> None:
    source = Source()
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, tmp_path / "files", 1 << 30, source.fetch, nursery)
        inode = uploaded_file(meta, cache)
        offset = 2 * BLOCK_SIZE + 10
        assert await cache.read(inode, offset, 100) == CONTENT[offset:offset + 100]
        assert source.fetched == [2] and meta.cached_blocks(inode) == {2}
        assert await cache.read(inode, offset, 100) == CONTENT[offset:offset + 100]
        assert source.fetched == [2]  # served from the cache now
        tail = len(CONTENT) - 50
        assert await cache.read(inode, tail, 1000) == CONTENT[tail:]
        assert await cache.read(inode, len(CONTENT), 10) == b""


async def test_read_ahead_for_sequential_readers(meta: Metadata, tmp_path: Path) -> None:
    source = Source()
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, tmp_path / "files", 1 << 30, source.fetch, nursery)
        inode = uploaded_file(meta, cache)
        await cache.read(inode, 0, 4096, read_ahead=True)
        await trio.testing.wait_all_tasks_blocked()
        assert meta.cached_blocks(inode) == set(range(6))


async def test_writes_fetch_partial_blocks_first(meta: Metadata, tmp_path: Path) -> None:
    source = Source()
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, tmp_path / "files", 1 << 30, source.fetch, nursery)
        inode = uploaded_file(meta, cache)
        expected = bytearray(CONTENT)
        # inside block 1: read-modify-write
        await cache.write(inode, BLOCK_SIZE + 5, b"hello")
        expected[BLOCK_SIZE + 5:BLOCK_SIZE + 10] = b"hello"
        assert source.fetched == [1]
        # the whole of block 3: nothing to fetch
        whole = b"w" * BLOCK_SIZE
        await cache.write(inode, 3 * BLOCK_SIZE, whole)
        expected[3 * BLOCK_SIZE:4 * BLOCK_SIZE] = whole
        assert source.fetched == [1]
        # past the end: a sparse extension
        await cache.write(inode, len(CONTENT) + 100, b"end")
        expected += bytes(100) + b"end"
        assert meta.get(inode).dirty
        assert await cache.read(inode, 0, len(expected) + 10) == bytes(expected)


async def test_truncation_makes_cut_bytes_zeros(meta: Metadata, tmp_path: Path) -> None:
    source = Source()
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, tmp_path / "files", 1 << 30, source.fetch, nursery)
        inode = uploaded_file(meta, cache)
        cut = 2 * BLOCK_SIZE + 7
        cache.truncate(inode, cut)
        cache.truncate(inode, 4 * BLOCK_SIZE)
        data = await cache.read(inode, 0, 4 * BLOCK_SIZE)
        assert data == CONTENT[:cut] + bytes(4 * BLOCK_SIZE - cut)
        assert sorted(set(source.fetched)) == [0, 1, 2]  # nothing beyond the cut was fetched


async def test_only_clean_blocks_are_evicted(meta: Metadata, tmp_path: Path) -> None:
    source = Source()
    limit = 3 * BLOCK_SIZE
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, tmp_path / "files", limit, source.fetch, nursery)
        clean = uploaded_file(meta, cache)
        assert await cache.read(clean, 0, len(CONTENT)) == CONTENT
        assert cache.usage <= limit
        assert 0 not in meta.cached_blocks(clean)  # the least recently used went first
        # dirty data over the limit stays, all of it
        dirty = meta.create(ROOT_INODE, b"dirty", stat.S_IFREG | 0o644, 0, 0).id
        payload = random.Random(2).randbytes(5 * BLOCK_SIZE)
        await cache.write(dirty, 0, payload)
        assert await cache.read(clean, 0, len(CONTENT)) == CONTENT  # evicts clean blocks only
        assert await cache.read(dirty, 0, len(payload)) == payload
        assert cache.usage > limit
        # once uploaded, the former dirty blocks may go as well
        ino = meta.get(dirty)
        assert meta.mark_uploaded(dirty, ino.generation, Ref.INLINE, payload, len(payload), 0)
        cache.uploaded(dirty)
        assert cache.usage <= limit
        assert await cache.read(dirty, 0, len(payload)) == payload


async def test_small_files_live_in_the_database(meta: Metadata, tmp_path: Path) -> None:
    """Small files get no cache file: their content is a row, then the inline upload."""
    source = Source()
    files = tmp_path / "files"
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, files, 1 << 30, source.fetch, nursery)
        inode = meta.create(ROOT_INODE, b"small", stat.S_IFREG | 0o644, 0, 0).id
        await cache.write(inode, 0, b"hello world")
        await cache.write(inode, 20, b"!")  # a hole in between
        expected = b"hello world" + bytes(9) + b"!"
        assert await cache.read(inode, 0, 100) == expected
        cache.truncate(inode, 5)
        cache.truncate(inode, 8)
        expected = b"hello" + bytes(3)
        assert await cache.read(inode, 0, 100) == expected
        await cache.fsync(inode)
        assert meta.get(inode).size == 8 and meta.get(inode).dirty
        assert cache.small_content(inode) == expected
        ino = meta.get(inode)
        assert meta.mark_uploaded(inode, ino.generation, Ref.INLINE, expected, 8, 0,
                                  in_cache_file=False)
        cache.uploaded(inode)
        assert meta.small_content(inode) is None  # the inline copy took over
        assert await cache.read(inode, 2, 3) == b"llo"
        assert source.fetched == [] and list(files.iterdir()) == []
        # Growing past the limit moves it into a cache file, content kept.
        big = random.Random(3).randbytes(SMALL_FILE_MAX)
        await cache.write(inode, 8, big)
        assert await cache.read(inode, 0, 1 << 20) == expected + big
        assert [p.name for p in files.iterdir()] == [str(inode)]
        assert meta.small_content(inode) is None and cache.small_content(inode) is None


async def test_packed_small_files_keep_their_row_until_evicted(meta: Metadata,
                                                               tmp_path: Path) -> None:
    """A small file uploaded in a pack keeps its database row as its cached copy (no cache
    file): counted in the usage, evicted least recently used first like a block, then read
    from the gateway; a row that becomes dirty is never evicted."""
    uploaded: dict[bytes, bytes] = {}
    fetched: list[bytes] = []

    async def fetch(ref: int, data: bytes, start: int, end: int) -> bytes:
        assert ref == Ref.PACKED
        fetched.append(data)
        return uploaded[data][start:end]

    size = 10_000
    files = tmp_path / "files"
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, files, 3 * size, fetch, nursery)
        contents = {}
        for n in range(5):
            inode = meta.create(ROOT_INODE, b"f%d" % n, stat.S_IFREG | 0o644, 0, 0).id
            contents[inode] = bytes([n]) * size
            await cache.write(inode, 0, contents[inode])
            uploaded[b"pack %d" % n] = contents[inode]
            ino = meta.get(inode)
            assert meta.mark_uploaded(inode, ino.generation, Ref.PACKED, b"pack %d" % n, size,
                                      0, in_cache_file=False)
            cache.uploaded(inode)
        first, *_, last = contents
        assert cache.usage <= 3 * size and list(files.iterdir()) == []
        assert meta.small_content(first) is None  # evicted: the oldest
        assert meta.small_content(last) == contents[last]
        assert await cache.read(last, 0, size) == contents[last] and fetched == []
        assert await cache.read(first, 0, size) == contents[first]
        assert fetched == [b"pack 0"]
        # A write makes a row dirty: out of the usage, and kept whatever the pressure.
        kept = last  # the most recently used: still a row
        assert meta.small_content(kept) == contents[kept]
        usage = cache.usage
        await cache.write(kept, 0, b"changed")
        assert cache.usage == usage - size
        for n in range(5, 9):
            inode = meta.create(ROOT_INODE, b"f%d" % n, stat.S_IFREG | 0o644, 0, 0).id
            await cache.write(inode, 0, bytes(size))
            ino = meta.get(inode)
            assert meta.mark_uploaded(inode, ino.generation, Ref.PACKED, b"p", size, 0,
                                      in_cache_file=False)
            cache.uploaded(inode)
        assert meta.small_content(kept) == b"changed" + contents[kept][7:]
    meta.close()
    # After a restart the clean rows count again, and are evicted first when space is short.
    meta = Metadata(tmp_path / "meta.sqlite", (0, 0))
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, files, 3 * size, fetch, nursery)
        assert cache.usage == sum(size for inode, size in meta.clean_small_files()) > 0


async def test_small_file_content_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    meta = Metadata(path, (0, 0))
    meta.init_root(b"r" * 32)
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, tmp_path / "files", 1 << 30, Source().fetch, nursery)
        inode = meta.create(ROOT_INODE, b"small", stat.S_IFREG | 0o644, 0, 0).id
        await cache.write(inode, 0, b"kept")
    meta.close()
    meta = Metadata(path, (0, 0))
    async with trio.open_nursery() as nursery:
        cache = FileCache(meta, tmp_path / "files", 1 << 30, Source().fetch, nursery)
        assert await cache.read(inode, 0, 10) == b"kept" and meta.get(inode).dirty
    meta.close()


def test_metadata_of_schema_1_is_upgraded(tmp_path: Path) -> None:
    path = tmp_path / "meta.sqlite"
    meta = Metadata(path, (0, 0))
    meta.db.executescript("DROP TABLE small_files; UPDATE settings SET value=1 WHERE key='schema'")
    meta.close()
    meta = Metadata(path, (0, 0))
    assert meta.setting("schema") == 2 and meta.small_content(5) is None
    meta.close()
