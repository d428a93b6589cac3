"""The sync task against a real gateway, without FUSE: uploads, publishes, merges, ordering."""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from safefs.client import GatewayClient
from safefs.fs import INLINE_MAX
from safefs.fs.cache import FileCache
from safefs.fs.dirrecord import Ref, unpack_ref
from safefs.fs.meta import ROOT_INODE, Metadata
from safefs.fs.remote import Remote
from safefs.fs.sync import PACK_FILE_MAX, FileChanged, SyncTask
from tests.conftest import GatewayProcess

FILE = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755


class Device:
    """One mount's state (metadata, cache, sync task) without the FUSE part."""

    def __init__(self, meta: Metadata, cache: FileCache, sync: SyncTask, remote: Remote) -> None:
        self.meta, self.cache, self.sync, self.remote = meta, cache, sync, remote

    async def write(self, parent: int, name: bytes, data: bytes) -> int:
        inode = self.meta.lookup(parent, name)
        if inode is None:
            inode = self.meta.create(parent, name, FILE, 0, 0).id
        self.cache.truncate(inode, 0)
        await self.cache.write(inode, 0, data)
        return inode

    async def remote_names(self, directory: int) -> set[bytes]:
        name = self.meta.get(directory).dir_name
        assert name is not None
        return set((await self.remote.read_dir(name))[1].entries)


@asynccontextmanager
async def device(gateway: GatewayProcess, path: Path) -> AsyncIterator[Device]:
    async with GatewayClient(gateway.url) as client:
        remote = Remote(client)
        root_name = await remote.connect()
        path.mkdir(parents=True, exist_ok=True)
        meta = Metadata(path / "meta.sqlite", (os.getuid(), os.getgid()))
        meta.init_root(root_name)
        try:
            async with trio.open_nursery() as nursery:
                cache = FileCache(meta, path / "files", 1 << 30, remote.fetch, nursery)
                sync = SyncTask(meta, cache, remote, upload_delay=0, poll_interval=3600)
                await sync.ensure_loaded(ROOT_INODE)
                yield Device(meta, cache, sync, remote)
                nursery.cancel_scope.cancel()
        finally:
            meta.close()
            await remote.aclose()


async def test_upload_publish_and_read_back(gateway: GatewayProcess, tmp_path: Path) -> None:
    """Tiny files travel inline, small ones in one pack, large ones each as ImmutableData."""
    big = os.urandom(PACK_FILE_MAX + 1)
    small = [os.urandom(INLINE_MAX + 1 + n) for n in range(3)]
    async with device(gateway, tmp_path / "a") as first:
        sub = first.meta.create(ROOT_INODE, b"sub", DIR, 0, 0).id
        await first.write(sub, b"big", big)
        for n, content in enumerate(small):
            await first.write(sub, b"small%d" % n, content)
        await first.write(ROOT_INODE, b"tiny", b"tiny")
        await first.sync.flush()
        assert await first.remote_names(ROOT_INODE) == {b"sub", b"tiny"}
        assert first.meta.get(first.meta.lookup(sub, b"big")).data_ref == Ref.DATA_ID
        assert first.meta.get(first.meta.lookup(ROOT_INODE, b"tiny")).data_ref == Ref.INLINE
        packed = [first.meta.get(first.meta.lookup(sub, b"small%d" % n)) for n in range(3)]
        assert {ino.data_ref for ino in packed} == {Ref.PACKED}
        assert len({unpack_ref(ino.data)[1] for ino in packed}) == 1  # one pack for the three
    async with device(gateway, tmp_path / "b") as second:
        sub = second.meta.lookup(ROOT_INODE, b"sub")
        await second.sync.ensure_loaded(sub)
        big_inode = second.meta.lookup(sub, b"big")
        assert await second.cache.read(big_inode, 0, len(big) + 1) == big
        for n, content in enumerate(small):
            inode = second.meta.lookup(sub, b"small%d" % n)
            assert await second.cache.read(inode, 0, len(content) + 1) == content
            assert await second.cache.read(inode, 5, 10) == content[5:15]


async def test_a_file_changed_while_its_pack_goes_up_stays_dirty(gateway: GatewayProcess,
                                                                  tmp_path: Path) -> None:
    """Its pack mates are recorded; the changed file goes up again, correct, later."""
    async with device(gateway, tmp_path) as dev:
        contents = [os.urandom(INLINE_MAX + 100) for _ in range(2)]
        inodes = [await dev.write(ROOT_INODE, b"p%d" % n, contents[n]) for n in range(2)]
        items = [await dev.sync.upload(inode, packable=True) for inode in inodes]
        assert all(item is not None for item in items)
        await dev.cache.write(inodes[0], 0, b"changed")
        await dev.sync._upload_pack(items)
        assert dev.meta.get(inodes[0]).dirty and not dev.meta.get(inodes[1]).dirty
        assert dev.meta.get(inodes[1]).data_ref == Ref.PACKED
        await dev.sync.flush()
        assert not dev.meta.get(inodes[0]).dirty
    async with device(gateway, tmp_path / "other") as other:
        await other.sync.ensure_loaded(ROOT_INODE)
        first = other.meta.lookup(ROOT_INODE, b"p0")
        expected = b"changed" + contents[0][7:]
        assert await other.cache.read(first, 0, len(expected) + 1) == expected


