"""The mount daemon's life: embedded gateway, SIGTERM, foreground mode with systemd's
notification, and remote changes arriving by themselves."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from tests import fs_helpers
from tests.conftest import SafefsEnv
from tests.fs_helpers import Mount, wait_for

mount_factory, mounted = fs_helpers.mount_factory, fs_helpers.mounted  # the fixtures


def _gateway_info(env: SafefsEnv) -> dict:
    return json.loads((env.data_dir / "run" / "gateway.json").read_text())


@fs_helpers.needs_fuse
def test_embedded_gateway_lifecycle(safefs_env: SafefsEnv, tmp_path: Path) -> None:
    """No gateway anywhere: mount starts one (creating the account) and restarts it if it
    dies; umount stops it, and so does a kill -9 of the daemon."""
    mount = Mount(safefs_env, None, tmp_path / "mnt")
    mount.mount()
    try:
        assert (Path(safefs_env.env["XDG_CONFIG_HOME"]) / "safefs" / "account.key").exists()
        first = _gateway_info(safefs_env)
        (mount.path / "before").write_text("1")
        os.kill(first["pid"], signal.SIGKILL)
        (mount.path / "after").write_text("2")
        wait_for(lambda: _gateway_info(safefs_env).get("pid") not in (None, first["pid"]),
                 "the gateway to be restarted")
        assert mount.sync().returncode == 0
        second = _gateway_info(safefs_env)
        mount.umount()
        wait_for(lambda: not _alive(second["pid"]), "the embedded gateway to stop")
        # The data went up: a new mount (with a new embedded gateway) shows it.
        mount.mount()
        assert sorted(os.listdir(mount.path)) == ["after", "before"]
        embedded = _gateway_info(safefs_env)["pid"]
        mount.kill()  # kill -9 of the daemon takes its gateway along
        wait_for(lambda: not _alive(embedded), "the orphaned gateway to stop")
    finally:
        mount.cleanup()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@fs_helpers.needs_fuse
def test_foreground_notify_and_sigterm(gateway, safefs_env: SafefsEnv, tmp_path: Path) -> None:
    """systemd's way: Type=notify sees READY=1 once the mount answers; SIGTERM uploads what
    is pending, unmounts and exits 0."""
    path = tmp_path / "mnt"
    path.mkdir()
    address = f"\0safefs-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(address)
        notify.settimeout(60)
        env = dict(safefs_env.env, NOTIFY_SOCKET="@" + address[1:])
        daemon = subprocess.Popen(
            [sys.executable, "-m", "safefs", "mount", str(path), "--foreground",
             "--gateway", gateway.url, "--upload-delay", "3600"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            assert b"READY=1" in notify.recv(100)
            assert os.path.ismount(path)
            (path / "pending").write_bytes(b"p" * 50_000)
            daemon.send_signal(signal.SIGTERM)
            assert daemon.wait(timeout=120) == 0, daemon.stderr.read()
        finally:
            if daemon.poll() is None:
                daemon.kill()
    assert not os.path.ismount(path)
    mount = Mount(safefs_env, gateway, path)
    mount.mount()
    mount.umount()
    mount.wipe_cache()  # what follows comes from the gateway
    mount.mount()
    try:
        assert (path / "pending").read_bytes() == b"p" * 50_000
    finally:
        mount.umount()


def test_remote_changes_arrive_without_remount(mount_factory) -> None:
    writer = mount_factory("writer")
    reader = mount_factory("reader")
    assert not (reader.path / "news.txt").exists()  # the kernel may cache this negative entry
    os.listdir(reader.path)
    (writer.path / "news.txt").write_text("fresh")
    (writer.path / "topic").mkdir()
    (writer.path / "topic" / "deep.txt").write_text("deeper")
    assert writer.sync().returncode == 0
    wait_for(lambda: (reader.path / "news.txt").exists(), "the reader to see the new file")
    assert (reader.path / "news.txt").read_text() == "fresh"
    assert (reader.path / "topic" / "deep.txt").read_text() == "deeper"
    (writer.path / "news.txt").write_text("edited")
    os.unlink(writer.path / "topic" / "deep.txt")
    assert writer.sync().returncode == 0
    wait_for(lambda: (reader.path / "news.txt").read_text() == "edited",
             "the reader to see the edit")
    wait_for(lambda: not (reader.path / "topic" / "deep.txt").exists(),
             "the reader to see the removal")
