"""glibc malloc settings for processes that move data in chunk-sized buffers.

Every chunk passes through a few buffers of up to 4 MiB (plain, compressed, sealed, read back).
By default glibc serves allocations that large with ``mmap`` and unmaps them when freed, so each
buffer is page-faulted in again, a thousand faults per buffer: encrypting 1 GiB took 800,000
faults and 3 s of system time, against 19,000 faults and 0.9 s with a high mmap threshold and
trim threshold (3.5 s -> 2.0 s wall time). Both are needed: a high mmap threshold alone leaves
heap trimming giving the pages back (a 16 MiB trim threshold still took 790,000 faults).

Keeping freed memory for reuse costs resident memory in every malloc arena, and glibc makes an
arena per busy thread: buffers allocated by the event loop, the trio workers and the chunk
workers each left their own reserve, and the gateway's peak RSS during a 1 GiB upload was 177
MiB for 40 MiB of live buffers. One arena brings it to 136-140 MiB at the same speed. (The engine
alone, two threads doing nothing but chunk work, is faster with an arena each: the benchmarks
measure it that way, ``tune(single_arena=False)``, so that it is not handicapped.)
"""

from __future__ import annotations

import logging

from safefs.osutil import libc_function

log = logging.getLogger(__name__)

# mallopt(3) parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8

SETTINGS = {
    # glibc's upper limit for the mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2).
    M_MMAP_THRESHOLD: 32 * 1024 * 1024,
    # Freed memory is kept for reuse rather than trimmed: resident memory stays at its peak
    # (which is what the memory targets bound) instead of being faulted in again.
    M_TRIM_THRESHOLD: 512 * 1024 * 1024,
}


def release_free_memory() -> None:
    """Give the free memory malloc keeps (see ``M_TRIM_THRESHOLD``) back to the system.

    Keeping it is what makes back-to-back chunks cheap, but what one large transfer leaves free
    is laid out differently from what the next needs: after alternating 1 GiB uploads and
    downloads the gateway's peak RSS grew from 137 MiB to 150 MiB before it stopped, and a
    download left 129 MiB resident. Called after a large transfer (it takes a few milliseconds
    for 100 MiB), it keeps each one starting from the idle footprint.
    """
    trim = libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def tune(single_arena: bool = True) -> bool:
    """Apply the settings to this process (call before starting threads); whether it could."""
    mallopt = libc_function("mallopt")
    if mallopt is None:
        return False  # keep the defaults
    settings = SETTINGS | ({M_ARENA_MAX: 1} if single_arena else {})
    ok = all([mallopt(parameter, value) for parameter, value in settings.items()])
    if not ok:
        log.debug("mallopt refused some of the buffer settings")
    return ok
