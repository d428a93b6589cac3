"""Linux system calls the ``os`` module lacks, through ctypes (a few lines, no dependency),
and :func:`write_all` / :func:`write_pieces` / :func:`write_direct`.

Each is None where the C library does not have it; callers fall back on something portable.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import itertools
import mmap
import os
import threading
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

#: Direct I/O wants memory, file offsets and lengths in multiples of the device's logical
#: block; 4 KiB is one for every common device.
DIRECT_ALIGN = 4096
#: The aligned buffer each writing thread copies through (allocated on its first direct write).
DIRECT_BUFFER = 1024 * 1024
O_DIRECT = getattr(os, "O_DIRECT", 0)
#: Cleared the first time a file system refuses direct I/O (tmpfs before Linux 6.6, some FUSE
#: file systems): from then on every write goes through the page cache.
direct_io = O_DIRECT != 0
_direct_buffers = threading.local()


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


def open_new(path: str, direct: bool) -> tuple[int, bool]:
    """Create ``path`` (which must not exist) for writing; with ``direct``, for direct I/O if
    the file system allows it. Returns the descriptor and whether it is direct."""
    global direct_io
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    if direct and direct_io:
        try:
            return os.open(path, flags | O_DIRECT, 0o600), True
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            direct_io = False
    return os.open(path, flags, 0o600), False


def write_direct(fd: int, data: Any) -> None:
    """Write ``data`` to a new file opened by :func:`open_new` for direct I/O: its whole blocks
    go to the device from an aligned buffer, without a page-cache copy; the last part block
    (and everything, if the file system refuses) through the page cache."""
    global direct_io
    view = memoryview(data).cast("B")
    whole = len(view) - len(view) % DIRECT_ALIGN
    done = 0
    if whole:
        buffer = getattr(_direct_buffers, "buffer", None)
        if buffer is None:
            buffer = _direct_buffers.buffer = mmap.mmap(-1, DIRECT_BUFFER)  # page-aligned
        try:
            while done < whole:
                size = min(whole - done, DIRECT_BUFFER)
                buffer[:size] = view[done : done + size]
                with memoryview(buffer) as aligned:
                    done += os.write(fd, aligned[:size])
                if done % DIRECT_ALIGN:
                    break  # a short write left the alignment: the rest goes buffered
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            direct_io = False
    if done < len(view):
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~O_DIRECT)
        write_all(fd, view[done:])


def start_writeback(fd: int) -> None:
    """Start writing the file's dirty pages out, without waiting (a hint; no-op elsewhere)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE)


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Free ``length`` bytes of the file at ``offset`` (they read as zeros; the size stays)."""
    if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
