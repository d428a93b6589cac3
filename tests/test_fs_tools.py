"""Ordinary tools on a real mount: rsync, git, editors that save by renaming, tar, find."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests import fs_helpers
from tests.fs_helpers import Mount, make_file

mount_factory, mounted = fs_helpers.mount_factory, fs_helpers.mounted  # the fixtures

pytestmark = pytest.mark.skipif(not (shutil.which("rsync") and shutil.which("git")),
                                reason="needs rsync and git")


def _tree(root: Path) -> None:
    """Files of several sizes, nested directories, symlinks, xattrs, odd names and modes."""
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "empty-dir").mkdir()
    make_file(root / "a" / "big.bin", 3 * 1024 * 1024 + 17, seed=1)
    make_file(root / "a" / "b" / "mid.bin", 70_000, seed=2)
    (root / "a" / "b" / "c" / "tiny").write_bytes(b"t")
    (root / "empty").touch()
    (root / "name with spaces & ümlauts").write_text("odd name\n")
    (root / "script.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "script.sh", 0o755)
    os.chmod(root / "a" / "b" / "mid.bin", 0o600)
    os.symlink("a/big.bin", root / "link-to-file")
    os.symlink("a/b", root / "link-to-dir")
    os.symlink("/nonexistent/target", root / "dangling")
    os.setxattr(root / "a" / "big.bin", "user.origin", b"tests")
    os.setxattr(root / "a" / "b", "user.dir-attr", b"\x00\x01binary")
    os.utime(root / "a" / "b" / "c" / "tiny", ns=(1_500_000_000_000_000_000,) * 2)
    os.utime(root / "a" / "b", ns=(1_400_000_000_000_000_000,) * 2)


def _rsync_differences(source: Path, dest: Path) -> str:
    result = subprocess.run(["rsync", "-anciX", "--delete", f"{source}/", f"{dest}/"],
                            capture_output=True, text=True, check=True)
    return result.stdout


def test_rsync_tree_round_trip(mounted: Mount, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    _tree(source)
    subprocess.run(["rsync", "-aX", f"{source}/", f"{mounted.path}/"], check=True)
    assert _rsync_differences(source, mounted.path) == ""
    mounted.umount()
    mounted.wipe_cache()
    mounted.mount()
    assert _rsync_differences(source, mounted.path) == ""
    # and back out again
    back = tmp_path / "back"
    subprocess.run(["rsync", "-aX", f"{mounted.path}/", f"{back}/"], check=True)
    assert _rsync_differences(source, back) == ""


def test_git_on_the_mount(mounted: Mount) -> None:
    repo = mounted.path / "repo"
    repo.mkdir()

    def git(*args: str) -> str:
        env = dict(os.environ, GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.com",
                   GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.com")
        return subprocess.run(["git", *args], cwd=repo, env=env, check=True,
                              capture_output=True, text=True).stdout

    git("init", "-q")
    for i in range(20):
        (repo / f"file{i}.txt").write_text(f"content {i}\n" * (i * 50))
    (repo / "pkg").mkdir()
    shutil.copy(__file__, repo / "pkg" / "test.py")
    git("add", ".")
    git("commit", "-qm", "first")
    (repo / "file3.txt").write_text("changed\n")
    git("commit", "-qam", "second")
    assert git("status", "--porcelain") == ""
    mounted.umount()
    mounted.wipe_cache()
    mounted.mount()
    assert git("status", "--porcelain") == ""
    assert git("log", "--format=%s").split() == ["second", "first"]
    git("fsck", "--strict")


def test_editor_save_by_rename(mounted: Mount) -> None:
    """vim/emacs style: write a temporary file, fsync it, rename it over the original."""
    target = mounted.path / "notes.txt"
    target.write_text("version 1\n")
    os.setxattr(target, "user.tag", b"keep")
    for version in range(2, 6):
        tmp = mounted.path / ".notes.txt.swp"
        with open(tmp, "w") as file:
            file.write(f"version {version}\n")
            file.flush()
            os.fsync(file.fileno())
        os.rename(tmp, target)
        assert target.read_text() == f"version {version}\n"
    # a backup-copy editor (write "notes.txt~", then rewrite in place)
    shutil.copy2(target, mounted.path / "notes.txt~")
    target.write_text("in place\n")
    assert mounted.sync().returncode == 0
    mounted.umount()
    mounted.wipe_cache()
    mounted.mount()
    assert target.read_text() == "in place\n"
    assert (mounted.path / "notes.txt~").read_text() == "version 5\n"
    assert sorted(os.listdir(mounted.path)) == ["notes.txt", "notes.txt~"]


def test_tar_and_find(mounted: Mount, tmp_path: Path) -> None:
    source = tmp_path / "src"
    source.mkdir()
    _tree(source)
    archive = tmp_path / "tree.tar"
    subprocess.run(["tar", "cf", str(archive), "-C", str(source), "."], check=True)
    subprocess.run(["tar", "xf", str(archive), "-C", str(mounted.path)], check=True)
    found = subprocess.run(["find", ".", "-type", "f"], cwd=mounted.path, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    expected = subprocess.run(["find", ".", "-type", "f"], cwd=source, check=True,
                              capture_output=True, text=True).stdout.split("\n")
    assert sorted(found) == sorted(expected)
    du = subprocess.run(["du", "-sb", "."], cwd=mounted.path, check=True, capture_output=True,
                        text=True).stdout
    assert int(du.split()[0]) > 3 * 1024 * 1024
    again = tmp_path / "again.tar"
    subprocess.run(["tar", "cf", str(again), "-C", str(mounted.path), "."], check=True)
    listing = subprocess.run(["tar", "tvf", str(again)], check=True, capture_output=True,
                             text=True).stdout
    assert "link-to-file -> a/big.bin" in listing
