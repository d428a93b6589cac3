"""The system-call helpers of safefs.osutil on real files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from safefs import osutil


@pytest.fixture
def fd(tmp_path: Path):
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT)
    yield fd
    os.close(fd)


def test_write_pieces_writes_more_pieces_than_one_call_takes(fd: int, tmp_path: Path) -> None:
    pieces = [bytes([i % 251]) * (i % 7) for i in range(5000)]  # empty ones too; > IOV_MAX
    osutil.write_pieces(fd, pieces)
    assert (tmp_path / "out").read_bytes() == b"".join(pieces)


def test_write_pieces_finishes_short_writes(fd: int, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    real_writev = os.writev

    def short_writev(fd: int, buffers: list) -> int:  # a disk that takes 3 bytes per call
        return real_writev(fd, [bytes(buffers[0][:3])])

    monkeypatch.setattr(os, "writev", short_writev)
    pieces = [b"abcdefgh", b"", b"ij", bytearray(b"klmnopq"), memoryview(b"rstu")]
    osutil.write_pieces(fd, pieces)
    assert (tmp_path / "out").read_bytes() == b"abcdefghijklmnopqrstu"


def test_write_all_finishes_short_writes(fd: int, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data[:5])))
    osutil.write_all(fd, b"0123456789abcdef")
    assert (tmp_path / "out").read_bytes() == b"0123456789abcdef"
