"""``file://DIR`` store: chunks as files, records in SQLite, in one local directory.

The layout and the rules that make it safe (atomic publication, fsync order, locking) are
specified in docs/FORMAT.md §4; the short version:

- a chunk is written to ``tmp/``; at the next flush (a group commit shared by every put since
  the last one) the file system is synced, every pending chunk hard-linked to
  ``chunks/ab/abcd...``, and the file system synced again, so a crash leaves either the whole
  chunk under its name or nothing (a leftover in ``tmp/``, removed at a later open). Two syncs
  per flush instead of two per chunk: an untar of small files writes thousands of chunks;
- records live in ``records.sqlite`` (WAL, ``synchronous=FULL``); every read-compare-write runs in
  ``BEGIN IMMEDIATE``, so threads and processes sharing the directory serialise their writes;
  the writes of threads that arrive together share one transaction (one commit, one fsync).

The directory must be on a local filesystem: SQLite's WAL mode needs shared memory between the
processes that use it, which network filesystems do not provide.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safefs import osutil

from .base import (
    ChunkNotFound,
    InvalidStoreURL,
    RecordExists,
    RecordNotFound,
    Store,
    StoreError,
    StoreFull,
    StoreStats,
    StoreUnavailable,
    VersionConflict,
)

log = logging.getLogger(__name__)

SCHEME = "file"

FORMAT_MAGIC = "safefs-store"
FORMAT_VERSION = 1
FORMAT_FILE = "format"
CHUNKS_DIR = "chunks"
TEMP_DIR = "tmp"
RECORDS_DB = "records.sqlite"
#: Chunks from this size on start their writeback when written (see _write_new).
WRITEBACK_MIN = 1024 * 1024
#: Chunks from this size on are written with direct I/O (see _write_new).
DIRECT_MIN = 64 * 1024
#: New chunks counted in memory before the totals row is updated (one transaction per batch).
TOTALS_BATCH = 64
# Every name a store directory may hold (SQLite keeps its -wal/-shm/-journal beside the database).
# A directory holding anything else and no format file is not ours: refuse to write into it.
LAYOUT_NAMES = frozenset({FORMAT_FILE, CHUNKS_DIR, TEMP_DIR, RECORDS_DB, f"{RECORDS_DB}-wal",
                          f"{RECORDS_DB}-shm", f"{RECORDS_DB}-journal"})

# A temp file untouched for this long belongs to a writer that died; writing one chunk takes
# well under a second, so an hour leaves a wide margin for slow disks and stopped processes.
STALE_TEMP_AGE = 3600.0
# How long a writer waits for another thread or process to release the database write lock
# before the call fails with StoreUnavailable. Write transactions last milliseconds.
BUSY_TIMEOUT = 30.0

# The record database. Executed on every open, so every statement must be idempotent.
SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    key     BLOB    NOT NULL,  -- the record's address: opaque bytes chosen by the caller
    version INTEGER NOT NULL,  -- 0 .. 2^63-1; the versions of one key are consecutive
    value   BLOB    NOT NULL,  -- the value exactly as given (signed/encrypted by the caller)
    PRIMARY KEY (key, version)
);
CREATE TABLE IF NOT EXISTS totals (
    id           INTEGER PRIMARY KEY CHECK (id = 0),  -- the table has exactly one row
    chunk_count  INTEGER NOT NULL,  -- chunk files this store has created
    chunk_bytes  INTEGER NOT NULL,  -- their total size in bytes
    record_count INTEGER NOT NULL   -- distinct keys in records
);
INSERT OR IGNORE INTO totals VALUES (0, 0, 0, 0);
"""


def create_schema(db: sqlite3.Connection) -> None:
    """Create the record database's tables if they are missing (the one canonical schema)."""
    db.executescript(SCHEMA)


