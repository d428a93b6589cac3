"""Random operations on the mount and on a plain directory must leave the same tree.

A hypothesis state machine writes at random offsets (across cache-block boundaries), truncates,
renames (replacing, across directories), removes and fsyncs, on both sides at once, and
compares after every step; at the end the mount is unmounted, its cache wiped and mounted
again, and the whole tree is compared once more.
"""

from __future__ import annotations

import os
import shutil
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    rule,
    run_state_machine_as_test,
)

from tests import fs_helpers
from tests.fs_helpers import Mount

mount_factory, mounted = fs_helpers.mount_factory, fs_helpers.mounted  # the fixtures

BLOCK = 1 << 20
offsets = st.one_of(st.integers(0, 5000), st.integers(BLOCK - 3000, BLOCK + 3000),
                    st.integers(0, 3 * BLOCK))
payloads = st.one_of(st.binary(max_size=300), st.integers(1, 300_000).map(
    lambda n: bytes([n % 251]) * n))
names = st.sampled_from(["a", "b", "c", "d", "long name é"])


def snapshot(root: Path) -> dict[str, object]:
    """Every path below root: directories as None, files as their bytes."""
    tree: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            tree[os.path.relpath(os.path.join(dirpath, name), root)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as file:
                tree[os.path.relpath(path, root)] = file.read()
    return tree


def make_machine(mount_root: Path, plain_root: Path,
                 tally: Counter[str]) -> type[RuleBasedStateMachine]:
    class MountVersusPlain(RuleBasedStateMachine):
        dirs = Bundle("dirs")
        files = Bundle("files")

        def __init__(self) -> None:
            super().__init__()
            self.case = f"case{len(os.listdir(plain_root))}"
            for base in (mount_root, plain_root):
                (base / self.case).mkdir()

        def both(self, relative: str) -> tuple[Path, Path]:
            return mount_root / self.case / relative, plain_root / self.case / relative

        def apply(self, action) -> None:  # noqa: ANN001 - a callable on one path pair
            outcomes: list[int | None] = []
            for path in self.both(""):
                try:
                    action(path)
                    outcomes.append(None)
                except OSError as exc:
                    outcomes.append(exc.errno)
            assert outcomes[0] == outcomes[1], outcomes
            tally["ok" if outcomes[0] is None else "error"] += 1

        @rule(target=dirs, parent=st.just("") | dirs, name=names)
        def mkdir(self, parent: str, name: str) -> str:
            relative = os.path.join(parent, "dir-" + name)
            self.apply(lambda base: os.mkdir(base / relative))
            return relative

        @rule(target=files, parent=st.just("") | dirs, name=names, offset=offsets,
              data=payloads)
        def write(self, parent: str, name: str, offset: int, data: bytes) -> str:
            relative = os.path.join(parent, name)

            def action(base: Path) -> None:
                fd = os.open(base / relative, os.O_CREAT | os.O_WRONLY, 0o644)
                try:
                    os.pwrite(fd, data, offset)
                finally:
                    os.close(fd)

            self.apply(action)
            return relative

        @rule(path=files, size=offsets)
        def truncate(self, path: str, size: int) -> None:
            self.apply(lambda base: os.truncate(base / path, size))

        @rule(path=files, offset=offsets, data=payloads)
        def overwrite_and_fsync(self, path: str, offset: int, data: bytes) -> None:
            def action(base: Path) -> None:
                fd = os.open(base / path, os.O_WRONLY)
                try:
                    os.pwrite(fd, data, offset)
                    os.fsync(fd)
                finally:
                    os.close(fd)

            self.apply(action)

        @rule(target=files, path=consumes(files), parent=st.just("") | dirs, name=names)
        def rename(self, path: str, parent: str, name: str) -> str:
            relative = os.path.join(parent, name)
            self.apply(lambda base: os.rename(base / path, base / relative))
            return relative

        @rule(target=dirs, path=consumes(dirs), parent=st.just("") | dirs, name=names)
        def rename_dir(self, path: str, parent: str, name: str) -> str:
            relative = os.path.join(parent, "dir-" + name)
            self.apply(lambda base: os.rename(base / path, base / relative))
            return relative

        @rule(path=consumes(files))
        def unlink(self, path: str) -> None:
            self.apply(lambda base: os.unlink(base / path))

        @rule(path=consumes(dirs))
        def rmdir(self, path: str) -> None:
            self.apply(lambda base: os.rmdir(base / path))

        @invariant()
        def same_tree(self) -> None:
            on_mount, on_plain = self.both("")
            assert snapshot(on_mount) == snapshot(on_plain)

    return MountVersusPlain


def test_random_operations_match_a_plain_directory(mounted: Mount, tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    tally: Counter[str] = Counter()
    machine = make_machine(mounted.path, plain, tally)
    run_state_machine_as_test(machine, settings=settings(
        max_examples=40, stateful_step_count=25, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]))
    assert tally["ok"] >= 150, tally  # the machine really exercised the mount
    mounted.umount()
    mounted.wipe_cache()
    mounted.mount()
    assert snapshot(mounted.path) == snapshot(plain)
    shutil.rmtree(plain)
