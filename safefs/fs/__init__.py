"""The FUSE file system of safefs: ``safefs mount`` (pyfuse3 + trio), an app of the gateway.

Module map (one concern each):

- ``dirrecord``: the deterministic directory-record codec (tag-501 StructuredData content).
- ``meta``: the local SQLite metadata (inodes, entries, xattrs, sync state): the canonical schema.
- ``cache``: plaintext cache files per inode, block presence, LRU eviction of clean data.
- ``remote``: the gateway seen by the file system (records, content upload and ranged reads).
- ``merge``: three-way merge of a directory's base, remote and local states.
- ``sync``: ``SyncTask``: uploads idle dirty files, publishes directories, pulls remote changes.
- ``operations``: ``Operations(pyfuse3.Operations)``: FUSE requests onto the pieces above.
- ``ctrl``: the control file through which ``safefs umount/sync/status`` talk to the daemon.
- ``mount``: the daemon's entry point (trio, pyfuse3, signals, systemd notification).

This module holds the constants shared by them, and :func:`run_all`.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: StructuredData type tag of directory records (versioned: every version stays readable).
DIR_TAG = 501

#: Files up to this size travel inside their directory record instead of in a pack: smaller
#: than a pack reference's worth of requests on a cold read, and no pack range to fetch ...
INLINE_MAX = 4 * 1024
#: ... as long as the inline content of one directory stays under this: every version of the
#: record carries all of it, and every change in the directory publishes it again.
INLINE_BUDGET = 256 * 1024

#: Default seconds a closed file stays unchanged before it is uploaded (``--upload-delay``).
#: Short enough that a long copy uploads while it runs, on the core the copy leaves idle (an
#: untar of 2,434 files: 3.55-3.74 s to synced at 1 s against 3.84-4.15 s at 2 s, 4 interleaved
#: rounds); long enough that a file saved a few times in a row goes up once.
UPLOAD_DELAY = 1.0

#: Worker threads for CPU work (record encoding and decoding) per kind of work: leave cores to
#: the FUSE requests and the gateway.
CPU_THREADS = max(1, (os.cpu_count() or 2) // 2)

#: Longest file name (bytes), as reported by statfs.
NAME_MAX = 255

#: The app identity of the mount. It is fixed so that every device of one account derives the
#: same SYMMETRIC key and can read the directories the others wrote.
APP_INFO = {
    "name": "safefs mount",
    "id": "net.safefs.mount",
    "vendor": "safefs",
    "version": "1",
}

#: BLAKE3 derive_key context turning the account's public signing key into the root's record name.
ROOT_CONTEXT = "safefs root directory v1"

#: Namespace of the read-only virtual attributes.
SAFE_XATTR_PREFIX = b"user.safe."


async def run_all(work: Callable[[T], Awaitable[object]], items: list[T],
                  limit: int | None = None) -> None:
    """Run ``work`` on every item concurrently (``limit`` at a time); once all have finished,
    raise the first failure as itself, so callers catch plain exceptions, not groups."""
    import trio  # here: ``safefs sync`` and ``status`` import this package, not trio

    limiter = trio.CapacityLimiter(limit or max(len(items), 1))
    failures: list[Exception] = []

    async def one(item: T) -> None:
        async with limiter:
            try:
                await work(item)
            except Exception as exc:  # re-raised below, as itself
                failures.append(exc)

    async with trio.open_nursery() as nursery:
        for item in items:
            nursery.start_soon(one, item)
    if failures:
        raise failures[0]
