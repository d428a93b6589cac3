"""The local metadata of a mount: one SQLite database, the source of truth for the namespace.

Every FUSE request is answered from here and from the cache files; the network only ever sees
what the sync task derives from this state. The database is in WAL mode with
``synchronous=NORMAL``: a committed change survives ``kill -9`` of the daemon (the WAL is written
before the call returns) and :meth:`Database.make_durable` makes it survive a power loss, which is
what ``fsync`` asks for. It is therefore also the cache's journal.

Commits may be grouped: with :attr:`Metadata.on_uncommitted` set (the mount sets it), changes
join one open transaction, each in a savepoint of its own (atomic as before), and the mount
commits it ``COMMIT_DELAY`` later; a commit per change cost five times the change itself.
:meth:`Metadata.commit` commits at once: ``fsync``, renames and stopping do. A ``kill -9`` may
thus take back up to ``COMMIT_DELAY`` of changes that were neither fsynced nor renamed.

Every method here is synchronous and runs on the trio thread. A method contains no ``await``,
so it is a critical section with respect to the other request tasks; methods that change several
rows do so in one transaction, so a crash leaves all of the change or none of it.
"""

from __future__ import annotations

import enum
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from operator import attrgetter
from pathlib import Path
from typing import TypeVar

from safefs.fs.dirrecord import AT_GATEWAY, Attrs, DirRecord, Entry, Kind, Ref, XAttrs
from safefs.fs.merge import Local

log = logging.getLogger(__name__)
T = TypeVar("T")

ROOT_INODE = 1
#: Inode number of the control file; never stored in ``inodes``.
CTRL_INODE = 2
SCHEMA_VERSION = 2
#: Seconds a grouped change waits for its commit (see the module docstring).
COMMIT_DELAY = 0.05
#: Files up to this size keep their local content in ``small_files`` rather than in a cache file
#: of their own: creating and deleting a file per small file is most of an untar's or an
#: ``rm -rf``'s cost (a cache file's creation took 0.3-0.6 ms on the daemon's thread), and with
#: the kernel's writeback cache such a file arrives in one or two writes, so its row is written
#: once or twice. 64 KiB leaves 184 of the 2,434 files of a Python source tree a cache file
#: (16 KiB left 638; untar + settle took 6 % less time and daemon CPU, averaged over 4 runs).
SMALL_FILE_MAX = 64 * 1024
#: Inode rows (a few hundred bytes each) and names kept in memory: those a burst of requests
#: works on.
CACHED_ROWS = 4096


class DirState(enum.IntEnum):
    NEW = 0  # made here; its record does not exist yet
    UNLOADED = 1  # known from its parent's record; entries not fetched yet
    LOADED = 2  # entries are in ``dirents``; the record at ``dir_version`` is its merge base


def create_tables(db: sqlite3.Connection) -> None:
    """The canonical schema, created in one transaction. Invariants are stated per column."""
    db.executescript(f"""
    BEGIN;
    CREATE TABLE inodes (
        -- the FUSE inode number: {ROOT_INODE} is the root, {CTRL_INODE} is reserved
        -- for the control file, AUTOINCREMENT so that numbers are never reused
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        mode          INTEGER NOT NULL,  -- st_mode, file type bits included
        uid           INTEGER NOT NULL,  -- owner; local only, records carry no owners
        gid           INTEGER NOT NULL,
        size          INTEGER NOT NULL DEFAULT 0,  -- files: current size; symlinks: len(target)
        atime_ns      INTEGER NOT NULL,  -- local only; set by utimens, never by reads
        mtime_ns      INTEGER NOT NULL,
        ctime_ns      INTEGER NOT NULL,
        target        BLOB,              -- symlinks: the target
        conflict      INTEGER NOT NULL DEFAULT 0,  -- 1: a merge made this the conflict copy
                                                   -- of a concurrent edit; cleared on change
        -- file content
        generation    INTEGER NOT NULL DEFAULT 0,  -- bumped by every change of the content
        synced_gen    INTEGER NOT NULL DEFAULT 0,  -- generation last uploaded:
                                                   -- the file is dirty iff generation != synced_gen
        data_ref      INTEGER,  -- dirrecord.Ref of the last upload; NULL: nothing uploaded yet
                                -- (the entry is not publishable)
        data          BLOB,     -- that upload: the content itself (Ref.INLINE), the serialised
                                -- DataIdentifier of the ImmutableData (Ref.DATA_ID), or the
                                -- offset in a pack and the pack's (Ref.PACKED; dirrecord.py)
        data_size     INTEGER,  -- its size
        data_mtime_ns INTEGER,  -- the file's mtime when that content was snapshotted
        fetch_limit   INTEGER NOT NULL DEFAULT 0,  -- cache blocks below this offset that are not
                                -- in cache_blocks are read from `data`; truncation lowers it;
                                -- everything at or above it is in the cache file (or a hole)
        -- directories
        dir_name      BLOB,     -- 32-byte name of the directory's tag-501 record
        dir_state     INTEGER,  -- DirState
        dir_version   INTEGER,  -- version of the record last read or published (the base);
                                -- NULL unless LOADED
        dir_gen       INTEGER NOT NULL DEFAULT 0,  -- bumped by every change its record must show
        dir_pub_gen   INTEGER NOT NULL DEFAULT 0   -- dir_gen of the last published record:
                                                   -- a publish is pending iff they differ
    );
    CREATE INDEX inodes_dirty ON inodes(id) WHERE generation != synced_gen;
    CREATE INDEX inodes_pending ON inodes(id) WHERE dir_gen != dir_pub_gen;

    CREATE TABLE dirents (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,  -- readdir offset: stable and never reused;
                                                    -- a rename keeps it
        parent  INTEGER NOT NULL,
        name    BLOB NOT NULL,
        inode   INTEGER NOT NULL UNIQUE,  -- one name per inode (no hard links); an inode with no
                                          -- row here (but the root) is an orphan: unlinked while
                                          -- the kernel still knew it, purged once forgotten
        UNIQUE (parent, name)
    );

    CREATE TABLE xattrs (
        inode   INTEGER NOT NULL,
        name    BLOB NOT NULL,  -- always user.*, never user.safe.* (virtual)
        value   BLOB NOT NULL,
        PRIMARY KEY (inode, name)
    ) WITHOUT ROWID;

    CREATE TABLE dir_bases (
        inode   INTEGER PRIMARY KEY,  -- a LOADED directory
        record  BLOB NOT NULL         -- its record at dir_version, encoded: the base of merges
    );

    CREATE TABLE cache_blocks (
        inode   INTEGER NOT NULL,
        block   INTEGER NOT NULL,  -- a block below fetch_limit whose bytes are in the cache file
        PRIMARY KEY (inode, block)
    ) WITHOUT ROWID;

    CREATE TABLE small_files (
        -- the whole content of a small file that has no cache file and local changes;
        -- a file has a row here, or a cache file, or neither (then its content is its inline
        -- `data` below `fetch_limit` and zeros above), never both
        inode   INTEGER PRIMARY KEY,
        content BLOB NOT NULL  -- exactly `size` bytes
    );

    CREATE TABLE moved_out (
        -- a published entry moved to another directory whose record does not show it yet;
        -- until then the source keeps publishing its old entry, so a crash leaves a
        -- duplicate, never a loss
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        src     INTEGER NOT NULL,  -- directory the entry left
        name    BLOB NOT NULL,     -- its name there
        dst     INTEGER NOT NULL,  -- directory it is in now
        inode   INTEGER NOT NULL
    );
    CREATE INDEX moved_out_src ON moved_out(src);

    CREATE TABLE settings (
        key     TEXT PRIMARY KEY,  -- 'schema', 'root_name', 'mounted' (1 while mounted:
        value   BLOB               -- still 1 at start means the last stop was not clean)
    );
    INSERT INTO settings (key, value) VALUES ('schema', {SCHEMA_VERSION});
    COMMIT;
    """)


