"""The store contract, on every backend, and the local store's on-disk guarantees.

Contract tests run against ``memory://`` and ``file://``. The local store's own tests cover the
layout of docs/FORMAT.md §4, damage detection, crashes mid-write (a real child process killed
inside the write), a full disk (fault injection into ``os.write``/``os.fsync``), a locked
database, and two processes racing on one store directory.
"""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safefs.store import (
    ChunkCorrupted,
    ChunkNotFound,
    InvalidStoreURL,
    LocalStore,
    RecordExists,
    RecordNotFound,
    Store,
    StoreClosed,
    StoreError,
    StoreFull,
    StoreStats,
    StoreUnavailable,
    VersionConflict,
    base,
    chunk_name,
    local,
    open_store,
    retry,
)
from tests import store_workers
from tests.store_workers import make_chunk

FORMAT_DOC = Path(__file__).parent.parent / "docs" / "FORMAT.md"
BACKENDS = ["memory", "file"]


def store_url(kind: str, directory: Path) -> str:
    return "memory://" if kind == "memory" else f"file://{directory / 'store'}"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    with open_store(store_url(request.param, tmp_path)) as opened:
        yield opened


# Chunks


def test_put_get_has(store: Store) -> None:
    name, data = make_chunk(1)
    assert not store.has_chunk(name)
    assert store.put_chunk(name, data) is True
    assert store.put_chunk(name, data) is False
    assert store.has_chunk(name)
    assert store.get_chunk(name) == data
    assert store.stats() == StoreStats(chunk_count=1, chunk_bytes=len(data), record_count=0)


def test_chunks_of_any_size(store: Store) -> None:
    for data in (b"", b"x", os.urandom(4 * 1024 * 1024 + 1)):
        name = chunk_name(data)
        assert store.put_chunk(name, memoryview(data))
        assert store.get_chunk(name) == data


def test_missing_chunk(store: Store) -> None:
    name, _ = make_chunk(2)
    with pytest.raises(ChunkNotFound) as caught:
        store.get_chunk(name)
    assert caught.value.name == name
    assert name.hex() in str(caught.value)


def test_put_checks_the_name(store: Store) -> None:
    name, data = make_chunk(3)
    with pytest.raises(ChunkCorrupted):
        store.put_chunk(name, data + b"!")
    assert not store.has_chunk(name)
    assert store.stats().chunk_count == 0


@pytest.mark.parametrize("bad_name", [b"", b"\x00" * 31, b"\x00" * 33])
def test_chunk_names_are_32_bytes(store: Store, bad_name: bytes) -> None:
    with pytest.raises(ValueError):
        store.has_chunk(bad_name)
    with pytest.raises(ValueError):
        store.get_chunk(bad_name)


# Records


def test_create_and_get(store: Store) -> None:
    store.create_record(b"key", 0, b"first")
    assert store.get_record(b"key") == (0, b"first")
    assert store.get_record(b"key", 0) == (0, b"first")
    assert store.record_versions(b"key") == [0]
    for version in (0, 5):
        with pytest.raises(RecordExists):
            store.create_record(b"key", version, b"again")
    assert store.get_record(b"key") == (0, b"first")


def test_cas_appends_versions_and_keeps_them_all(store: Store) -> None:
    store.create_record(b"key", 7, b"v7")
    assert store.cas_record(b"key", 7, b"v8") == 8
    assert store.cas_record(b"key", 8, b"v9") == 9
    assert store.get_record(b"key") == (9, b"v9")
    assert [store.get_record(b"key", v) for v in (7, 8, 9)] == [
        (7, b"v7"), (8, b"v8"), (9, b"v9")]
    assert store.record_versions(b"key") == [7, 8, 9]


def test_cas_conflict_reports_the_current_version(store: Store) -> None:
    store.create_record(b"key", 0, b"v0")
    store.cas_record(b"key", 0, b"v1")
    for stale in (0, 2):
        with pytest.raises(VersionConflict) as caught:
            store.cas_record(b"key", stale, b"lost")
        assert caught.value.current == 1
    assert store.get_record(b"key") == (1, b"v1")
    assert store.record_versions(b"key") == [0, 1]


