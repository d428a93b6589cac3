"""A real mount: contents round-trip, POSIX file semantics, xattrs, the control commands."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest
import trio
import trio.testing

from safefs.fs import INLINE_BUDGET, INLINE_MAX
from safefs.fs.operations import BusyPoll
from safefs.fs.sync import PACK_FILE_MAX, STREAM_MIN
from tests import fs_helpers
from tests.fs_helpers import Mount, make_file, sha256_file, wait_for

mount_factory, mounted = fs_helpers.mount_factory, fs_helpers.mounted  # the fixtures

MiB = 1 << 20
SIZES = [0, 1, 2, 3, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 13 * MiB]


def _remount_cold(mount: Mount) -> None:
    """Unmount (which uploads everything), forget the whole local cache, mount again."""
    mount.umount()
    mount.wipe_cache()
    mount.mount()


def _cat_sha256(path: Path) -> str:
    return hashlib.sha256(subprocess.run(["cat", str(path)], check=True,
                                         capture_output=True).stdout).hexdigest()


def test_cp_cat_round_trips_survive_cache_wipe(mounted: Mount, tmp_path: Path) -> None:
    expected = {}
    for size in SIZES:
        source = tmp_path / f"src-{size}"
        expected[size] = make_file(source, size, seed=size)
        subprocess.run(["cp", str(source), str(mounted.path / f"f-{size}")], check=True)
    for size in SIZES:
        assert _cat_sha256(mounted.path / f"f-{size}") == expected[size]
    _remount_cold(mounted)
    for size in SIZES:
        path = mounted.path / f"f-{size}"
        assert path.stat().st_size == size
        assert _cat_sha256(path) == expected[size]


@pytest.mark.slow
def test_one_gib_round_trip(mounted: Mount, tmp_path: Path) -> None:
    source = tmp_path / "big"
    digest = make_file(source, 1 << 30, seed=7)
    subprocess.run(["cp", str(source), str(mounted.path / "big")], check=True)
    source.unlink()
    assert sha256_file(mounted.path / "big") == digest
    _remount_cold(mounted)
    assert sha256_file(mounted.path / "big") == digest


def test_posix_file_semantics(mounted: Mount) -> None:
    root = mounted.path
    # O_EXCL
    fd = os.open(root / "excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    with pytest.raises(FileExistsError):
        os.open(root / "excl", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    assert stat.S_IMODE((root / "excl").stat().st_mode) == 0o640 & ~_umask()
    # unlink of an open file: still readable and writable through the descriptor
    fd = os.open(root / "open", os.O_CREAT | os.O_RDWR)
    os.write(fd, b"kept")
    os.unlink(root / "open")
    assert not (root / "open").exists()
    os.write(fd, b" alive")
    assert os.pread(fd, 100, 0) == b"kept alive"
    os.close(fd)
    # sparse extension, then truncation down and up: the cut-off bytes come back as zeros
    with open(root / "sparse", "wb") as file:
        file.seek(10 * MiB)
        file.write(b"end")
    assert (root / "sparse").stat().st_size == 10 * MiB + 3
    data = (root / "sparse").read_bytes()
    assert data[:10 * MiB] == bytes(10 * MiB) and data[-3:] == b"end"
    (root / "t").write_bytes(b"0123456789")
    os.truncate(root / "t", 4)
    os.truncate(root / "t", 8)
    assert (root / "t").read_bytes() == b"0123\0\0\0\0"
    with open(root / "t", "r+b") as file:
        file.truncate(2)
        file.seek(5)
        file.write(b"x")
    assert (root / "t").read_bytes() == b"01\0\0\0x"
    # rename replacing an existing file, and RENAME_NOREPLACE-like checks through os.rename
    (root / "a").write_text("A")
    (root / "b").write_text("B")
    os.rename(root / "a", root / "b")
    assert (root / "b").read_text() == "A" and not (root / "a").exists()
    (root / "dir").mkdir()
    (root / "dir" / "inside").write_text("x")
    with pytest.raises(OSError) as info:
        os.rename(root / "b", root / "dir")
    assert info.value.errno == errno.EISDIR
    (root / "empty").mkdir()
    with pytest.raises(OSError) as info:
        os.rename(root / "empty", root / "dir")
    assert info.value.errno == errno.ENOTEMPTY
    with pytest.raises(OSError) as info:
        os.rename(root / "dir", root / "dir" / "sub")
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError) as info:
        os.rmdir(root / "dir")
    assert info.value.errno == errno.ENOTEMPTY
    # symlinks, chmod, utimens
    os.symlink("b", root / "link")
    assert os.readlink(root / "link") == "b" and (root / "link").read_text() == "A"
    os.chmod(root / "b", 0o604)
    os.utime(root / "b", ns=(1_000_000_000, 2_000_000_123))
    info_b = (root / "b").stat()
    assert stat.S_IMODE(info_b.st_mode) == 0o604 and info_b.st_mtime_ns == 2_000_000_123
    # hard links are not supported
    with pytest.raises(PermissionError):
        os.link(root / "b", root / "c")
    # names
    with pytest.raises(OSError) as info:
        (root / ("n" * 256)).write_text("x")
    assert info.value.errno == errno.ENAMETOOLONG
    (root / ("n" * 255)).write_text("x")
    # statfs has real numbers
    fs = os.statvfs(root)
    assert fs.f_namemax == 255 and fs.f_blocks > 0 and fs.f_bavail > 0 and fs.f_files > 0

    # All of it survives unmount, cache wipe and mount.
    _remount_cold(mounted)
    assert (root / "b").read_text() == "A"
    info_b2 = (root / "b").stat()
    assert stat.S_IMODE(info_b2.st_mode) == 0o604 and info_b2.st_mtime_ns == 2_000_000_123
    assert (root / "t").read_bytes() == b"01\0\0\0x"
    assert (root / "sparse").read_bytes()[-3:] == b"end"
    assert os.readlink(root / "link") == "b"
    assert sorted(os.listdir(root)) == sorted(
        ["excl", "sparse", "t", "b", "dir", "empty", "link", "n" * 255])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_changes_to_partly_cached_files(mounted: Mount, tmp_path: Path) -> None:
    """After a cache wipe only touched blocks are fetched; edits in the middle, appends and
    truncations of such files go up whole."""
    digest = make_file(tmp_path / "src", 5 * MiB + 333, seed=9)
    shutil.copyfile(tmp_path / "src", mounted.path / "big")
    _remount_cold(mounted)
    expected = bytearray((tmp_path / "src").read_bytes())
    with open(mounted.path / "big", "r+b") as file:
        file.seek(2 * MiB + 100)
        file.write(b"middle")
        file.seek(0, os.SEEK_END)
        file.write(b"appended")
    expected[2 * MiB + 100:2 * MiB + 106] = b"middle"
    expected += b"appended"
    assert sha256_file(mounted.path / "big") != digest
    _remount_cold(mounted)
    assert (mounted.path / "big").read_bytes() == bytes(expected)
    os.truncate(mounted.path / "big", 3 * MiB + 1)
    _remount_cold(mounted)
    assert (mounted.path / "big").read_bytes() == bytes(expected[:3 * MiB + 1])


def test_cache_stays_bounded(mount_factory, tmp_path: Path) -> None:
    mount = mount_factory(args=(*fs_helpers.FAST, "--cache-size", "64M"))
    digest = make_file(tmp_path / "src", 100 * MiB, seed=5)
    shutil.copyfile(tmp_path / "src", mount.path / "big")
    assert mount.sync().returncode == 0  # uploaded: clean, so evictable
    for _ in range(2):
        assert sha256_file(mount.path / "big") == digest
        status = mount.status()
        assert status["cache_bytes"] <= status["cache_limit"] + 4 * MiB


def test_readdir_of_many_entries_is_complete_and_stable(mounted: Mount) -> None:
    names = {f"entry-{i:04d}-{'x' * 40}" for i in range(1500)}
    for name in names:
        (mounted.path / name).touch()
    assert set(os.listdir(mounted.path)) == names
    _remount_cold(mounted)
    assert set(os.listdir(mounted.path)) == names


def test_xattr_rules(mounted: Mount) -> None:
    path = mounted.path / "f"
    path.write_bytes(b"x" * (PACK_FILE_MAX + 1))  # neither inline nor packed: a DataIdentifier
    os.setxattr(path, "user.colour", b"blue")
    os.setxattr(path, "user.empty", b"")
    os.setxattr(mounted.path, "user.root", b"r")
    assert sorted(os.listxattr(path)) == ["user.colour", "user.empty"]
    for name in ("trusted.x", "security.x", "system.x"):
        with pytest.raises(OSError) as info:
            os.setxattr(path, name, b"1")
        assert info.value.errno == errno.ENOTSUP
    with pytest.raises(OSError) as info:
        os.getxattr(path, "trusted.x")
    assert info.value.errno == errno.ENOTSUP
    for name in ("user.safe.id", "user.safe.state", "user.safe.other"):
        with pytest.raises(PermissionError):
            os.setxattr(path, name, b"1")
        with pytest.raises(PermissionError):
            os.removexattr(path, name)
    assert os.getxattr(path, "user.safe.state") == b"pending"
    assert mounted.sync().returncode == 0
    assert os.getxattr(path, "user.safe.state") == b"synced"
    assert os.getxattr(mounted.path, "user.safe.state") == b"synced"
    data_id = os.getxattr(path, "user.safe.id")
    assert len(data_id) > 20
    version = int(os.getxattr(mounted.path, "user.safe.version"))
    assert int(os.getxattr(path, "user.safe.version")) == version
    os.removexattr(path, "user.empty")
    with pytest.raises(OSError) as info:
        os.getxattr(path, "user.empty")
    assert info.value.errno == errno.ENODATA

    _remount_cold(mounted)
    assert os.getxattr(path, "user.colour") == b"blue"
    assert os.listxattr(path) == ["user.colour"]
    assert os.getxattr(mounted.path, "user.root") == b"r"
    assert os.getxattr(path, "user.safe.id") == data_id
    assert int(os.getxattr(mounted.path, "user.safe.version")) > version


def test_small_files_travel_inline(mounted: Mount) -> None:
    """Tiny files travel in their directory's record, small ones in packs, large ones alone."""
    (mounted.path / "tiny").write_bytes(b"small")
    (mounted.path / "small").write_bytes(b"S" * (INLINE_MAX + 1))
    (mounted.path / "large").write_bytes(b"L" * (PACK_FILE_MAX + 1))
    budget = mounted.path / "budget"
    budget.mkdir()
    for i in range(INLINE_BUDGET // INLINE_MAX + 3):
        (budget / f"f{i}").write_bytes(bytes([i]) * INLINE_MAX)
    assert mounted.sync().returncode == 0
    for name, storage in (("tiny", b"inline"), ("small", b"packed"), ("large", b"immutable")):
        assert os.getxattr(mounted.path / name, "user.safe.storage") == storage
        if storage != b"immutable":  # no DataIdentifier of its own
            with pytest.raises(OSError):
                os.getxattr(mounted.path / name, "user.safe.id")
    assert os.getxattr(mounted.path / "large", "user.safe.id")
    assert (mounted.path / "small").read_bytes() == b"S" * (INLINE_MAX + 1)
    # one directory's record carries at most INLINE_BUDGET of content; the rest is packed
    storage = {name: os.getxattr(budget / name, "user.safe.storage")
               for name in os.listdir(budget)}
    inline = [name for name, kind in storage.items() if kind == b"inline"]
    assert 0 < sum((budget / name).stat().st_size for name in inline) <= INLINE_BUDGET
    assert set(storage.values()) == {b"inline", b"packed"}
    _remount_cold(mounted)
    for i in range(INLINE_BUDGET // INLINE_MAX + 3):
        assert (budget / f"f{i}").read_bytes() == bytes([i]) * INLINE_MAX


def test_status_and_sync_commands(mounted: Mount) -> None:
    (mounted.path / "pending").write_bytes(b"p" * 100_000)
    status = mounted.status()
    assert status["online"] is True and status["mountpoint"] == str(mounted.path)
    assert mounted.sync().returncode == 0
    status = mounted.status()
    assert (status["pending_files"], status["pending_dirs"], status["conflicts"]) == (0, 0, 0)
    assert status["last_sync"] > 0
    human = mounted.env.run_cli("status")
    assert str(mounted.path) in human.stdout and "reachable" in human.stdout
    outside = mounted.env.run_cli("sync", str(mounted.env.root))
    assert outside.returncode == 1 and "not inside a safefs mount" in outside.stderr


def test_mount_errors_are_one_line(mounted: Mount, tmp_path: Path) -> None:
    again = mounted.env.run_cli("mount", str(mounted.path))
    assert again.returncode == 1 and "already a mount point" in again.stderr
    missing = mounted.env.run_cli("mount", str(tmp_path / "missing"))
    assert missing.returncode == 1 and "not a directory" in missing.stderr
    not_mounted = mounted.env.run_cli("umount", str(tmp_path))
    assert not_mounted.returncode == 1 and "not a safefs mount" in not_mounted.stderr
    for result in (again, missing, not_mounted):
        assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_large_files_go_up_while_written(mounted: Mount) -> None:
    """A file written in order from its start streams to the gateway while it is still open;
    one rewritten or truncated below what went up falls back to the usual upload."""
    size = STREAM_MIN + 8 * MiB
    contents = {name: os.urandom(size) for name in ("streamed", "rewritten", "truncated")}
    files = {name: open(mounted.path / name, "wb") for name in contents}  # noqa: SIM115
    try:
        for name, file in files.items():
            file.write(contents[name])
            file.flush()
            os.fsync(file.fileno())  # the kernel hands the pages to the daemon now
        wait_for(lambda: mounted.status()["uploaded_bytes"] >= 3 * STREAM_MIN,
                 "the open files to stream")
        time.sleep(1)  # well past the upload delay: fsynced files would have gone up by now
        assert mounted.status()["pending_files"] == 3  # streams finish when files close
        assert os.getxattr(mounted.path / "streamed", "user.safe.state") == b"pending"
        files["rewritten"].seek(100)
        files["rewritten"].write(b"changed")
        contents["rewritten"] = (contents["rewritten"][:100] + b"changed"
                                 + contents["rewritten"][107:])
        files["truncated"].truncate(MiB)
        files["truncated"].seek(0, os.SEEK_END)
        files["truncated"].write(b"tail")
        contents["truncated"] = contents["truncated"][:MiB] + b"tail"
    finally:
        for file in files.values():
            file.close()
    assert mounted.sync().returncode == 0
    for name in contents:
        assert os.getxattr(mounted.path / name, "user.safe.state") == b"synced"
        assert os.getxattr(mounted.path / name, "user.safe.storage") == b"immutable"
    _remount_cold(mounted)
    for name, content in contents.items():
        assert (mounted.path / name).read_bytes() == content, name


async def test_busy_poll_only_between_requests_in_lockstep() -> None:
    """Idle, the daemon's loop sleeps. After a request that came within the window of the one
    before, it keeps running (polling) for the window, then sleeps again; after a request that
    came later than that, it sleeps at once."""
    poll = BusyPoll(window=0.2)

    async def request_then_wait_for_sleep() -> float:
        poll.arrived()
        poll.answered()
        answered = time.perf_counter()
        await trio.testing.wait_all_tasks_blocked()
        return time.perf_counter() - answered

    async with trio.open_nursery() as nursery:
        nursery.start_soon(poll.run)
        with trio.fail_after(10):
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(2):
                # After a long idle (then after the polling's end): no polling.
                assert await request_then_wait_for_sleep() < 0.2
                assert await request_then_wait_for_sleep() >= 0.2  # came at once: polled
        nursery.cancel_scope.cancel()