def upgrade_tables(db: sqlite3.Connection, schema: object) -> None:
    """Bring a database of an earlier schema up to date (one transaction)."""
    if schema == 1:
        db.executescript("""
        BEGIN;
        CREATE TABLE small_files (inode INTEGER PRIMARY KEY, content BLOB NOT NULL);
        UPDATE settings SET value = 2 WHERE key = 'schema';
        COMMIT;
        """)


@dataclass(slots=True)
class Inode:
    """One row of ``inodes`` (see :func:`create_tables` for the meaning of each field)."""

    id: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    target: bytes | None
    conflict: int
    generation: int
    synced_gen: int
    data_ref: int | None
    data: bytes | None
    data_size: int | None
    data_mtime_ns: int | None
    fetch_limit: int
    dir_name: bytes | None
    dir_state: int | None
    dir_version: int | None
    dir_gen: int
    dir_pub_gen: int

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def dirty(self) -> bool:
        return self.generation != self.synced_gen


_INODE_COLUMNS = ", ".join(f.name for f in fields(Inode))
_inode_values = attrgetter(*(f.name for f in fields(Inode)))
_INODE_COLUMNS_OF_INODES = ", ".join(f"inodes.{f.name}" for f in fields(Inode))


class NoSuchEntry(LookupError):
    pass


