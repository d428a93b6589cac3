"""Local metadata: namespace changes, what records show, sync bookkeeping, merge application."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from safefs.fs.dirrecord import DirRecord, Entry, Kind, Ref
from safefs.fs.meta import CTRL_INODE, ROOT_INODE, DirState, Metadata

FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


@pytest.fixture
def meta(tmp_path: Path) -> Metadata:
    meta = Metadata(tmp_path / "meta.sqlite", (os.getuid(), os.getgid()))
    meta.init_root(b"r" * 32)
    meta.mark_new(ROOT_INODE)
    yield meta
    meta.close()


def publish(meta: Metadata, directory: int) -> DirRecord:
    """What the sync task does after a successful compare-and-swap (no network here)."""
    ino = meta.get(directory)
    record, moved, generation = meta.build_record(directory)
    version = 0 if ino.dir_version is None else ino.dir_version + 1
    meta.mark_published(directory, generation, version, record.encode(), moved)
    return record


def upload(meta: Metadata, inode: int, content: bytes) -> None:
    ino = meta.get(inode)
    assert meta.mark_uploaded(inode, ino.generation, Ref.INLINE, content, len(content),
                              ino.mtime_ns)


def test_numbers_reserve_the_control_inode(meta: Metadata) -> None:
    first = meta.create(ROOT_INODE, b"f", FILE, 0, 0)
    assert first.id > CTRL_INODE


def test_records_show_only_what_exists_remotely(meta: Metadata) -> None:
    f = meta.create(ROOT_INODE, b"f", FILE, 0, 0)
    d = meta.create(ROOT_INODE, b"d", DIR, 0, 0)
    link = meta.create(ROOT_INODE, b"l", stat.S_IFLNK | 0o777, 0, 0, b"f")
    # a new file (nothing uploaded) and a new directory (no record yet) are not shown
    assert set(publish(meta, ROOT_INODE).entries) == {b"l"}
    upload(meta, f.id, b"")
    publish(meta, d.id)
    record = publish(meta, ROOT_INODE)
    assert set(record.entries) == {b"f", b"d", b"l"}
    assert record.entries[b"d"].data == d.dir_name
    assert record.entries[b"l"] == Entry.symlink(b"f", link.mtime_ns, link.ctime_ns)
    # a dirty file keeps showing its last upload until the new content is up
    meta.content_changed(f.id, 5)
    assert publish(meta, ROOT_INODE).entries[b"f"].size == 0
    upload(meta, f.id, b"12345")
    assert publish(meta, ROOT_INODE).entries[b"f"].data == b"12345"


def test_generation_race_keeps_the_file_dirty(meta: Metadata) -> None:
    f = meta.create(ROOT_INODE, b"f", FILE, 0, 0)
    generation = meta.get(f.id).generation
    meta.content_changed(f.id, 3)  # written while the upload was on its way
    assert not meta.mark_uploaded(f.id, generation, Ref.INLINE, b"", 0, 0)
    assert meta.get(f.id).dirty and meta.get(f.id).data_ref is None


def test_change_after_a_snapshot_makes_the_record_pending_again(meta: Metadata) -> None:
    d = meta.create(ROOT_INODE, b"d", DIR, 0, 0)
    f = meta.create(d.id, b"f", FILE, 0, 0)
    upload(meta, f.id, b"x")
    meta.set_attrs(f.id, mode=stat.S_IFREG | 0o600)  # d pending: a second change needs no
    record, moved, generation = meta.build_record(d.id)
    meta.set_attrs(f.id, mode=stat.S_IFREG | 0o640)  # bump, but after a snapshot it does
    meta.mark_published(d.id, generation, 0, record.encode(), moved)
    ino = meta.get(d.id)
    assert ino.dir_gen != ino.dir_pub_gen and d.id in meta.dir_changes
    assert publish(meta, d.id).entries[b"f"].mode == 0o640
    assert meta.get(d.id).dir_gen == meta.get(d.id).dir_pub_gen


def test_rolled_back_change_leaves_nothing_in_memory(meta: Metadata) -> None:
    d = meta.create(ROOT_INODE, b"d", DIR, 0, 0)
    f = meta.create(d.id, b"f", FILE, 0, 0)
    upload(meta, f.id, b"x")
    publish(meta, d.id)
    meta.on_uncommitted = lambda: None  # changes nest as savepoints, as in a mount
    with pytest.raises(RuntimeError), meta.transaction():
        meta.set_attrs(f.id, mode=stat.S_IFREG | 0o600)
        raise RuntimeError
    assert stat.S_IMODE(meta.get(f.id).mode) == 0o644
    assert meta.get(d.id).dir_gen == meta.get(d.id).dir_pub_gen
    meta.set_attrs(f.id, mode=stat.S_IFREG | 0o600)  # the undone bump is not taken for done
    assert meta.get(d.id).dir_gen != meta.get(d.id).dir_pub_gen


def test_records_built_meanwhile_leave_other_directories_pending(meta: Metadata) -> None:
    a, b = (meta.create(ROOT_INODE, name, DIR, 0, 0) for name in (b"a", b"b"))
    fa, fb = meta.create(a.id, b"fa", FILE, 0, 0), meta.create(b.id, b"fb", FILE, 0, 0)
    for inode, directory in ((fa.id, a.id), (fb.id, b.id)):
        upload(meta, inode, b"x")
        publish(meta, directory)

    def pending(directory: int) -> bool:
        ino = meta.get(directory)
        return ino.dir_gen != ino.dir_pub_gen

    meta.set_attrs(fa.id, mode=stat.S_IFREG | 0o600)
    publish(meta, b.id)  # another directory's record built in between
    meta.set_attrs(fa.id, mode=stat.S_IFREG | 0o640)
    assert pending(a.id) and not pending(b.id)
    assert publish(meta, a.id).entries[b"fa"].mode == 0o640 and not pending(a.id)
    upload(meta, fa.id, b"y")  # after a's snapshot: its record must change again
    assert pending(a.id) and publish(meta, a.id).entries[b"fa"].data == b"y"


def test_names_follow_moves_removals_and_rollbacks(meta: Metadata) -> None:
    d = meta.create(ROOT_INODE, b"d", DIR, 0, 0)
    f = meta.create(ROOT_INODE, b"f", FILE, 0, 0)
    assert meta.name_of(f.id) == (ROOT_INODE, b"f") and meta.name_of(ROOT_INODE) is None
    meta.rename(ROOT_INODE, b"f", d.id, b"g")
    assert meta.name_of(f.id) == (d.id, b"g")
    meta.on_uncommitted = lambda: None  # changes nest as savepoints, as in a mount
    with pytest.raises(RuntimeError), meta.transaction():
        meta.rename(d.id, b"g", ROOT_INODE, b"h")
        assert meta.name_of(f.id) == (ROOT_INODE, b"h")
        raise RuntimeError
    assert meta.name_of(f.id) == (d.id, b"g")
    meta.remove(d.id, b"g")
    assert meta.name_of(f.id) is None and not meta.needs_sync(f.id)
    assert meta.detach_children(ROOT_INODE) == [d.id] and meta.name_of(d.id) is None


def test_replaced_name_shows_its_previous_entry(meta: Metadata) -> None:
    f = meta.create(ROOT_INODE, b"notes", FILE, 0, 0)
    upload(meta, f.id, b"old")
    publish(meta, ROOT_INODE)
    tmp = meta.create(ROOT_INODE, b"notes.swp", FILE, 0, 0)
    meta.content_changed(tmp.id, 3)
    replaced = meta.rename(ROOT_INODE, b"notes.swp", ROOT_INODE, b"notes")
    assert replaced == f.id and meta.name_of(f.id) is None
    # until the new content is uploaded the record keeps the old one under the name
    assert publish(meta, ROOT_INODE).entries[b"notes"].data == b"old"
    upload(meta, tmp.id, b"new")
    assert publish(meta, ROOT_INODE).entries[b"notes"].data == b"new"


def test_move_across_directories_never_loses_the_entry(meta: Metadata) -> None:
    src = meta.create(ROOT_INODE, b"src", DIR, 0, 0)
    dst = meta.create(ROOT_INODE, b"dst", DIR, 0, 0)
    f = meta.create(src.id, b"f", FILE, 0, 0)
    upload(meta, f.id, b"data")
    for directory in (src.id, dst.id, ROOT_INODE):
        publish(meta, directory)
    meta.rename(src.id, b"f", dst.id, b"g")
    # the source publishes first: it still shows the entry (a duplicate, not a loss)
    assert b"f" in publish(meta, src.id).entries
    assert meta.get(src.id).dir_gen == meta.get(src.id).dir_pub_gen
    assert b"g" in publish(meta, dst.id).entries
    # the destination shows it now, so the source becomes pending and drops it
    assert meta.get(src.id).dir_gen != meta.get(src.id).dir_pub_gen
    assert publish(meta, src.id).entries == {}


def test_move_chain_follows_the_entry(meta: Metadata) -> None:
    a, b, c = (meta.create(ROOT_INODE, name, DIR, 0, 0) for name in (b"a", b"b", b"c"))
    f = meta.create(a.id, b"f", FILE, 0, 0)
    upload(meta, f.id, b"x")
    for directory in (a.id, b.id, c.id):
        publish(meta, directory)
    meta.rename(a.id, b"f", b.id, b"f")
    meta.rename(b.id, b"f", c.id, b"f")
    publish(meta, b.id)  # b never showed it: publishing b must not release a
    assert b"f" in publish(meta, a.id).entries
    publish(meta, c.id)
    assert publish(meta, a.id).entries == {}


def test_apply_remote_entries(meta: Metadata) -> None:
    f = meta.create(ROOT_INODE, b"f", FILE, 0, 0)
    upload(meta, f.id, b"old")
    publish(meta, ROOT_INODE)
    new = Entry(Kind.FILE, 0o600, 5, 5, 3, b"new", Ref.INLINE, ((b"user.k", b"v"),))
    assert meta.apply_entry(ROOT_INODE, b"f", new) == [f.id]  # same inode, new content
    ino = meta.get(f.id)
    assert (ino.data, ino.size, stat.S_IMODE(ino.mode), ino.dirty) == (b"new", 3, 0o600, False)
    assert meta.xattrs(f.id) == ((b"user.k", b"v"),)
    child = Entry(Kind.DIR, 0o700, 1, 1, 0, b"c" * 32)
    meta.apply_entry(ROOT_INODE, b"sub", child)
    sub = meta.get(meta.lookup(ROOT_INODE, b"sub"))
    assert sub.dir_state == DirState.UNLOADED and sub.dir_name == b"c" * 32
    assert meta.apply_entry(ROOT_INODE, b"f", None) == [f.id]
    assert meta.lookup(ROOT_INODE, b"f") is None and meta.orphans() == [f.id]


def test_local_changes_below_a_directory_are_seen(meta: Metadata) -> None:
    d = meta.create(ROOT_INODE, b"d", DIR, 0, 0)
    f = meta.create(d.id, b"f", FILE, 0, 0)
    upload(meta, f.id, b"")
    publish(meta, d.id)
    publish(meta, ROOT_INODE)
    assert not meta.subtree_has_local_changes(d.id)
    meta.content_changed(f.id, 1)
    assert meta.subtree_has_local_changes(d.id)
    state = meta.local_state(ROOT_INODE, b"d")
    assert state is not None and state.changed


def test_pending_dirs_deepest_first(meta: Metadata) -> None:
    a = meta.create(ROOT_INODE, b"a", DIR, 0, 0)
    b = meta.create(a.id, b"b", DIR, 0, 0)
    assert [ino.id for ino in meta.pending_dirs()] == [b.id, a.id, ROOT_INODE]


def test_schema_survives_reopening(tmp_path: Path, meta: Metadata) -> None:
    meta.create(ROOT_INODE, b"f", FILE, 0, 0)
    meta.close()  # the database is held exclusively while open, as by a mount
    again = Metadata(meta.path, (0, 0))
    assert again.lookup(ROOT_INODE, b"f") is not None
    again.close()