def test_missing_records(store: Store) -> None:
    assert store.record_versions(b"nothing") == []
    with pytest.raises(RecordNotFound):
        store.get_record(b"nothing")
    with pytest.raises(RecordNotFound):
        store.cas_record(b"nothing", 0, b"v")
    store.create_record(b"key", 0, b"v0")
    with pytest.raises(RecordNotFound) as caught:
        store.get_record(b"key", 1)
    assert caught.value.version == 1


def test_keys_and_values_are_opaque_bytes(store: Store) -> None:
    keys = [b"", b"\x00", b"\x00\x00", b"\xff" * 64]
    for index, key in enumerate(keys):
        store.create_record(key, 0, bytes([index]) * index)
    assert [store.get_record(key) for key in keys] == [
        (0, bytes([index]) * index) for index in range(len(keys))]


def test_versions_out_of_range(store: Store) -> None:
    with pytest.raises(ValueError):
        store.create_record(b"key", -1, b"v")
    store.create_record(b"key", base.MAX_VERSION, b"v")
    with pytest.raises(ValueError):
        store.cas_record(b"key", base.MAX_VERSION, b"v")


def test_stats_count_keys_not_versions(store: Store) -> None:
    store.create_record(b"a", 0, b"a0")
    store.cas_record(b"a", 0, b"a1")
    store.create_record(b"b", 0, b"b0")
    assert store.stats().record_count == 2


def test_closed_store_refuses_calls(store: Store) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreClosed):
        store.get_record(b"key")
    with pytest.raises(StoreClosed):
        store.put_chunk(*make_chunk(4))