class LocalStore(Store):
    def __init__(self, root: Path) -> None:
        """Open the store in ``root`` (absolute); a missing or empty directory becomes one."""
        if not root.is_absolute():
            raise InvalidStoreURL(f"a local store needs an absolute path, not {str(root)!r}")
        self.root = root
        self.url = f"{SCHEME}://{root}"
        self._chunks_dir = str(root / CHUNKS_DIR)
        self._temp_dir = str(root / TEMP_DIR)
        self._db_path = str(root / RECORDS_DB)
        # Idle connections; a call takes one for its duration, so none is used by two threads.
        self._idle: list[sqlite3.Connection] = []
        self._pool_lock = threading.Lock()
        # New chunks not yet added to the totals row: counted in memory and written in batches,
        # because a durable transaction per chunk cost as much as writing the chunk itself.
        self._unsaved_chunks = 0
        self._unsaved_bytes = 0
        self._totals_lock = threading.Lock()
        # Chunks written to tmp/ but not linked under their names yet: final path -> temp path.
        self._pending: dict[str, str] = {}
        self._pending_lock = threading.Lock()
        self._fanout_dirs: set[str] = set()  # chunks/xx directories known to exist
        # Group commits: one flush for every put before it, one transaction for the record
        # writes of threads arriving together (one WAL fsync for all of them).
        self._flushes = Batches(lambda batch: self._publish_pending())
        self._record_writes = Batches(self._write_records)
        try:
            self._open_layout()
        except BaseException as exc:
            self._close()
            if isinstance(exc, OSError):
                raise _os_error(exc, f"opening store {root}") from exc
            raise
        log.info("opened local store %s", root)

    @classmethod
    def from_url(cls, url: str) -> LocalStore:
        """``file://`` followed by an absolute path, taken literally (no percent-decoding)."""
        prefix = f"{SCHEME}://"
        path = url[len(prefix):] if url.startswith(prefix) else ""
        if not os.path.isabs(path):
            raise InvalidStoreURL(
                f"{url!r}: a local store URL is file:// and an absolute path, e.g. file:///srv/store")
        return cls(Path(path))

    # Layout

    def _open_layout(self) -> None:
        """Check the directory layout, or create it; the format file is written last.

        Opening holds an exclusive ``flock`` on the directory, so processes opening a new store
        at the same moment create it once (SQLite's switch to WAL mode does not wait for a busy
        database, it fails). A store with a format file is complete: opening it writes nothing.
        """
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        with _directory_lock(self.root):
            version = self._read_format()
            if version is None:
                foreign = sorted(set(os.listdir(self.root)) - LAYOUT_NAMES)
                if foreign:
                    raise StoreError(f"{self.root} is not a safefs store and not empty "
                                     f"(it holds {', '.join(foreign[:3])}...)")
                self._create_layout()
            elif version != FORMAT_VERSION:
                raise StoreError(f"{self.root} has store format {version}; this safefs reads "
                                 f"format {FORMAT_VERSION}")
            self._remove_stale_temp_files()

    def _create_layout(self) -> None:
        """Create whatever is missing of a new store (a crash may have left part of it)."""
        for directory in (self._chunks_dir, self._temp_dir):
            os.makedirs(directory, mode=0o700, exist_ok=True)
        with self._db() as db:
            (mode,) = db.execute("PRAGMA journal_mode = WAL").fetchone()  # persistent
            if mode != "wal":
                raise StoreError(f"{self._db_path}: SQLite refused WAL mode ({mode})")
            create_schema(db)
        self._write_format()

    def _read_format(self) -> int | None:
        try:
            text = (self.root / FORMAT_FILE).read_text(encoding="ascii")
        except FileNotFoundError:
            return None
        except ValueError:  # not ASCII
            text = ""
        magic, _, version = text.strip().partition(" ")
        if magic != FORMAT_MAGIC or not version.isdigit():
            raise StoreError(f"{self.root / FORMAT_FILE} is not a safefs store format file")
        return int(version)

    def _write_format(self) -> None:
        temp = self._temp_path(FORMAT_FILE)
        try:
            _write_new(temp, f"{FORMAT_MAGIC} {FORMAT_VERSION}\n".encode(), synced=True)
            os.replace(temp, self.root / FORMAT_FILE)
            _fsync_dir(str(self.root))
        finally:
            _remove_quietly(temp)

    def _remove_stale_temp_files(self) -> None:
        cutoff = time.time() - STALE_TEMP_AGE
        removed = 0
        with os.scandir(self._temp_dir) as entries:
            for entry in entries:
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                        removed += 1
                except FileNotFoundError:
                    pass  # another process opening the store removed it first
        if removed:
            log.info("removed %d stale temp files from %s", removed, self._temp_dir)

    def _temp_path(self, final_name: str) -> str:
        # pid and randomness: unique across the threads and processes sharing the store.
        return os.path.join(self._temp_dir,
                            f"{final_name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")

    # Chunks

    def _chunk_path(self, name: bytes) -> str:
        hex_name = name.hex()
        return os.path.join(self._chunks_dir, hex_name[:2], hex_name)

    def _put_chunk(self, name: bytes, data: bytes) -> bool:
        path = self._chunk_path(name)
        try:
            if path in self._pending:
                return False
            size = _file_size(path)
            if size == len(data):
                return False
            if size is not None:
                # Only damage makes a file of the wrong size (the bytes were checked on the way
                # in): the flush replaces it.
                log.warning("replacing damaged chunk %s (%d bytes on disk, %d expected)",
                            name.hex(), size, len(data))
            temp = self._temp_path(os.path.basename(path))
            _write_new(temp, data)
        except OSError as exc:
            raise _os_error(exc, f"writing chunk {name.hex()}") from exc
        with self._pending_lock:
            if path in self._pending:  # another thread wrote it meanwhile
                _remove_quietly(temp)
                return False
            self._pending[path] = temp
        return True

    def _get_pending(self, name: bytes) -> str | None:
        """The temp file of a chunk put but not flushed yet."""
        return self._pending.get(self._chunk_path(name))

    def _flush(self) -> None:
        self._flushes.run()

    def _publish_pending(self) -> None:
        """Sync, link every pending chunk under its name, sync again (the group commit)."""
        with self._pending_lock:
            batch = list(self._pending.items())
        if not batch:
            return
        try:
            _sync_files(self._temp_dir, [temp for _, temp in batch])
            directories = set()
            for path, temp in batch:
                directories.add(self._ensure_fanout_dir(os.path.dirname(path)))
                if _file_size(path) is not None:  # damaged (see _put_chunk)
                    os.replace(temp, path)
                elif _link_new(temp, path):
                    self._count_new_chunk(os.stat(path).st_size)
            _sync_files(self._chunks_dir, [], sorted(directories))
        except OSError as exc:
            raise _os_error(exc, "storing chunks") from exc
        with self._pending_lock:
            for path, temp in batch:
                if self._pending.get(path) == temp:
                    del self._pending[path]
        for _, temp in batch:
            _remove_quietly(temp)

    def _ensure_fanout_dir(self, directory: str) -> str:
        """Create a fan-out directory if missing; returns it (its entries change)."""
        if directory not in self._fanout_dirs:
            try:
                os.mkdir(directory, 0o700)
            except FileExistsError:
                pass
            self._fanout_dirs.add(directory)  # (they are never removed)
        return directory

    def _count_new_chunk(self, size: int) -> None:
        with self._totals_lock:
            self._unsaved_chunks += 1
            self._unsaved_bytes += size
            due = self._unsaved_chunks >= TOTALS_BATCH
        if due:
            self._save_totals()

    def _save_totals(self) -> None:
        """Add the chunks counted in memory to the totals row (deltas, so processes add up)."""
        with self._totals_lock:
            chunks, size = self._unsaved_chunks, self._unsaved_bytes
            self._unsaved_chunks = self._unsaved_bytes = 0
        if not chunks:
            return
        try:
            with self._transaction() as db:
                db.execute("UPDATE totals SET chunk_count = chunk_count + ?, "
                           "chunk_bytes = chunk_bytes + ?", (chunks, size))
        except StoreError as exc:
            # The chunks themselves are durably stored; totals are statistics and must not fail.
            log.warning("chunk totals not updated: %s", exc)

    def _get_chunk(self, name: bytes) -> bytes:
        path = self._chunk_path(name)
        try:
            try:
                return _read(path)
            except FileNotFoundError:
                temp = self._get_pending(name)
                if temp is None:
                    raise
            try:
                return _read(temp)
            except FileNotFoundError:  # linked meanwhile, and its temp file removed
                return _read(path)
        except FileNotFoundError:
            raise ChunkNotFound(name) from None
        except OSError as exc:
            raise _os_error(exc, f"reading chunk {name.hex()}") from exc

    def _has_chunk(self, name: bytes) -> bool:
        try:
            return self._get_pending(name) is not None or \
                _file_size(self._chunk_path(name)) is not None
        except OSError as exc:
            raise _os_error(exc, f"looking up chunk {name.hex()}") from exc

    # Records

    def _create_record(self, key: bytes, version: int, value: bytes) -> None:
        def write(db: sqlite3.Connection) -> None:
            if _latest_version(db, key) is not None:
                raise RecordExists(key)
            db.execute("INSERT INTO records (key, version, value) VALUES (?, ?, ?)",
                       (key, version, value))
            db.execute("UPDATE totals SET record_count = record_count + 1")

        self._record_writes.run(write)

    def _cas_record(self, key: bytes, expected_version: int, value: bytes) -> int:
        def write(db: sqlite3.Connection) -> int:
            current = _latest_version(db, key)
            if current is None:
                raise RecordNotFound(key)
            if current != expected_version:
                raise VersionConflict(current)
            db.execute("INSERT INTO records (key, version, value) VALUES (?, ?, ?)",
                       (key, current + 1, value))
            return current + 1

        return self._record_writes.run(write)

    def _write_records(self, batch: list[Job]) -> None:
        """One transaction for a batch of record writes. Each write checks before it changes
        anything (a refused compare-and-swap raises before its INSERT), so it fails alone; a
        failing statement or commit fails the whole batch."""
        with self._transaction() as db:
            for job in batch:
                assert job.call is not None
                try:
                    job.result = job.call(db)
                except (RecordExists, RecordNotFound, VersionConflict) as exc:
                    job.error = exc

    def _get_record(self, key: bytes, version: int | None) -> tuple[int, bytes]:
        with self._db() as db:
            if version is None:
                row = db.execute("SELECT version, value FROM records WHERE key = ? "
                                 "ORDER BY version DESC LIMIT 1", (key,)).fetchone()
            else:
                row = db.execute("SELECT version, value FROM records "
                                 "WHERE key = ? AND version = ?", (key, version)).fetchone()
        if row is None:
            raise RecordNotFound(key, version)
        return row[0], row[1]

    def _record_versions(self, key: bytes) -> list[int]:
        with self._db() as db:
            rows = db.execute("SELECT version FROM records WHERE key = ? ORDER BY version",
                              (key,)).fetchall()
        return [version for (version,) in rows]

    def _stats(self) -> StoreStats:
        self._flush()  # chunks are counted when they are linked
        self._save_totals()
        with self._db() as db:
            chunk_count, chunk_bytes, record_count = db.execute(
                "SELECT chunk_count, chunk_bytes, record_count FROM totals").fetchone()
        return StoreStats(chunk_count, chunk_bytes, record_count)

    # Database connections

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: no implicit transactions; writes say BEGIN IMMEDIATE themselves.
        db = sqlite3.connect(self._db_path, timeout=BUSY_TIMEOUT, isolation_level=None,
                             check_same_thread=False)
        try:
            # FULL: a commit is on disk before cas_record returns, so a version the gateway has
            # acknowledged survives a power cut (NORMAL in WAL mode may lose the last commits).
            db.execute("PRAGMA synchronous = FULL")
        except BaseException:
            db.close()
            raise
        return db

    @contextmanager
    def _db(self) -> Iterator[sqlite3.Connection]:
        """A connection for one call; SQLite errors become store errors."""
        with self._pool_lock:
            db = self._idle.pop() if self._idle else None
        try:
            if db is None:
                db = self._connect()
            yield db
        except sqlite3.Error as exc:
            if db is not None:
                db.close()  # its state is unknown after a failure, and a new one is cheap
            raise _sqlite_error(exc, self._db_path) from exc
        except BaseException:
            self._release(db)
            raise
        self._release(db)

    def _release(self, db: sqlite3.Connection | None) -> None:
        if db is None:
            return
        with self._pool_lock:
            if not self._closed:
                self._idle.append(db)
                return
        db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database write lock from its first statement.

        ``BEGIN IMMEDIATE`` takes the lock before the read of a compare-and-swap, so no other
        thread or process can commit between the compare and the write.
        """
        with self._db() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise

    def _close(self) -> None:
        try:
            self._flush()
        except StoreError as exc:
            log.warning("chunks not stored at close: %s", exc)
        self._save_totals()
        with self._pool_lock:
            idle, self._idle = self._idle, []
        for db in idle:
            db.close()


@contextmanager
def _directory_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on a directory (released when the descriptor closes)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _latest_version(db: sqlite3.Connection, key: bytes) -> int | None:
    (version,) = db.execute("SELECT MAX(version) FROM records WHERE key = ?", (key,)).fetchone()
    return version


def _file_size(path: str) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None


class Batches:
    """Work that threads arriving together share (a group commit): the first thread that finds
    none running takes every job queued so far and runs ``work`` on the whole batch while the
    others wait. ``work`` sets each job's result or error; if it raises, every job of the batch
    fails with that error. A job queued during a batch goes with the next one, so the work it
    waits for always starts after it was queued."""

    def __init__(self, work: Callable[[list[Job]], None]) -> None:
        self._work = work
        self._condition = threading.Condition()
        self._queue: list[Job] = []
        self._running = False

    def run(self, call: Callable[[Any], Any] | None = None) -> Any:
        """Queue a job (``call``, given what ``work`` passes it) and return its result."""
        job = Job(call)
        with self._condition:
            self._queue.append(job)
            while not job.done:
                if self._running:
                    self._condition.wait()
                    continue
                self._running = True
                batch, self._queue = self._queue, []
                self._condition.release()
                try:
                    self._run_batch(batch)
                finally:
                    self._condition.acquire()
                    self._running = False
                    self._condition.notify_all()
        if job.error is not None:
            raise job.error
        return job.result

    def _run_batch(self, batch: list[Job]) -> None:
        try:
            self._work(batch)
        except BaseException as exc:
            for job in batch:
                job.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for job in batch:
                job.done = True


@dataclass(slots=True)
class Job:
    call: Callable[[Any], Any] | None
    result: Any = None
    error: BaseException | None = None
    done: bool = False


def _sync_files(directory: str, files: list[str], directories: list[str] = ()) -> None:
    """Make ``files`` and ``directories`` durable: one ``syncfs`` of the file system that holds
    ``directory`` where the system has it, else an fsync of each."""
    if osutil.HAVE_SYNCFS:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            osutil.syncfs(fd)
        finally:
            os.close(fd)
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for path in directories:
        _fsync_dir(path)


def _read(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


def _write_new(path: str, data: bytes, synced: bool = False) -> None:
    """Create ``path`` (which must not exist) holding ``data``; flushed to disk if ``synced``."""
    fd, direct = osutil.open_new(path, direct=len(data) >= DIRECT_MIN)
    try:
        if direct:
            osutil.write_direct(fd, data)
        else:
            osutil.write_all(fd, data)
        if synced:
            os.fsync(fd)
        elif not direct and len(data) >= WRITEBACK_MIN:
            # Start writing it out now, so that the next flush finds little left to write (a
            # large upload would otherwise leave it all to the flush at its close). Small
            # chunks (directory records, packs' tails) are left to the flush: a call each
            # cost as much as writing them.
            osutil.start_writeback(fd)
    except BaseException:
        _remove_quietly(path)
        raise
    finally:
        os.close(fd)


def _link_new(temp: str, path: str) -> bool:
    """Give ``temp`` the name ``path`` unless it exists; False if it did."""
    try:
        os.link(temp, path)
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP):
            raise
        # A filesystem without hard links (FAT, some shares): rename is still atomic, but it
        # cannot tell racing writers apart, so both may report a new chunk.
        os.replace(temp, path)
    return True


def _fsync_dir(path: str) -> None:
    """Make the directory's entries (a rename, a link, a new subdirectory) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _os_error(exc: OSError, doing: str) -> StoreError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return StoreFull(f"{doing}: no space left on the store's disk ({exc.strerror})")
    return StoreError(f"{doing}: {exc}")


def _sqlite_error(exc: sqlite3.Error, db_path: str) -> StoreError:
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF  # primary code of an extended one
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreUnavailable(f"{db_path} is busy: {exc}")
    if code == sqlite3.SQLITE_FULL:
        return StoreFull(f"{db_path}: no space left on the store's disk")
    return StoreError(f"{db_path}: {exc}")
