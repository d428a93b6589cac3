"""Code that test_store.py runs in child processes (spawned, so it must import little).

Two processes racing on one store directory is the case the local store's locking exists for;
a process that dies in the middle of a write is the case its write order exists for.
"""

from __future__ import annotations

import os
import random
import threading

from safefs.store import VersionConflict, chunk_name, open_store

# Set in each pool process by init_barrier, so racing workers start their work together.
_barrier: threading.Barrier | None = None
BARRIER_TIMEOUT = 60.0


def init_barrier(barrier: threading.Barrier) -> None:
    global _barrier
    _barrier = barrier


def _wait_for_the_others() -> None:
    assert _barrier is not None
    _barrier.wait(BARRIER_TIMEOUT)


def make_chunk(seed: int, size: int = 2000) -> tuple[bytes, bytes]:
    """A deterministic ``(name, data)`` pair, the same in every process."""
    data = random.Random(seed).randbytes(size)
    return chunk_name(data), data


def cas_attempts(url: str, key: bytes, attempts: int) -> list[tuple[int, bytes]]:
    """Try ``attempts`` read-then-CAS updates; return the ``(version, value)`` of each success."""
    written = []
    with open_store(url) as store:
        _wait_for_the_others()
        for attempt in range(attempts):
            version, _ = store.get_record(key)
            value = f"{os.getpid()}:{attempt}".encode()
            try:
                written.append((store.cas_record(key, version, value), value))
            except VersionConflict:
                pass
    return written


def put_chunks(url: str, seeds: list[int]) -> list[bool]:
    """Open the store (maybe creating it while another process does) and put these chunks."""
    _wait_for_the_others()
    with open_store(url) as store:
        return [store.put_chunk(*make_chunk(seed)) for seed in seeds]


def die_during_put(url: str, seed: int, crash_in: str) -> None:
    """Put and flush a chunk and kill the process inside ``os.<crash_in>`` (write or link).

    ``os._exit`` skips every cleanup, like a power cut or ``kill -9`` at that instant; a
    crash in ``write`` first writes half the chunk, leaving a torn temp file.
    """
    store = open_store(url)
    real_write = os.write

    def crash(*args: object) -> None:
        if crash_in == "write":
            fd, data = args
            real_write(fd, data[: len(data) // 2])
        os._exit(3)

    setattr(os, crash_in, crash)
    store.put_chunk(*make_chunk(seed))
    store.flush()