def test_threads_racing_cas_lose_no_update(store: Store) -> None:
    """Many threads increment one counter by CAS; every increment lands exactly once."""
    store.create_record(b"counter", 0, b"0")
    threads, increments = 8, 25

    def increment() -> None:
        for _ in range(increments):
            while True:
                version, value = store.get_record(b"counter")
                try:
                    store.cas_record(b"counter", version, b"%d" % (int(value) + 1))
                    break
                except VersionConflict:
                    pass

    workers = [threading.Thread(target=increment) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert store.get_record(b"counter") == (threads * increments, b"%d" % (threads * increments))


# A model of the record contract: key -> list of (version, value).
record_ops = st.lists(st.one_of(
    st.tuples(st.just("create"), st.sampled_from([b"a", b"b"]), st.integers(0, 3), st.binary()),
    st.tuples(st.just("cas"), st.sampled_from([b"a", b"b"]), st.integers(0, 6), st.binary()),
    st.tuples(st.just("get"), st.sampled_from([b"a", b"b"]), st.none() | st.integers(0, 6)),
), max_size=25)


def _apply_to_model(model: dict[bytes, list[tuple[int, bytes]]], op: tuple) -> object:
    kind, key, *rest = op
    versions = model.get(key)
    if kind == "create":
        if versions:
            return RecordExists
        model[key] = [(rest[0], rest[1])]
        return None
    if not versions:
        return RecordNotFound
    if kind == "cas":
        current = versions[-1][0]
        if current != rest[0]:
            return (VersionConflict, current)
        versions.append((current + 1, rest[1]))
        return current + 1
    found = dict(versions)
    version = versions[-1][0] if rest[0] is None else rest[0]
    return (version, found[version]) if version in found else RecordNotFound


def _apply_to_store(store: Store, op: tuple) -> object:
    kind, key, *rest = op
    try:
        return getattr(store, f"{kind}_record")(key, *rest)
    except VersionConflict as exc:
        return (VersionConflict, exc.current)
    except (RecordExists, RecordNotFound) as exc:
        return type(exc)


@pytest.mark.parametrize("kind", BACKENDS)
@settings(max_examples=40, deadline=None)
@given(ops=record_ops)
def test_records_behave_like_the_model(kind: str, ops: list[tuple]) -> None:
    model: dict[bytes, list[tuple[int, bytes]]] = {}
    with tempfile.TemporaryDirectory() as directory, \
            open_store(store_url(kind, Path(directory))) as store:
        for op in ops:
            assert _apply_to_store(store, op) == _apply_to_model(model, op), op
        for key in (b"a", b"b"):
            assert store.record_versions(key) == [v for v, _ in model.get(key, [])]


def test_errors_survive_pickling() -> None:
    """Errors cross process boundaries (process pools) with their attributes."""
    name, _ = make_chunk(5)
    for error in (VersionConflict(3), ChunkNotFound(name), ChunkCorrupted(name),
                  RecordNotFound(b"k", 2), RecordExists(b"k"), StoreFull("disk full")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)
    assert pickle.loads(pickle.dumps(VersionConflict(3))).current == 3


# open_store


@pytest.mark.parametrize("url", ["", "ftp://host/x", "file:", "/abs/dir", "file://relative/dir",
                                 "memory://a/b", "FILE:///abs"])
def test_invalid_urls(url: str) -> None:
    with pytest.raises(InvalidStoreURL):
        open_store(url)


def test_memory_names_share_one_store() -> None:
    name, data = make_chunk(6)
    first = open_store("memory://test_memory_names_share_one_store")
    second = open_store("memory://test_memory_names_share_one_store")
    first.put_chunk(name, data)
    first.close()
    assert second.get_chunk(name) == data
    assert second.url == "memory://test_memory_names_share_one_store"
    with open_store("memory://") as private:
        assert not private.has_chunk(name)
    with open_store("memory://another_name") as other:
        assert not other.has_chunk(name)


# Local store: layout, persistence, damage


def test_local_layout(tmp_path: Path) -> None:
    root = tmp_path / "store"
    name, data = make_chunk(7)
    with open_store(f"file://{root}") as store:
        assert store.url == f"file://{root}"
        store.put_chunk(name, data)
    assert (root / "format").read_text() == "safefs-store 1\n"
    assert (root / "chunks" / name.hex()[:2] / name.hex()).read_bytes() == data
    assert sorted(os.listdir(root / "chunks")) == [name.hex()[:2]]
    assert os.listdir(root / "tmp") == []
    assert set(os.listdir(root)) <= local.LAYOUT_NAMES


def test_local_store_persists(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'store'}"
    name, data = make_chunk(8)
    with open_store(url) as store:
        store.put_chunk(name, data)
        store.create_record(b"key", 0, b"v0")
        store.cas_record(b"key", 0, b"v1")
    with open_store(url) as store:
        assert store.get_chunk(name) == data
        assert store.get_record(b"key", 0) == (0, b"v0")
        assert store.get_record(b"key") == (1, b"v1")
        assert store.stats() == StoreStats(1, len(data), 1)


def test_local_store_uses_an_existing_empty_directory(tmp_path: Path) -> None:
    with open_store(f"file://{tmp_path}") as store:
        store.create_record(b"key", 0, b"v")
    assert (tmp_path / "format").exists()


def test_local_store_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a safefs store"):
        open_store(f"file://{tmp_path}")
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]


@pytest.mark.parametrize("content", ["safefs-store 2\n", "something else\n", "\xff\n"])
def test_local_store_refuses_unknown_formats(tmp_path: Path, content: str) -> None:
    open_store(f"file://{tmp_path}").close()
    (tmp_path / "format").write_text(content, encoding="latin-1")
    with pytest.raises(StoreError):
        open_store(f"file://{tmp_path}")


def test_damaged_chunk_is_detected_on_read(tmp_path: Path) -> None:
    name, data = make_chunk(9)
    with LocalStore(tmp_path) as store:
        store.put_chunk(name, data)
        store.flush()
        path = tmp_path / "chunks" / name.hex()[:2] / name.hex()
        damaged = bytearray(data)
        damaged[100] ^= 1
        path.write_bytes(damaged)
        with pytest.raises(ChunkCorrupted) as caught:
            store.get_chunk(name)
        assert caught.value.name == name


