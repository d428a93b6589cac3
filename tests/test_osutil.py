"""The system-call helpers of safefs.osutil on real files."""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
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


def _resident_pages(path: Path) -> int:
    """How many of the file's pages are in the page cache (mincore of a private mapping)."""
    size = path.stat().st_size
    with open(path, "rb") as file, mmap.mmap(file.fileno(), size, access=mmap.ACCESS_COPY) as m:
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        address = ctypes.addressof(ctypes.c_char.from_buffer(m))
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        assert libc.mincore(address, size, vector) == 0, os.strerror(ctypes.get_errno())
        return sum(byte & 1 for byte in vector)


def _write_new_direct(path: Path, data: bytes) -> bool:
    fd, direct = osutil.open_new(str(path), direct=True)
    try:
        osutil.write_direct(fd, data)
    finally:
        os.close(fd)
    return direct


@pytest.mark.parametrize("size", [1, 4095, 4096, 4097, 3 * osutil.DIRECT_BUFFER,
                                  osutil.DIRECT_BUFFER + 3 * 4096 + 17])
def test_write_direct_writes_every_size(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    _write_new_direct(tmp_path / "out", data)
    assert (tmp_path / "out").read_bytes() == data


def test_write_direct_leaves_whole_blocks_out_of_the_page_cache(tmp_path: Path) -> None:
    data = os.urandom(2 * osutil.DIRECT_BUFFER + 100)
    if not _write_new_direct(tmp_path / "out", data):
        pytest.skip(f"the file system of {tmp_path} refuses direct I/O")
    assert _resident_pages(tmp_path / "out") <= 1  # the part block at the end
    assert (tmp_path / "out").read_bytes() == data
    (tmp_path / "buffered").write_bytes(data)  # (the check sees page-cache pages)
    assert _resident_pages(tmp_path / "buffered") > 500


def test_direct_io_refused_at_open_falls_back(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = os.open

    def refusing_open(path, flags, *args):  # tmpfs before Linux 6.6
        if flags & osutil.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", refusing_open)
    monkeypatch.setattr(osutil, "direct_io", True)
    data = os.urandom(100_000)
    assert _write_new_direct(tmp_path / "out", data) is False
    assert osutil.direct_io is False
    assert _write_new_direct(tmp_path / "next", data) is False
    assert (tmp_path / "out").read_bytes() == (tmp_path / "next").read_bytes() == data


def test_direct_io_refused_at_write_falls_back(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write

    def refusing_write(fd: int, data) -> int:  # accepted at open, refused at the first write
        if fcntl.fcntl(fd, fcntl.F_GETFL) & osutil.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", refusing_write)
    monkeypatch.setattr(osutil, "direct_io", True)
    data = os.urandom(3 * 4096 + 5)
    _write_new_direct(tmp_path / "out", data)
    assert osutil.direct_io is False
    assert (tmp_path / "out").read_bytes() == data


def test_write_direct_passes_other_errors_on(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    def full_disk(fd: int, data) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    monkeypatch.setattr(osutil, "direct_io", True)
    with pytest.raises(OSError) as caught:
        _write_new_direct(tmp_path / "out", os.urandom(10_000))
    assert caught.value.errno == errno.ENOSPC
    assert osutil.direct_io is True