async def test_a_file_changed_during_its_upload_stays_dirty(gateway: GatewayProcess,
                                                              tmp_path: Path) -> None:
    async with device(gateway, tmp_path) as dev:
        inode = await dev.write(ROOT_INODE, b"f", os.urandom(3 << 20))

        async def write_meanwhile() -> None:
            await trio.sleep(0)
            await dev.cache.write(inode, 0, b"changed")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write_meanwhile)
            with pytest.raises(FileChanged):
                await dev.sync.upload(inode)
        assert dev.meta.get(inode).dirty
        await dev.sync.flush()
        assert not dev.meta.get(inode).dirty


async def test_move_across_directories_publishes_destination_first(
        gateway: GatewayProcess, tmp_path: Path) -> None:
    async with device(gateway, tmp_path) as dev:
        src = dev.meta.create(ROOT_INODE, b"src", DIR, 0, 0).id
        dst = dev.meta.create(ROOT_INODE, b"dst", DIR, 0, 0).id
        await dev.write(src, b"f", b"payload")
        await dev.sync.flush()
        dev.meta.rename(src, b"f", dst, b"f")
        await dev.sync.publish(src)  # a crash here must not lose f
        assert await dev.remote_names(src) == {b"f"}
        await dev.sync.publish(dst)
        assert await dev.remote_names(dst) == {b"f"}
        await dev.sync.flush()
        assert await dev.remote_names(src) == set()


async def test_burst_of_creates_is_one_version(gateway: GatewayProcess, tmp_path: Path) -> None:
    async with device(gateway, tmp_path) as dev:
        burst = dev.meta.create(ROOT_INODE, b"burst", DIR, 0, 0).id
        await dev.sync.flush()
        before = dev.meta.get(burst).dir_version
        for i in range(300):
            await dev.write(burst, b"f%d" % i, b"x")
        await dev.sync.flush()
        assert dev.meta.get(burst).dir_version == before + 1
        assert len(await dev.remote_names(burst)) == 300


async def test_concurrent_devices_merge(gateway: GatewayProcess, tmp_path: Path) -> None:
    async with device(gateway, tmp_path / "a") as first, \
            device(gateway, tmp_path / "b") as second:
        await first.write(ROOT_INODE, b"common", b"base")
        await first.sync.flush()
        await second.sync.flush(pull=True)  # brings "common" in
        await first.write(ROOT_INODE, b"only-first", b"1")
        await second.write(ROOT_INODE, b"only-second", b"2")
        await first.write(ROOT_INODE, b"common", b"first's edit")
        await second.write(ROOT_INODE, b"common", b"second's edit")
        await first.sync.flush()
        await second.sync.flush()  # conflict: merges, keeps both
        await first.sync.flush(pull=True)
        names = await first.remote_names(ROOT_INODE)
        copies = [name for name in names if name.startswith(b"common (conflict")]
        assert names == {b"common", b"only-first", b"only-second", *copies}
        assert len(copies) == 1
        contents = set()
        for dev in (first, second):
            assert {name for _, name, _ in dev.meta.children(ROOT_INODE)} == names
            for name in (b"common", copies[0]):
                inode = dev.meta.lookup(ROOT_INODE, name)
                contents.add(await dev.cache.read(inode, 0, 100))
        assert contents == {b"first's edit", b"second's edit"}


async def test_remote_removal_keeps_local_changes_below(gateway: GatewayProcess,
                                                        tmp_path: Path) -> None:
    async with device(gateway, tmp_path / "a") as first, \
            device(gateway, tmp_path / "b") as second:
        shared = first.meta.create(ROOT_INODE, b"shared", DIR, 0, 0).id
        await first.write(shared, b"old", b"old")
        await first.sync.flush()
        await second.sync.flush(pull=True)
        mine = second.meta.lookup(ROOT_INODE, b"shared")
        await second.sync.ensure_loaded(mine)
        # first removes the directory while second adds a file in it
        first.meta.remove(shared, b"old")
        first.meta.remove(ROOT_INODE, b"shared")
        await first.sync.flush()
        await second.write(mine, b"new", b"new")
        await second.sync.flush()
        await first.sync.flush(pull=True)
        again = first.meta.lookup(ROOT_INODE, b"shared")
        assert again is not None
        await first.sync.ensure_loaded(again)
        assert {name for _, name, _ in first.meta.children(again)} == {b"old", b"new"}
