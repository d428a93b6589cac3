"""Durability and outages: kill -9 of the daemon or of the gateway, a gateway that is down for
a while, and two mounts of one account."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests import fs_helpers
from tests.conftest import GatewayProcess, SafefsEnv, another_device
from tests.fs_helpers import FAST, Mount, make_file, sha256_file, wait_for

mount_factory, mounted = fs_helpers.mount_factory, fs_helpers.mounted  # the fixtures

#: A mount that uploads nothing by itself, so what survives a crash came from the cache.
NO_UPLOADS = ("--upload-delay", "3600", "--poll-interval", "3600")

WRITER = """
import os, sys
path, fsynced = sys.argv[1], sys.argv[2]
fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644)
block = bytes(range(256)) * 256
written = 0
while written < 64 * 1024 * 1024:  # the kernel may take writes after the daemon is gone
    try:
        os.write(fd, block)
    except OSError:
        break
    written += len(block)
    if written == 4 * 1024 * 1024:
        os.fsync(fd)
        with open(fsynced, "w") as f:
            f.write(str(written))
"""


def _cold_remount(mount: Mount) -> None:
    mount.umount()
    mount.wipe_cache()
    mount.mount()


def test_kill_daemon_mid_write_keeps_fsynced_data_and_renames(
        mount_factory, tmp_path: Path) -> None:
    mount = mount_factory(args=NO_UPLOADS)
    root = mount.path
    (root / "dir1").mkdir()
    (root / "dir2").mkdir()
    (root / "dir1" / "moved").write_bytes(b"m" * 10_000)
    with open(root / "dir1" / "moved", "rb+") as file:
        os.fsync(file.fileno())
    os.rename(root / "dir1" / "moved", root / "dir2" / "moved")
    os.rename(root / "dir2", root / "dir3")
    digest = make_file(tmp_path / "src", 3 * 1024 * 1024 + 5, seed=3)
    with open(tmp_path / "src", "rb") as source, open(root / "synced.bin", "wb") as dest:
        dest.write(source.read())
        dest.flush()
        os.fsync(dest.fileno())
    marker = tmp_path / "fsynced"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(root / "stream"), str(marker)])
    wait_for(marker.exists, "the writer's fsync")
    mount.kill()
    writer.wait(timeout=60)

    mount.args = FAST
    mount.mount()  # the same cache: it recovers and uploads what the crash left
    assert sha256_file(root / "synced.bin") == digest
    assert (root / "dir3" / "moved").read_bytes() == b"m" * 10_000
    assert not (root / "dir1" / "moved").exists() and not (root / "dir2").exists()
    fsynced = int(marker.read_text())
    stream = (root / "stream").read_bytes()
    block = bytes(range(256)) * 256
    assert len(stream) >= fsynced and stream[:fsynced] == block * (fsynced // len(block))
    assert mount.sync().returncode == 0
    _cold_remount(mount)
    assert sha256_file(root / "synced.bin") == digest
    assert (root / "dir3" / "moved").read_bytes() == b"m" * 10_000
    assert (root / "stream").read_bytes()[:fsynced] == stream[:fsynced]


def test_gateway_killed_mid_write_then_back(mounted: Mount, gateway: GatewayProcess,
                                            tmp_path: Path) -> None:
    root = mounted.path
    (root / "cached.txt").write_text("cached before the outage")
    assert mounted.sync().returncode == 0
    digest = make_file(tmp_path / "src", 6 * 1024 * 1024, seed=4)
    writer = subprocess.Popen(["cp", str(tmp_path / "src"), str(root / "during.bin")])
    time.sleep(0.05)
    gateway.stop(signal.SIGKILL)
    assert writer.wait(timeout=60) == 0  # writes land in the cache: no gateway needed
    # The mount keeps working: cached reads and every kind of write.
    assert (root / "cached.txt").read_text() == "cached before the outage"
    (root / "offline").mkdir()
    (root / "offline" / "new.txt").write_text("written offline")
    os.rename(root / "cached.txt", root / "offline" / "renamed.txt")
    assert mounted.status()["online"] is False or mounted.status()["pending_files"] > 0
    failed = mounted.sync()
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    gateway.start(gateway.port)
    wait_for(lambda: _all_uploaded(mounted), "the mount to catch up on its own")
    _cold_remount(mounted)
    assert sha256_file(root / "during.bin") == digest
    assert (root / "offline" / "new.txt").read_text() == "written offline"
    assert (root / "offline" / "renamed.txt").read_text() == "cached before the outage"
    assert sorted(os.listdir(root)) == ["during.bin", "offline"]


def _all_uploaded(mount: Mount) -> bool:
    status = mount.status()
    return status["online"] and not status["pending_files"] and not status["pending_dirs"]


def test_uncached_read_while_gateway_down_fails_cleanly(mounted: Mount,
                                                        gateway: GatewayProcess) -> None:
    (mounted.path / "remote.bin").write_bytes(b"r" * 3_000_000)
    mounted.umount()
    mounted.wipe_cache()
    mounted.mount()
    os.stat(mounted.path / "remote.bin")  # listed, content not fetched yet
    gateway.stop()
    try:
        with open(mounted.path / "remote.bin", "rb") as file:
            file.read()
    except OSError as exc:
        assert exc.errno == errno.EIO
    else:
        raise AssertionError("read of uncached data succeeded without a gateway")
    (mounted.path / "still-writable").write_text("yes")
    gateway.start(gateway.port)
    assert (mounted.path / "remote.bin").read_bytes() == b"r" * 3_000_000
    wait_for(lambda: _all_uploaded(mounted), "the upload after the outage")


def test_two_mounts_of_one_account(mount_factory) -> None:
    first = mount_factory("one")
    second = mount_factory("two")
    (first.path / "from-one.txt").write_text("hello from one")
    (first.path / "shared").mkdir()
    assert first.sync().returncode == 0
    assert second.sync().returncode == 0
    assert (second.path / "from-one.txt").read_text() == "hello from one"
    # A burst of creates in one directory on both sides: a merge, no conflict.
    for i in range(20):
        (first.path / "shared" / f"a{i}").write_text(f"a{i}")
        (second.path / "shared" / f"b{i}").write_text(f"b{i}")
    # Both sides edit the same file: both versions are kept.
    (first.path / "from-one.txt").write_text("edited on one")
    (second.path / "from-one.txt").write_text("edited on two")
    for mount in (first, second, first, second):
        assert mount.sync().returncode == 0, mount.log()
    for mount in (first, second):
        names = sorted(os.listdir(mount.path / "shared"))
        assert names == sorted([f"a{i}" for i in range(20)] + [f"b{i}" for i in range(20)])
    texts = {}
    for mount in (first, second):
        texts[mount.path.name] = {
            name: (mount.path / name).read_text() for name in os.listdir(mount.path)
            if name.startswith("from-one")}
    assert texts["one"] == texts["two"]
    assert sorted(texts["one"].values()) == ["edited on one", "edited on two"]
    conflict = [name for name in texts["one"] if "(conflict" in name]
    assert len(conflict) == 1
    # The mount that found the conflict marks the copy (the mark is local to that device).
    finder = first if first.status()["conflicts"] else second
    other = second if finder is first else first
    assert (finder.status()["conflicts"], other.status()["conflicts"]) == (1, 0)
    assert os.getxattr(finder.path / conflict[0], "user.safe.state") == b"conflict"
    # A removal on one side reaches the other.
    os.unlink(first.path / "shared" / "a0")
    assert first.sync().returncode == 0 and second.sync().returncode == 0
    assert not (second.path / "shared" / "a0").exists()


@fs_helpers.needs_fuse
def test_two_gateways_sharing_one_store(gateway: GatewayProcess, safefs_env: SafefsEnv,
                                        tmp_path: Path) -> None:
    """Another machine: its own gateway and state, the same account, the same store."""
    other_env = another_device(safefs_env, tmp_path / "other")
    other_gateway = GatewayProcess(other_env, gateway.store_url, [])
    other_gateway.start()
    left = Mount(safefs_env, gateway, tmp_path / "left")
    right = Mount(other_env, other_gateway, tmp_path / "right")
    try:
        left.mount()
        right.mount()
        for i in range(10):
            (left.path / f"l{i}").write_text("left")
            (right.path / f"r{i}").write_text("right")
        for mount in (left, right, left, right):
            assert mount.sync().returncode == 0
        expected = sorted([f"l{i}" for i in range(10)] + [f"r{i}" for i in range(10)])
        assert sorted(os.listdir(left.path)) == expected
        assert sorted(os.listdir(right.path)) == expected
    finally:
        left.cleanup()
        right.cleanup()
        other_gateway.stop()
