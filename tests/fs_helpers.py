"""Real mounts for the file-system tests: ``safefs mount`` (the CLI, a background daemon)
against the real gateway process of ``tests/conftest.py``.

``mounted`` yields a :class:`Mount` that is mounted; ``mount_factory`` makes more (a second
mount point of the same account, or one on another gateway). Mounts use short sync delays so
tests do not wait; the tests that need a sync still ask for it explicitly (``safefs sync``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import GatewayProcess, SafefsEnv

HAVE_FUSE = os.access("/dev/fuse", os.R_OK | os.W_OK) and shutil.which("fusermount3") is not None
needs_fuse = pytest.mark.skipif(not HAVE_FUSE,
                                reason="needs a usable /dev/fuse and fusermount3")

FAST = ("--upload-delay", "0.2", "--poll-interval", "1")


@dataclass
class Mount:
    env: SafefsEnv
    gateway: GatewayProcess | None  # None: no --gateway (the mount finds or starts one)
    path: Path
    args: tuple[str, ...] = FAST
    pid: int = field(default=0, init=False)

    def mount(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        gateway = ("--gateway", self.gateway.url) if self.gateway else ()
        result = self.env.run_cli("mount", str(self.path), *gateway, *self.args)
        assert result.returncode == 0, result.stderr + self.log()
        self.pid = self.status()["pid"]

    def umount(self) -> subprocess.CompletedProcess[str]:
        result = self.env.run_cli("umount", str(self.path))
        assert result.returncode == 0, result.stderr + self.log()
        assert not os.path.ismount(self.path)
        self.pid = 0
        return result

    def sync(self) -> subprocess.CompletedProcess[str]:
        return self.env.run_cli("sync", str(self.path))

    def status(self) -> dict:
        result = self.env.run_cli("status", str(self.path), "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def kill(self) -> None:
        """kill -9 the daemon and detach what the kernel has left."""
        os.kill(self.pid, signal.SIGKILL)
        wait_for(lambda: not _alive(self.pid), "the daemon to die")
        subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)
        self.pid = 0

    @property
    def cache_dir(self) -> Path:
        key = hashlib.sha256(os.fsencode(self.path.resolve())).hexdigest()[:16]
        return Path(self.env.env["XDG_CACHE_HOME"]) / "safefs" / "mounts" / key

    def wipe_cache(self) -> None:
        assert not self.pid, "unmount first"
        shutil.rmtree(self.cache_dir)

    def log(self) -> str:
        try:
            return (self.cache_dir / "mount.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def cleanup(self) -> None:
        if self.pid and _alive(self.pid):
            if os.path.ismount(self.path):
                self.env.run_cli("umount", str(self.path))
            if _alive(self.pid):
                os.kill(self.pid, signal.SIGKILL)
        subprocess.run(["fusermount3", "-uz", str(self.path)], capture_output=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of someone else still answers kill(0): look at its state.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[-1][0] != "Z"
    except FileNotFoundError:
        return False


def wait_for(condition: Callable[[], object], what: str, timeout: float = 60.0) -> None:
    """Poll ``condition`` until it holds (the timeout only bounds a broken test's run)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def mount_factory(safefs_env: SafefsEnv, gateway: GatewayProcess,
                  tmp_path: Path) -> Iterator:
    if not HAVE_FUSE:
        pytest.skip("needs a usable /dev/fuse and fusermount3")
    made: list[Mount] = []

    def make(name: str = "mnt", on: GatewayProcess | None = None,
             args: tuple[str, ...] = FAST) -> Mount:
        mount = Mount(safefs_env, on or gateway, tmp_path / name, args)
        mount.mount()
        made.append(mount)
        return mount

    yield make
    for mount in made:
        mount.cleanup()


@pytest.fixture
def mounted(mount_factory: Callable[..., Mount]) -> Mount:
    return mount_factory()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while piece := file.read(1 << 20):
            digest.update(piece)
    return digest.hexdigest()


def make_file(path: Path, size: int, seed: int = 0) -> str:
    """A file of ``size`` pseudo-random bytes; returns its sha256."""
    rng = random.Random(seed)
    digest = hashlib.sha256()
    with open(path, "wb") as file:
        left = size
        while left:
            piece = rng.randbytes(min(left, 1 << 20))
            file.write(piece)
            digest.update(piece)
            left -= len(piece)
    return digest.hexdigest()