def test_truncated_chunk_is_repaired_by_the_next_put(tmp_path: Path) -> None:
    name, data = make_chunk(10)
    with LocalStore(tmp_path) as store:
        store.put_chunk(name, data)
        store.flush()
        path = tmp_path / "chunks" / name.hex()[:2] / name.hex()
        path.write_bytes(data[:10])
        with pytest.raises(ChunkCorrupted):
            store.get_chunk(name)
        assert store.put_chunk(name, data) is True
        store.flush()
        assert store.get_chunk(name) == data
        assert store.stats().chunk_count == 1


def test_filesystem_without_hard_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_links(source: str, target: str) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    name, data = make_chunk(11)
    with LocalStore(tmp_path) as store:
        assert store.put_chunk(name, data) is True
        assert store.put_chunk(name, data) is False
        assert store.get_chunk(name) == data
    assert os.listdir(tmp_path / "tmp") == []


def test_schema_is_documented() -> None:
    """docs/FORMAT.md §4 shows the schema the code creates, verbatim."""
    blocks = re.findall(r"```sql\n(.*?)```", FORMAT_DOC.read_text(), re.DOTALL)
    assert local.SCHEMA.strip() in [block.strip() for block in blocks]


# Local store: failures


def test_disk_full(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """ENOSPC while writing a chunk: StoreFull, and nothing left under any name."""
    store = LocalStore(tmp_path)
    name, data = make_chunk(12)
    real_write = os.write

    def write_then_fill_up(fd: int, chunk: bytes) -> int:
        if len(chunk) < len(data):  # what is left after a first, partial write
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, chunk[: len(chunk) // 2])

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", write_then_fill_up)
        with pytest.raises(StoreFull, match="no space left"):
            store.put_chunk(name, data)
    assert not store.has_chunk(name)
    assert not (tmp_path / "chunks" / name.hex()[:2] / name.hex()).exists()
    assert os.listdir(tmp_path / "tmp") == []
    assert store.stats().chunk_count == 0
    assert store.put_chunk(name, data) is True
    store.flush()
    assert store.get_chunk(name) == data


def test_failed_flush_publishes_nothing_and_is_retried(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """A flush that cannot sync (disk full, I/O error) links nothing under a final name and
    fails every waiting writer; the chunks stay pending and the next flush stores them."""
    store = LocalStore(tmp_path)
    name, data = make_chunk(14)
    final = tmp_path / "chunks" / name.hex()[:2] / name.hex()

    def full(*args: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    assert store.put_chunk(name, data) is True
    assert store.get_chunk(name) == data  # readable (from tmp/) before the flush
    with monkeypatch.context() as patch:
        patch.setattr(local, "_sync_files", full)
        with pytest.raises(StoreFull):
            store.flush()
        with pytest.raises(StoreFull):
            store.create_record(b"names the chunk", 0, name)  # records wait for the flush
    assert not final.exists()
    assert store.record_versions(b"names the chunk") == []
    assert store.put_chunk(name, data) is False  # still pending
    store.flush()
    assert final.read_bytes() == data and os.listdir(tmp_path / "tmp") == []
    assert store.stats().chunk_count == 1
    store.close()


def test_flushes_are_shared(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Many writers, few syncs: a flush covers every chunk put before it started."""
    store = LocalStore(tmp_path)
    syncs = []
    real_sync = local._sync_files
    monkeypatch.setattr(local, "_sync_files", lambda *args: (syncs.append(args), real_sync(*args)))
    chunks = [make_chunk(seed) for seed in range(200, 264)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda chunk: (store.put_chunk(*chunk), store.flush()), chunks))
    assert len(syncs) < 2 * len(chunks)  # two per flush, and flushes were shared
    for name, data in chunks:
        assert (tmp_path / "chunks" / name.hex()[:2] / name.hex()).read_bytes() == data
    assert store.stats().chunk_count == len(chunks)
    store.close()


def test_record_writes_share_transactions(tmp_path: Path) -> None:
    """Record writes of threads arriving together commit together; a refused compare-and-swap
    in a shared transaction fails alone."""
    store = LocalStore(tmp_path)
    store.create_record(b"shared", 0, b"v0")
    transactions = []
    real_transaction = store._transaction

    @contextmanager
    def slow_transaction() -> Iterator[sqlite3.Connection]:
        with real_transaction() as db:
            transactions.append(db)
            yield db
            time.sleep(0.02)  # the commit's fsync, longer: writers queue meanwhile

    store._transaction = slow_transaction

    def write(index: int) -> int | str:
        if index % 4 == 0:  # all expect version 0 of one record: exactly one may win
            try:
                return store.cas_record(b"shared", 0, b"%d" % index)
            except VersionConflict as exc:
                return f"conflict {exc.current}"
        store.create_record(b"key %d" % index, 0, b"%d" % index)
        return 0

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(write, range(64)))
    assert len(transactions) < 32
    cas_results = [results[index] for index in range(0, 64, 4)]
    assert cas_results.count(1) == 1 and cas_results.count("conflict 1") == 15
    winner = cas_results.index(1) * 4
    assert store.get_record(b"shared") == (1, b"%d" % winner)
    for index in range(64):
        if index % 4:
            assert store.get_record(b"key %d" % index) == (0, b"%d" % index)
    assert store.stats().record_count == 49
    store.close()


def test_failed_shared_commit_fails_every_write(tmp_path: Path) -> None:
    """When the commit of a shared transaction fails, every write in it reports the failure
    and none is stored; the next writes go through."""
    store = LocalStore(tmp_path)
    real_transaction = store._transaction

    @contextmanager
    def full_at_commit() -> Iterator[sqlite3.Connection]:
        with real_transaction() as db:
            yield db
            raise sqlite3.OperationalError("database or disk is full")

    store._transaction = full_at_commit
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(store.create_record, b"key %d" % index, 0, b"v")
                   for index in range(16)]
    for future in futures:
        with pytest.raises(StoreError, match="disk is full"):
            future.result()
    assert all(store.record_versions(b"key %d" % index) == [] for index in range(16))
    store._transaction = real_transaction
    store.create_record(b"key 0", 0, b"v")
    assert store.stats().record_count == 1
    store.close()


def test_locked_database_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A writer that holds the lock too long makes writes transient failures, not reads."""
    monkeypatch.setattr(local, "BUSY_TIMEOUT", 0.05)
    store = LocalStore(tmp_path)
    store.create_record(b"key", 0, b"v0")
    other_process = sqlite3.connect(tmp_path / local.RECORDS_DB, isolation_level=None)
    other_process.execute("BEGIN IMMEDIATE")
    with pytest.raises(StoreUnavailable):
        store.cas_record(b"key", 0, b"v1")
    assert store.get_record(b"key") == (0, b"v0")
    other_process.execute("ROLLBACK")
    other_process.close()
    assert retry(lambda: store.cas_record(b"key", 0, b"v1"), base_delay=0.01) == 1
    store.close()


@pytest.mark.parametrize("crash_in", ["write", "link"])
def test_crash_mid_write_leaves_no_chunk(tmp_path: Path, crash_in: str) -> None:
    """A process killed while writing a chunk leaves only an ignored, later removed, temp file."""
    url = f"file://{tmp_path}"
    child = multiprocessing.get_context("spawn").Process(
        target=store_workers.die_during_put, args=(url, 13, crash_in))
    child.start()
    child.join(60)
    assert child.exitcode == 3
    [leftover] = (tmp_path / "tmp").iterdir()
    name, data = make_chunk(13)
    with open_store(url) as store:
        assert not store.has_chunk(name)
        with pytest.raises(ChunkNotFound):
            store.get_chunk(name)
        assert store.stats().chunk_count == 0
        assert store.put_chunk(name, data) is True
        assert store.get_chunk(name) == data
    assert leftover.exists()  # young temp files may belong to a live writer: kept
    an_hour_ago = time.time() - local.STALE_TEMP_AGE - 60
    os.utime(leftover, (an_hour_ago, an_hour_ago))
    open_store(url).close()
    assert not leftover.exists()


# Two processes on one store directory


def _race(worker, *argument_lists: tuple) -> list:
    """Run ``worker(*arguments)`` in one spawned process per argument list, all at once."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(argument_lists))
    with ProcessPoolExecutor(len(argument_lists), mp_context=context,
                             initializer=store_workers.init_barrier,
                             initargs=(barrier,)) as pool:
        futures = [pool.submit(worker, *arguments) for arguments in argument_lists]
        return [future.result(timeout=120) for future in futures]


def test_two_processes_racing_cas(tmp_path: Path) -> None:
    """Every successful CAS gets its own version; none is lost; all stay readable."""
    url = f"file://{tmp_path}"
    with open_store(url) as store:
        store.create_record(b"key", 0, b"initial")
    results = _race(store_workers.cas_attempts, (url, b"key", 150), (url, b"key", 150))
    written = sorted(entry for result in results for entry in result)
    with open_store(url) as store:
        latest, _ = store.get_record(b"key")
        assert latest == len(written)
        assert [version for version, _ in written] == list(range(1, latest + 1))
        assert store.record_versions(b"key") == list(range(latest + 1))
        for version, value in written:
            assert store.get_record(b"key", version) == (version, value)


def test_two_processes_racing_puts(tmp_path: Path) -> None:
    """Two processes create one store and put the same and different chunks at once.

    The shared chunks go in the same order in both, so the processes collide on each one.
    """
    url = f"file://{tmp_path / 'store'}"
    shared = list(range(100))
    own = [list(range(1000, 1050)), list(range(2000, 2050))]
    first, second = _race(store_workers.put_chunks, (url, shared + own[0]),
                          (url, shared + own[1]))
    # Each process created all of its own chunks (racing puts of a shared chunk may both
    # report it as new: they learn at put time, the links happen at the flush) ...
    assert all(first[100:]) and all(second[100:])
    assert all(a or b for a, b in zip(first[:100], second[:100], strict=True))
    seeds = shared + own[0] + own[1]
    with open_store(url) as store:
        for seed in seeds:
            name, data = make_chunk(seed)
            assert store.get_chunk(name) == data
        # ... but the totals count each chunk once: the link that created it.
        assert store.stats() == StoreStats(len(seeds), sum(len(make_chunk(s)[1]) for s in seeds), 0)


# retry


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The waits retry asks for, recorded instead of slept."""
    recorded: list[float] = []
    monkeypatch.setattr(base.time, "sleep", recorded.append)
    return recorded


def _failing(*outcomes: object):
    queue = list(outcomes)

    def call() -> object:
        outcome = queue.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    return call


def test_retry_rides_out_transient_failures(sleeps: list[float]) -> None:
    call = _failing(StoreUnavailable("down"), StoreUnavailable("down"), "done")
    assert retry(call, attempts=3, base_delay=1.0) == "done"
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 1.0 and 0 <= sleeps[1] <= 2.0


def test_retry_gives_up_after_its_attempts(sleeps: list[float]) -> None:
    call = _failing(*[StoreUnavailable(f"down {n}") for n in range(4)])
    with pytest.raises(StoreUnavailable, match="down 3"):
        retry(call, attempts=4, base_delay=10.0, max_delay=0.5)
    assert len(sleeps) == 3 and max(sleeps) <= 0.5


def test_retry_does_not_retry_permanent_errors(sleeps: list[float]) -> None:
    call = _failing(RecordNotFound(b"key"), "unreached")
    with pytest.raises(RecordNotFound):
        retry(call, attempts=5)
    assert sleeps == []
