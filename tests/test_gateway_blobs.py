"""The ImmutableData root-chunk format and the shared decrypted-chunk cache, in process."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from safefs import selfenc
from safefs.errors import SafeError
from safefs.gateway import blobs
from safefs.gateway.blobs import ChunkCache
from safefs.model import CipherOpts
from safefs.store import MemoryStore

SETTINGS = selfenc.Settings(compression_quality=1, max_chunk_size=64 * 1024)


class CountingStore(MemoryStore):
    """A memory store that counts chunk reads."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: Counter[bytes] = Counter()

    def _get_chunk(self, name: bytes) -> bytes:
        self.reads[name] += 1
        return super()._get_chunk(name)


def test_sequential_small_reads_decrypt_each_chunk_once():
    store = CountingStore()
    data = os.urandom(1_000_000)
    name = blobs.store_bytes(store, data, CipherOpts.plain(), SETTINGS)
    cache = ChunkCache(1024 * 1024)
    readers = [blobs.Blob(store, cache, name) for _ in range(2)]
    store.reads.clear()
    step = 8 * 1024
    for offset in range(0, len(data), step):
        for reader in readers:  # two readers of one file share the cache
            assert reader.read(offset, offset + step) == data[offset:offset + step]
    assert store.reads and max(store.reads.values()) == 1


def test_whole_chunk_reads_leave_the_cache_to_small_readers():
    store = CountingStore()
    data = os.urandom(5 * SETTINGS.max_chunk_size)
    name = blobs.store_bytes(store, data, CipherOpts.plain(), SETTINGS)
    cache = ChunkCache(1024 * 1024)
    blob = blobs.Blob(store, cache, name)
    small = blob.read(10, 20)  # a small read keeps its chunk
    assert small == data[10:20] and cache.size > 0
    kept = cache.size
    assert blob.read(0, len(data)) == data
    assert cache.size == kept  # the long read added nothing


def test_cache_is_bounded():
    cache = ChunkCache(100)
    for i in range(10):
        cache.put(bytes([i]), b"x" * 30)
    assert cache.size <= 100
    assert cache.get(bytes([9])) == b"x" * 30 and cache.get(bytes([0])) is None
    cache.put(b"big", b"y" * 101)  # larger than the whole cache: not kept
    assert cache.get(b"big") is None


@pytest.fixture
def workers():
    with ThreadPoolExecutor(2) as pool:
        yield pool


def spooled(store, directory, workers, data: bytes, piece: int = 50_000) -> blobs.Spool:
    spool = blobs.Spool(directory, store, SETTINGS, workers, 2)
    for start in range(0, len(data), piece):
        spool.write(data[start:start + piece])
    return spool


@pytest.mark.parametrize("size", [0, 1, 2, 3, 100_000, 1_000_000])
def test_root_chunk_envelope(size, tmp_path, workers):
    store = MemoryStore()
    data = os.urandom(size)
    key = os.urandom(32)
    for opts, sym_key in ((CipherOpts.plain(), None), (CipherOpts.symmetric(key), key)):
        spool = spooled(store, tmp_path, workers, data)
        name = spool.seal(opts)
        spool.release()
        if sym_key is None:  # PLAIN is convergent: the same bytes get the same name
            assert name == blobs.store_bytes(store, data, opts, SETTINGS)
        blob = blobs.Blob(store, ChunkCache(1 << 20), name, sym_key)
        assert blob.size == size
        assert blob.read(0, size + 10) == data
        assert blob.read(size // 2, size // 2 + 7) == data[size // 2:size // 2 + 7]


def test_missing_and_damaged_data():
    store = MemoryStore()
    with pytest.raises(SafeError) as info:
        blobs.Blob(store, ChunkCache(1 << 20), os.urandom(32))
    assert info.value.code == -18
    # Three chunks, so no child map: every chunk but the root holds content.
    name = blobs.store_bytes(store, os.urandom(150_000), CipherOpts.plain(), SETTINGS)
    blob = blobs.Blob(store, ChunkCache(1 << 20), name)
    victim = next(n for n in store._contents.chunks if n != name)
    del store._contents.chunks[victim]
    with pytest.raises(SafeError) as info:
        blob.read(0, 150_000)
    assert info.value.code == -18


@pytest.mark.parametrize("head_in_memory", [blobs.SPOOL_HEAD_IN_MEMORY, 100_000])
def test_spool_rolls_back_and_seals_once(tmp_path, workers, monkeypatch, head_in_memory):
    """A failed append is taken back; a second close answers the first one's name. The kept
    head (three chunks) stays in memory when it is small enough, else goes to a file."""
    monkeypatch.setattr(blobs, "SPOOL_HEAD_IN_MEMORY", head_in_memory)
    store = MemoryStore()
    data = os.urandom(1_000_000)
    spool = spooled(store, tmp_path, workers, data[:700_000])
    checkpoint = spool.checkpoint()
    spool.write(os.urandom(123_456))  # an append that then fails half-way
    spool.rollback(checkpoint)
    spool.write(data[700_000:])
    name = spool.seal(CipherOpts.plain())
    assert spool.seal(CipherOpts.plain()) == name
    with pytest.raises(SafeError) as info:
        spool.write(b"more")
    assert info.value.code == -26
    head = 3 * SETTINGS.max_chunk_size
    if head <= head_in_memory:
        assert spool.path is None and not list(tmp_path.iterdir())
    else:
        assert spool.path.stat().st_size == head  # only the head was spooled
    path = spool.path
    spool.release()
    assert path is None or not path.exists()
    assert blobs.Blob(store, ChunkCache(1 << 20), name).read(0, 10**7) == data
    assert name == blobs.store_bytes(store, data, CipherOpts.plain(), SETTINGS)
