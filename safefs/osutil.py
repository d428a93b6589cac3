"""Linux system calls the ``os`` module lacks, through ctypes (a few lines, no dependency),
and :func:`write_all` / :func:`write_pieces`.

Each is None where the C library does not have it; callers fall back on something portable.
"""

from __future__ import annotations

import ctypes
import itertools
import os
from collections import deque
from collections.abc import Sequence
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)


def libc_function(name: str) -> Any:
    """A C library function of this process, or None where the library lacks it (musl has no
    ``mallopt``; ``syncfs`` is Linux-only)."""
    return getattr(_libc, name, None)


_syncfs = libc_function("syncfs")
_sync_file_range = libc_function("sync_file_range")
if _sync_file_range is not None:
    _sync_file_range.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
SYNC_FILE_RANGE_WRITE = 2
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02

HAVE_SYNCFS = _syncfs is not None
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16


def syncfs(fd: int) -> None:
    """Write out everything of the file system that holds ``fd`` and wait (``syncfs(2)``)."""
    if _syncfs is None:
        os.sync()
        return
    if _syncfs(fd) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written (a write may take only part of it)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_pieces(fd: int, pieces: Sequence[bytes]) -> None:
    """Write all of ``pieces`` one after the other with ``os.writev``: no join into one
    buffer first (a write may take only part of them)."""
    views = deque(memoryview(piece) for piece in pieces if len(piece))
    while views:
        written = os.writev(fd, list(itertools.islice(views, _IOV_MAX)))
        while written:
            if written < len(views[0]):
                views[0] = views[0][written:]
                break
            written -= len(views.popleft())


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages out, without waiting (a hint; no-op elsewhere)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes of the file at ``offset`` (they read as zeros; the size stays)."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