class Metadata:
    """The namespace and the sync bookkeeping of one mount.

    :on_change: called (no arguments) when a file becomes dirty or a directory pending:
        something new for the sync task.
    :file_changes: monotonic time of the latest change of each dirty file, and
    :dir_changes: of each pending directory: the sync task's work list and idle clocks (what
        was left from before this process started reads as changed at time 0). Entries may
        outlive their reason (see :meth:`needs_sync`); the sync task drops those.
    """

    def __init__(self, path: Path, owner: tuple[int, int]) -> None:
        self.path = path
        self.owner = owner
        self.on_change: Callable[[], None] = lambda: None
        #: Set: group commits, and call this when a transaction opens (someone must commit
        #: it). None: every change commits at once.
        self.on_uncommitted: Callable[[], None] | None = None
        #: Rows read since they last changed, which ``get`` answers from: an untar asks for
        #: the same few rows about fifteen times per file. Every statement that changes a row
        #: drops it (or puts the new row), a rollback drops them all.
        self._rows: dict[int, Inode] = {}
        #: (parent, name) of inodes (None: the root, an orphan), kept the same way: the sync
        #: task asks for a file's name about four times per upload.
        self._names: dict[int, tuple[int, bytes] | None] = {}
        #: Directories whose ``dir_gen`` was bumped since their record was last built
        #: (:meth:`build_record`): their record is pending either way, so bumping again before
        #: the next build would change nothing that matters and is skipped (three statements
        #: fewer per file of an untar, one per upload). Building a record forgets its
        #: directory, a rollback all of them.
        self._bumped_dirs: set[int] = set()
        new = not path.exists()
        self.db = sqlite3.connect(path, isolation_level=None)
        self._open = True
        # Only this daemon opens the database (the mount holds its cache directory's lock), so
        # it keeps SQLite's file locks for good: otherwise every statement takes and drops a
        # read lock, two fcntl calls, 690,000 of them in one untar of 2,434 files. Set before
        # WAL mode, so that the WAL index lives in this process's memory, not a -shm file.
        self.db.execute("PRAGMA locking_mode=EXCLUSIVE")
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if new:
            create_tables(self.db)
        else:
            upgrade_tables(self.db, self.setting("schema"))
        if self.setting("schema") != SCHEMA_VERSION:
            raise RuntimeError(f"{path}: unknown metadata schema {self.setting('schema')!r}")
        self.file_changes = {ino.id: 0.0 for ino in self.dirty_files()}
        self.dir_changes = {ino.id: 0.0 for ino in self.pending_dirs()}

    def close(self) -> None:
        """Commit what is grouped and close (idempotent)."""
        if self._open:
            self._open = False
            self.commit()
            self.db.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One change, all of it or nothing; committed now, or grouped (``on_uncommitted``)."""
        if self.on_uncommitted is None:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self.db.execute("ROLLBACK")
                self._forget_cached()
                raise
            self._commit()
            return
        if not self.db.in_transaction:
            self.db.execute("BEGIN IMMEDIATE")
            self.on_uncommitted()
        self.db.execute("SAVEPOINT change")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO change")
            self.db.execute("RELEASE change")
            self._forget_cached()
            raise
        self.db.execute("RELEASE change")

    def commit(self) -> None:
        """Commit grouped changes now (they survive ``kill -9`` from here on)."""
        if self.db.in_transaction:
            self._commit()

    def _commit(self) -> None:
        try:
            self.db.execute("COMMIT")
        except BaseException:
            self._forget_cached()  # (a failed commit may have rolled back)
            raise

    def _forget_cached(self) -> None:
        """After a rollback: what is in memory may be what was undone."""
        self._rows.clear()
        self._names.clear()
        self._bumped_dirs.clear()

    def make_durable(self) -> None:
        """Make every committed change survive a power loss (:meth:`commit` first, on the trio
        thread). Blocking: call it in a thread.

        With ``synchronous=NORMAL`` a commit is in the WAL but not fsynced; SQLite syncs the
        WAL before it checkpoints and the database after, so syncing both files is enough.
        """
        for suffix in ("-wal", ""):
            try:
                fd = os.open(str(self.path) + suffix, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # -- settings ---------------------------------------------------------------------------

    def setting(self, key: str) -> object:
        row = self.db.execute("SELECT value FROM settings WHERE key=?", (key,)).fetchone()
        return None if row is None else row[0]

    def set_setting(self, key: str, value: object) -> None:
        self.db.execute("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)", (key, value))

    # -- reading ----------------------------------------------------------------------------

    def get(self, inode: int) -> Inode:
        """The inode's row: a snapshot, shared with other callers (never change it)."""
        ino = self._rows.get(inode)
        if ino is None:
            row = self.db.execute(f"SELECT {_INODE_COLUMNS} FROM inodes WHERE id=?",
                                  (inode,)).fetchone()
            if row is None:
                raise NoSuchEntry(inode)
            ino = self._cache_row(Inode(*row))
        return ino

    def _cache_row(self, ino: Inode) -> Inode:
        _remember(self._rows, ino.id, ino)
        return ino

    def exists(self, inode: int) -> bool:
        return inode in self._rows or \
            self.db.execute("SELECT 1 FROM inodes WHERE id=?", (inode,)).fetchone() is not None

    def lookup(self, parent: int, name: bytes) -> int | None:
        row = self.db.execute("SELECT inode FROM dirents WHERE parent=? AND name=?",
                              (parent, name)).fetchone()
        return None if row is None else row[0]

    def name_of(self, inode: int) -> tuple[int, bytes] | None:
        """(parent, name) of an inode, None for the root and for orphans."""
        try:
            return self._names[inode]
        except KeyError:
            row = self.db.execute("SELECT parent, name FROM dirents WHERE inode=?",
                                  (inode,)).fetchone()
            return _remember(self._names, inode, None if row is None else (row[0], row[1]))

    def children(self, parent: int, after: int = 0) -> Iterator[tuple[int, bytes, int]]:
        """(offset, name, inode) of the entries of a directory, in stable offset order."""
        yield from self.db.execute(
            "SELECT id, name, inode FROM dirents WHERE parent=? AND id>? ORDER BY id",
            (parent, after))

    def has_children(self, parent: int) -> bool:
        return self.db.execute("SELECT 1 FROM dirents WHERE parent=? LIMIT 1",
                               (parent,)).fetchone() is not None

    def xattrs(self, inode: int) -> XAttrs:
        return tuple(self.db.execute(
            "SELECT name, value FROM xattrs WHERE inode=? ORDER BY name", (inode,)))

    def xattr(self, inode: int, name: bytes) -> bytes | None:
        row = self.db.execute("SELECT value FROM xattrs WHERE inode=? AND name=?",
                              (inode, name)).fetchone()
        return None if row is None else row[0]

    def count_inodes(self) -> int:
        return self.db.execute("SELECT count(*) FROM inodes").fetchone()[0]

    # -- namespace --------------------------------------------------------------------------

    def init_root(self, root_name: bytes) -> None:
        """Create the root inode on first use (its record is fetched or created by sync)."""
        if self.exists(ROOT_INODE):
            return
        now = time.time_ns()
        with self.transaction():
            self.db.execute(
                "INSERT INTO inodes (id, mode, uid, gid, atime_ns, mtime_ns, ctime_ns, dir_name,"
                " dir_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (ROOT_INODE, stat.S_IFDIR | 0o755, *self.owner, now, now, now, root_name,
                 DirState.UNLOADED))
            # Later inodes are numbered after the reserved control-file inode.
            self.db.execute("UPDATE sqlite_sequence SET seq=? WHERE name='inodes'", (CTRL_INODE,))
            self.set_setting("root_name", root_name)

    def create(self, parent: int, name: bytes, mode: int, uid: int, gid: int,
               target: bytes | None = None) -> Inode:
        """Make a new file, directory or symlink (by ``mode``) under ``parent``."""
        now = time.time_ns()
        is_dir = stat.S_ISDIR(mode)
        with self.transaction():
            ino = Inode(*self.db.execute(
                "INSERT INTO inodes (mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, target,"
                " generation, dir_name, dir_state, dir_gen) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
                f" RETURNING {_INODE_COLUMNS}",
                (mode, uid, gid, len(target or b""), now, now, now, target,
                 int(stat.S_ISREG(mode)), os.urandom(32) if is_dir else None,
                 DirState.NEW if is_dir else None, int(is_dir))).fetchone())
            self.db.execute("INSERT INTO dirents (parent, name, inode) VALUES (?, ?, ?)",
                            (parent, name, ino.id))
            _remember(self._names, ino.id, (parent, name))
            self._touch_dir(parent, now)
        if stat.S_ISREG(mode):
            self._note_change(self.file_changes, ino.id)
        elif is_dir:
            self._note_change(self.dir_changes, ino.id)
        return self._cache_row(ino)

    def remove(self, parent: int, name: bytes) -> int:
        """Remove a name; returns its inode, now an orphan to purge once unreferenced."""
        inode = self.lookup(parent, name)
        if inode is None:
            raise NoSuchEntry(name)
        with self.transaction():
            self._del_dirent(parent, name, inode)
            self._touch_dir(parent, time.time_ns())
        return inode

    def rename(self, parent_old: int, name_old: bytes, parent_new: int,
               name_new: bytes) -> int | None:
        """Move an entry, replacing ``name_new``; returns the replaced inode (an orphan) if any.

        Within one directory it is one record change. Across directories the source keeps
        publishing the old entry (``moved_out``) until the destination's record shows the new
        one, so the remote side never loses it.
        """
        inode = self.lookup(parent_old, name_old)
        if inode is None:
            raise NoSuchEntry(name_old)
        replaced = self.lookup(parent_new, name_new)
        now = time.time_ns()
        with self.transaction():
            if replaced is not None:
                self._del_dirent(parent_new, name_new, replaced)
            self.db.execute("UPDATE dirents SET parent=?, name=? WHERE inode=?",
                            (parent_new, name_new, inode))
            self._names.pop(inode, None)
            self._touch_dir(parent_old, now)
            self._touch_dir(parent_new, now)
            self._set_ctime(inode, now)
            if parent_old != parent_new:
                self.db.execute("UPDATE moved_out SET dst=? WHERE inode=?", (parent_new, inode))
                self.db.execute(
                    "INSERT INTO moved_out (src, name, dst, inode) VALUES (?, ?, ?, ?)",
                    (parent_old, name_old, parent_new, inode))
                self.db.execute("DELETE FROM moved_out WHERE inode=? AND src=dst", (inode,))
        return replaced

    def purge(self, inode: int) -> None:
        """Forget an orphan for good (its cache file is the caller's)."""
        with self.transaction():
            for table in ("xattrs", "cache_blocks", "dir_bases", "small_files"):
                self.db.execute(f"DELETE FROM {table} WHERE inode=?", (inode,))
            self.db.execute("DELETE FROM inodes WHERE id=?", (inode,))
            self._rows.pop(inode, None)
        self.file_changes.pop(inode, None)
        self.dir_changes.pop(inode, None)

    def detach_children(self, directory: int) -> list[int]:
        """Remove the names inside a removed directory; returns their inodes (orphans now)."""
        children = [child for _, _, child in self.children(directory)]
        self.db.execute("DELETE FROM dirents WHERE parent=?", (directory,))
        for child in children:
            self._names.pop(child, None)
        return children

    def orphans(self) -> list[int]:
        return [row[0] for row in self.db.execute(
            "SELECT id FROM inodes WHERE id != ? AND id NOT IN (SELECT inode FROM dirents)",
            (ROOT_INODE,))]

    def _del_dirent(self, parent: int, name: bytes, inode: int) -> None:
        self.db.execute("DELETE FROM dirents WHERE parent=? AND name=?", (parent, name))
        self._names.pop(inode, None)
        self._set_ctime(inode, time.time_ns())
        # The entry is gone for good: sources that kept showing it may drop it now.
        for (src,) in self.db.execute("SELECT src FROM moved_out WHERE inode=?",
                                      (inode,)).fetchall():
            self._bump_dir(src)
        self.db.execute("DELETE FROM moved_out WHERE inode=?", (inode,))

    def _touch_dir(self, parent: int, now: int) -> None:
        """A directory's entries changed: new mtime (its parent's entry shows it), new record."""
        self._bump_dir(parent, times=now)
        self._entry_changed(parent)

    def _set_ctime(self, inode: int, now: int) -> None:
        self.db.execute("UPDATE inodes SET ctime_ns=? WHERE id=?", (now, inode))
        self._rows.pop(inode, None)

    # -- attributes -------------------------------------------------------------------------

    def set_attrs(self, inode: int, *, mode: int | None = None, uid: int | None = None,
                  gid: int | None = None, atime_ns: int | None = None,
                  mtime_ns: int | None = None) -> Inode:
        """chmod, chown and utimens; ctime becomes now. The entry's record must show it.
        Returns the new row (no second read: this runs four times per file of an untar)."""
        changes = {"mode": mode, "uid": uid, "gid": gid, "atime_ns": atime_ns,
                   "mtime_ns": mtime_ns, "ctime_ns": time.time_ns()}
        changes = {key: value for key, value in changes.items() if value is not None}
        ino = self.get(inode)
        with self.transaction():
            self.db.execute(
                "UPDATE inodes SET " + ", ".join(f"{key}=?" for key in changes) + " WHERE id=?",
                (*changes.values(), inode))
            self._rows.pop(inode, None)
            self._entry_changed(inode)
        new = Inode(*_inode_values(ino))  # (dataclasses.replace: four times as long)
        for key, value in changes.items():
            setattr(new, key, value)
        return self._cache_row(new)

    def set_xattr(self, inode: int, name: bytes, value: bytes) -> None:
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO xattrs (inode, name, value) VALUES (?, ?, ?)",
                            (inode, name, value))
            self._set_ctime(inode, time.time_ns())
            self._entry_changed(inode)

    def remove_xattr(self, inode: int, name: bytes) -> bool:
        with self.transaction():
            removed = self.db.execute("DELETE FROM xattrs WHERE inode=? AND name=?",
                                      (inode, name)).rowcount > 0
            if removed:
                self._set_ctime(inode, time.time_ns())
                self._entry_changed(inode)
        return removed

    def content_changed(self, inode: int, size: int) -> bool:
        """A write or truncation changed a file; returns True if the file was clean before.

        Bytes at or beyond a truncation point are local from now on (``fetch_limit``).
        """
        now = time.time_ns()
        ino = self._cache_row(Inode(*self.db.execute(
            "UPDATE inodes SET size=?, mtime_ns=?, ctime_ns=?, generation=generation+1,"
            " fetch_limit=min(fetch_limit, ?), conflict=0 WHERE id=?"
            f" RETURNING {_INODE_COLUMNS}", (size, now, now, size, inode)).fetchone()))
        self._note_change(self.file_changes, inode)
        return ino.generation - 1 == ino.synced_gen

    def _entry_changed(self, inode: int) -> None:
        """The entry of ``inode`` changed: its parent's record (the root's own) must show it."""
        if inode == ROOT_INODE:
            self._bump_dir(ROOT_INODE)
        elif (where := self.name_of(inode)) is not None:
            self._bump_dir(where[0])

    def _bump_dir(self, directory: int, times: int | None = None) -> None:
        """The directory's record must change (and with ``times``, its mtime and ctime): one
        statement for both."""
        bump = directory not in self._bumped_dirs
        if times is not None:
            self.db.execute(
                "UPDATE inodes SET mtime_ns=?, ctime_ns=?, dir_gen=dir_gen+? WHERE id=?",
                (times, times, int(bump), directory))
        elif bump:
            self.db.execute("UPDATE inodes SET dir_gen=dir_gen+1 WHERE id=?", (directory,))
        if bump or times is not None:
            self._rows.pop(directory, None)
            self._bumped_dirs.add(directory)
        self._note_change(self.dir_changes, directory)

    def _note_change(self, changes: dict[int, float], inode: int) -> None:
        new = inode not in changes
        changes[inode] = time.monotonic()
        if new:
            self.on_change()

    # -- sync bookkeeping -------------------------------------------------------------------

    def needs_sync(self, inode: int) -> bool:
        """Whether an inode in the tree has content to upload or a record to publish."""
        try:
            ino = self.get(inode)
        except NoSuchEntry:
            return False
        if inode != ROOT_INODE and self.name_of(inode) is None:
            return False  # an orphan: nothing of it is published any more
        return ino.generation != ino.synced_gen or \
            (ino.dir_gen != ino.dir_pub_gen and ino.dir_state != DirState.UNLOADED)

    def dirty_files(self) -> list[Inode]:
        """Files with content to upload (orphans need none)."""
        return [Inode(*row) for row in self.db.execute(
            f"SELECT {_INODE_COLUMNS} FROM inodes WHERE generation != synced_gen"
            " AND id IN (SELECT inode FROM dirents)")]

    def pending_counts(self) -> tuple[int, int, int]:
        """(dirty files, their bytes, pending directory records), counted in SQL: status is
        polled while thousands of files wait."""
        files, size = self.db.execute(
            "SELECT count(*), coalesce(sum(size), 0) FROM inodes WHERE generation != synced_gen"
            " AND id IN (SELECT inode FROM dirents)").fetchone()
        (dirs,) = self.db.execute(
            "SELECT count(*) FROM inodes WHERE dir_gen != dir_pub_gen"
            " AND (id = ? OR id IN (SELECT inode FROM dirents))", (ROOT_INODE,)).fetchone()
        return files, size, dirs

    def pending_dirs(self) -> list[Inode]:
        """Directories whose record must be published, deepest first (children before parents:
        a parent's record may only name child records that exist)."""
        pending = [Inode(*row) for row in self.db.execute(
            f"SELECT {_INODE_COLUMNS} FROM inodes WHERE dir_gen != dir_pub_gen"
            " AND (id = ? OR id IN (SELECT inode FROM dirents))", (ROOT_INODE,))]
        return sorted(pending, key=lambda ino: -self.depth(ino.id))

    def depth(self, inode: int) -> int:
        depth = 0
        while (where := self.name_of(inode)) is not None:
            inode = where[0]
            depth += 1
        return depth

    def path_of(self, inode: int) -> bytes:
        """Path from the mount's root (for logs, status and conflicts)."""
        parts = []
        while (where := self.name_of(inode)) is not None:
            inode, name = where
            parts.append(name)
        return b"/" + b"/".join(reversed(parts))

    def mark_uploaded(self, inode: int, generation: int, ref: Ref, data: bytes, size: int,
                      mtime_ns: int, in_cache_file: bool = True) -> bool:
        """Record a finished upload of the content at ``generation``; False if the file changed
        meanwhile (it stays dirty and is uploaded again later).

        The uploaded content is cached: in the cache file, or else (a small file) in its
        ``small_files`` row, or for one uploaded inline as the inline ``data`` itself, which
        takes over from the row."""
        kept_row = not in_cache_file and ref != Ref.INLINE
        with self.transaction():
            row = self.db.execute(
                "UPDATE inodes SET synced_gen=?, data_ref=?, data=?, data_size=?,"
                " data_mtime_ns=?, fetch_limit=? WHERE id=? AND generation=?"
                f" RETURNING {_INODE_COLUMNS}",
                (generation, ref, data, size, mtime_ns, 0 if kept_row else size, inode,
                 generation)).fetchone()
            updated = row is not None
            if updated:
                self._cache_row(Inode(*row))
                self.db.execute("DELETE FROM cache_blocks WHERE inode=?", (inode,))
                if in_cache_file:
                    self.db.executemany(
                        "INSERT INTO cache_blocks (inode, block) VALUES (?, ?)",
                        ((inode, block) for block in range(blocks_in(size))))
                elif not kept_row:
                    self.db.execute("DELETE FROM small_files WHERE inode=?", (inode,))
                self._entry_changed(inode)
        if updated:
            self.file_changes.pop(inode, None)
        return bool(updated)

    def inline_bytes(self, directory: int, besides: int) -> int:
        """Content the directory's record carries inline, not counting inode ``besides``."""
        return self.db.execute(
            "SELECT coalesce(sum(data_size), 0) FROM inodes JOIN dirents ON inode = inodes.id"
            " WHERE parent=? AND data_ref=? AND inode != ?",
            (directory, Ref.INLINE, besides)).fetchone()[0]

    def base_encoded(self, directory: int) -> bytes | None:
        row = self.db.execute("SELECT record FROM dir_bases WHERE inode=?",
                              (directory,)).fetchone()
        return None if row is None else row[0]

    def base_record(self, directory: int) -> DirRecord:
        encoded = self.base_encoded(directory)
        return DirRecord() if encoded is None else DirRecord.decode(encoded)

    def loaded_dirs(self) -> list[tuple[int, bytes, int]]:
        """(inode, record name, version) of every LOADED directory in the tree."""
        return list(self.db.execute(
            "SELECT id, dir_name, dir_version FROM inodes WHERE dir_state=?"
            " AND (id=? OR id IN (SELECT inode FROM dirents)) ORDER BY id",
            (DirState.LOADED, ROOT_INODE)))

    def count_conflicts(self) -> int:
        return self.db.execute("SELECT count(*) FROM inodes WHERE conflict=1").fetchone()[0]

    def local_state(self, directory: int, name: bytes) -> Local | None:
        """A name as the merge sees it here (None: no such name)."""
        inode = self.lookup(directory, name)
        if inode is None:
            return None
        ino = self.get(inode)
        entry = self.published_entry(ino)
        changed = entry is None or ino.dirty or (
            ino.is_dir and self.subtree_has_local_changes(inode))
        return Local(entry, changed)

    def mark_new(self, directory: int) -> None:
        """The directory's record does not exist: create it at the next publish."""
        with self.transaction():
            self.db.execute("UPDATE inodes SET dir_state=? WHERE id=?", (DirState.NEW, directory))
            self._rows.pop(directory, None)
            self._bump_dir(directory)

    def merge_root_attrs(self, base: Attrs, remote: Attrs) -> None:
        """Take the root's attributes from the remote record unless they changed here too."""
        root = self.get(ROOT_INODE)
        local = Attrs(stat.S_IMODE(root.mode), root.mtime_ns, root.ctime_ns,
                      self.xattrs(ROOT_INODE))
        if remote != base and local == base:
            with self.transaction():
                self._apply_attrs(ROOT_INODE, remote)

    def published_entry(self, ino: Inode, xattrs: XAttrs | None = None) -> Entry | None:
        """What a record shows for this inode now; None while it has nothing to show (a new
        file not uploaded yet, a new directory whose record is not created yet)."""
        perm = stat.S_IMODE(ino.mode)
        if xattrs is None and not ino.is_symlink:
            xattrs = self.xattrs(ino.id)
        if ino.is_file:
            if ino.data_ref is None:
                return None
            assert ino.data is not None and ino.data_size is not None
            mtime_ns = ino.data_mtime_ns if ino.dirty else ino.mtime_ns
            return Entry(Kind.FILE, perm, mtime_ns or 0, ino.ctime_ns, ino.data_size, ino.data,
                         Ref(ino.data_ref), xattrs or ())
        if ino.is_dir:
            if ino.dir_state == DirState.NEW:
                return None
            assert ino.dir_name is not None
            return Entry(Kind.DIR, perm, ino.mtime_ns, ino.ctime_ns, 0, ino.dir_name,
                         Ref.INLINE, xattrs or ())
        assert ino.target is not None
        return Entry.symlink(ino.target, ino.mtime_ns, ino.ctime_ns)

    def build_record(self, directory: int) -> tuple[DirRecord, int, int]:
        """The record to publish for a directory now, the last ``moved_out`` id it covers and
        the ``dir_gen`` it shows (for :meth:`mark_published`).

        A name whose new state cannot be shown yet keeps its previous (base) entry, and entries
        moved to a directory that has not published them yet stay, so every version of the
        record names data that exists.
        """
        generation = self.get(directory).dir_gen
        self._bumped_dirs.discard(directory)  # a change from here on must make it pending again
        base = self.base_record(directory).entries
        xattrs: dict[int, list[tuple[bytes, bytes]]] = {}
        for inode, name, value in self.db.execute(
                "SELECT xattrs.inode, xattrs.name, value FROM xattrs JOIN dirents"
                " ON dirents.inode = xattrs.inode WHERE parent=? ORDER BY xattrs.name",
                (directory,)):
            xattrs.setdefault(inode, []).append((name, value))
        entries: dict[bytes, Entry] = {}
        for name, *columns in self.db.execute(
                f"SELECT dirents.name, {_INODE_COLUMNS_OF_INODES} FROM dirents JOIN inodes"
                " ON inodes.id = dirents.inode WHERE parent=?", (directory,)).fetchall():
            ino = Inode(*columns)
            entry = self.published_entry(ino, tuple(xattrs.get(ino.id, ())))
            if entry is None:
                entry = base.get(name)
            if entry is not None:
                entries[name] = entry
        for (name,) in self.db.execute("SELECT name FROM moved_out WHERE src=?", (directory,)):
            if name not in entries and name in base:
                entries[name] = base[name]
        row = self.db.execute("SELECT max(id) FROM moved_out").fetchone()
        attrs = Attrs()
        if directory == ROOT_INODE:
            root = self.get(ROOT_INODE)
            attrs = Attrs(stat.S_IMODE(root.mode), root.mtime_ns, root.ctime_ns,
                          self.xattrs(ROOT_INODE))
        return DirRecord(attrs, entries), row[0] or 0, generation

    def mark_published(self, directory: int, dir_gen: int, version: int, record: bytes,
                       moved_upto: int) -> None:
        """Record that ``record`` (built at ``dir_gen``) is now version ``version``."""
        with self.transaction():
            was_new = self.get(directory).dir_state == DirState.NEW
            self._set_base(directory, version, record)
            self.db.execute("UPDATE inodes SET dir_pub_gen=? WHERE id=?", (dir_gen, directory))
            self._rows.pop(directory, None)
            # Sources that kept showing entries moved here may now drop them.
            for (src,) in self.db.execute(
                    "SELECT DISTINCT src FROM moved_out WHERE dst=? AND id<=?",
                    (directory, moved_upto)).fetchall():
                self._bump_dir(src)
            self.db.execute("DELETE FROM moved_out WHERE dst=? AND id<=?",
                            (directory, moved_upto))
            if was_new:  # the parent may name it now
                self._entry_changed(directory)
        if self.get(directory).dir_gen == dir_gen:
            self.dir_changes.pop(directory, None)

    def _set_base(self, directory: int, version: int, record: bytes) -> None:
        self.db.execute("INSERT OR REPLACE INTO dir_bases (inode, record) VALUES (?, ?)",
                        (directory, record))
        self.db.execute("UPDATE inodes SET dir_state=?, dir_version=? WHERE id=?",
                        (DirState.LOADED, version, directory))
        self._rows.pop(directory, None)

    # -- applying remote state --------------------------------------------------------------

    def load_dir(self, directory: int, version: int, record: DirRecord, encoded: bytes) -> None:
        """Fill an UNLOADED directory from its record (nothing local to merge with)."""
        with self.transaction():
            for name, entry in record.entries.items():
                self._add_from_entry(directory, name, entry)
            if directory == ROOT_INODE:
                self._apply_attrs(ROOT_INODE, record.attrs)
            self._set_base(directory, version, encoded)

    def apply_entry(self, directory: int, name: bytes, entry: Entry | None) -> list[int]:
        """Make a local name show a remote entry (None: remove it).

        Returns the inodes whose content or existence changed (to drop from the caches and the
        kernel); removed inodes are orphans now. Changes the local state only: the caller
        decides whether the directory's record must change too.
        """
        changed: list[int] = []
        current = self.lookup(directory, name)
        with self.transaction():
            if current is not None:
                ino = self.get(current)
                if entry is not None and _same_object(ino, entry):
                    self._update_from_entry(ino, entry)
                    self._bump_dir(directory)
                    return [current]
                self._del_dirent(directory, name, current)
                changed.append(current)
            if entry is not None:
                self._add_from_entry(directory, name, entry)
            self._bump_dir(directory)
        return changed

    def add_entry(self, directory: int, name: bytes, entry: Entry, *, conflict: bool) -> int:
        """Add a remote entry under a new local name (conflict copies)."""
        with self.transaction():
            inode = self._add_from_entry(directory, name, entry)
            self.db.execute("UPDATE inodes SET conflict=? WHERE id=?", (int(conflict), inode))
            self._rows.pop(inode, None)
            self._bump_dir(directory)
        return inode

    def set_base(self, directory: int, version: int, encoded: bytes) -> None:
        with self.transaction():
            self._set_base(directory, version, encoded)

    def mark_dir_pending(self, directory: int) -> None:
        self._bump_dir(directory)

    def subtree_has_local_changes(self, inode: int) -> bool:
        """Whether anything at or below ``inode`` exists only here (dirty files, directories
        with a pending record): such a subtree must not be removed by a remote deletion."""
        stack = [inode]
        while stack:
            ino = self.get(stack.pop())
            if ino.dirty or ino.dir_gen != ino.dir_pub_gen:
                return True
            if ino.is_dir:
                stack.extend(child for _, _, child in self.children(ino.id))
        return False

    def _add_from_entry(self, directory: int, name: bytes, entry: Entry) -> int:
        uid, gid = self.owner
        kind_bits = {Kind.FILE: stat.S_IFREG, Kind.DIR: stat.S_IFDIR, Kind.SYMLINK: stat.S_IFLNK}
        mode = kind_bits[entry.kind] | entry.mode
        if entry.kind == Kind.FILE:
            inode = self.db.execute(
                "INSERT INTO inodes (mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns,"
                " data_ref, data, data_size, data_mtime_ns, fetch_limit)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (mode, uid, gid, entry.size, entry.mtime_ns, entry.mtime_ns, entry.ctime_ns,
                 entry.ref, entry.data, entry.size, entry.mtime_ns, entry.size)).lastrowid
        elif entry.kind == Kind.DIR:
            inode = self.db.execute(
                "INSERT INTO inodes (mode, uid, gid, atime_ns, mtime_ns, ctime_ns, dir_name,"
                " dir_state) VALUES (?,?,?,?,?,?,?,?)",
                (mode, uid, gid, entry.mtime_ns, entry.mtime_ns, entry.ctime_ns, entry.data,
                 DirState.UNLOADED)).lastrowid
        else:
            inode = self.db.execute(
                "INSERT INTO inodes (mode, uid, gid, size, atime_ns, mtime_ns, ctime_ns, target)"
                " VALUES (?,?,?,?,?,?,?,?)",
                (mode, uid, gid, entry.size, entry.mtime_ns, entry.mtime_ns, entry.ctime_ns,
                 entry.data)).lastrowid
        assert inode is not None
        self.db.executemany("INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?)",
                            ((inode, key, value) for key, value in entry.xattrs))
        self.db.execute("INSERT INTO dirents (parent, name, inode) VALUES (?, ?, ?)",
                        (directory, name, inode))
        self._names.pop(inode, None)
        return inode

    def _update_from_entry(self, ino: Inode, entry: Entry) -> None:
        """Same object (file, or the same child record): take the remote attributes."""
        self._rows.pop(ino.id, None)
        self.db.execute(
            "UPDATE inodes SET mode=?, mtime_ns=?, ctime_ns=? WHERE id=?",
            (stat.S_IFMT(ino.mode) | entry.mode, entry.mtime_ns, entry.ctime_ns, ino.id))
        if entry.kind == Kind.FILE:
            self.db.execute(
                "UPDATE inodes SET size=?, data_ref=?, data=?, data_size=?, data_mtime_ns=?,"
                " fetch_limit=?, generation=generation+1, synced_gen=generation+1 WHERE id=?",
                (entry.size, entry.ref, entry.data, entry.size, entry.mtime_ns, entry.size,
                 ino.id))
            self.db.execute("DELETE FROM cache_blocks WHERE inode=?", (ino.id,))
            self.db.execute("DELETE FROM small_files WHERE inode=?", (ino.id,))
        self.db.execute("DELETE FROM xattrs WHERE inode=?", (ino.id,))
        self.db.executemany("INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?)",
                            ((ino.id, key, value) for key, value in entry.xattrs))

    def _apply_attrs(self, directory: int, attrs: Attrs) -> None:
        self._rows.pop(directory, None)
        self.db.execute("UPDATE inodes SET mode=?, mtime_ns=?, ctime_ns=? WHERE id=?",
                        (stat.S_IFDIR | attrs.mode, attrs.mtime_ns, attrs.ctime_ns, directory))
        self.db.execute("DELETE FROM xattrs WHERE inode=?", (directory,))
        self.db.executemany("INSERT INTO xattrs (inode, name, value) VALUES (?, ?, ?)",
                            ((directory, key, value) for key, value in attrs.xattrs))

    # -- small files ------------------------------------------------------------------------

    def small_content(self, inode: int) -> bytes | None:
        row = self.db.execute("SELECT content FROM small_files WHERE inode=?",
                              (inode,)).fetchone()
        return None if row is None else row[0]

    def write_small(self, inode: int, content: bytes) -> None:
        """The new content of a small file (a write or a truncation), in one transaction."""
        with self.transaction():
            self.db.execute("INSERT OR REPLACE INTO small_files (inode, content) VALUES (?, ?)",
                            (inode, content))
            self.content_changed(inode, len(content))

    def clean_small_files(self) -> Iterator[tuple[int, int]]:
        """(inode, size) of every clean small file whose content is a row here and also at the
        gateway as ImmutableData: what eviction may drop."""
        yield from self.db.execute(
            "SELECT inode, length(content) FROM small_files JOIN inodes ON id = inode"
            " WHERE generation = synced_gen AND data_ref IN (?, ?)", AT_GATEWAY)

    def evict_small(self, inode: int) -> bool:
        """Drop a clean small file's row: its content is fetched from the gateway when used
        (False, and nothing dropped, if the file is dirty or has no uploaded content)."""
        with self.transaction():
            evicted = self.db.execute(
                "UPDATE inodes SET fetch_limit=size WHERE id=? AND generation=synced_gen"
                " AND data_ref IN (?, ?)", (inode, *AT_GATEWAY)).rowcount
            if evicted:
                self._rows.pop(inode, None)
                self.db.execute("DELETE FROM small_files WHERE inode=?", (inode,))
        return bool(evicted)

    def small_to_cache_file(self, inode: int) -> None:
        """The file's whole content is in its cache file now: the row and the inline source go."""
        with self.transaction():
            self.db.execute("DELETE FROM small_files WHERE inode=?", (inode,))
            self.db.execute("DELETE FROM cache_blocks WHERE inode=?", (inode,))
            self.db.execute("UPDATE inodes SET fetch_limit=0 WHERE id=?", (inode,))
            self._rows.pop(inode, None)

    # -- cache blocks -----------------------------------------------------------------------

    def cached_blocks(self, inode: int, first: int = 0, end: int | None = None) -> set[int]:
        """The cached blocks of a file listed in ``cache_blocks``, within [first, end)."""
        return {row[0] for row in self.db.execute(
            "SELECT block FROM cache_blocks WHERE inode=? AND block>=? AND block<?",
            (inode, first, (1 << 62) if end is None else end))}

    def add_cached_block(self, inode: int, block: int) -> None:
        self.db.execute("INSERT OR IGNORE INTO cache_blocks (inode, block) VALUES (?, ?)",
                        (inode, block))

    def drop_cached_blocks(self, inode: int, blocks: list[int] | None = None) -> None:
        if blocks is None:
            self.db.execute("DELETE FROM cache_blocks WHERE inode=?", (inode,))
        else:
            self.db.executemany("DELETE FROM cache_blocks WHERE inode=? AND block=?",
                                ((inode, block) for block in blocks))

    def forget_clean_cached_blocks(self) -> list[int]:
        """Stop trusting the cached blocks of clean files (fetched again when used); returns
        those files, whose cache files the caller drops."""
        rows = self.db.execute(
            "DELETE FROM cache_blocks WHERE inode IN"
            " (SELECT id FROM inodes WHERE generation = synced_gen) RETURNING inode").fetchall()
        return sorted({row[0] for row in rows})

    def clean_cached_blocks(self) -> Iterator[tuple[int, int]]:
        """(inode, block) of every cached block of a clean file: what eviction may drop."""
        yield from self.db.execute(
            "SELECT cache_blocks.inode, block FROM cache_blocks JOIN inodes"
            " ON inodes.id = cache_blocks.inode WHERE generation = synced_gen")


#: Size of a cache block: the unit of fetching, presence tracking and eviction.
BLOCK_SIZE = 1 << 20


def _remember(memory: dict[int, T], key: int, value: T) -> T:
    """Keep ``value`` under ``key`` in a bounded memory (up to ``CACHED_ROWS`` entries, the
    oldest dropped first)."""
    if len(memory) >= CACHED_ROWS and key not in memory:
        del memory[next(iter(memory))]
    memory[key] = value
    return value


def blocks_in(size: int) -> int:
    return -(-size // BLOCK_SIZE)


def _same_object(ino: Inode, entry: Entry) -> bool:
    """Whether a remote entry is a new state of this local inode rather than a replacement."""
    if entry.kind == Kind.FILE:
        return ino.is_file
    if entry.kind == Kind.DIR:
        return ino.is_dir and ino.dir_name == entry.data
    return ino.is_symlink and ino.target == entry.data
