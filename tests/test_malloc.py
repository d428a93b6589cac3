"""glibc malloc settings of safefs processes, checked in a fresh interpreter each."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROGRAM = """
import sys
from safefs import malloc

def rss_kib():
    with open("/proc/self/status") as status:
        return int(next(line for line in status if line.startswith("VmRSS:")).split()[1])

assert malloc.tune()
buffers = [bytearray(b"x" * (1 << 20)) for _ in range(100)]  # below the mmap threshold
del buffers
kept = rss_kib()
malloc.release_free_memory()
print(kept, rss_kib())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                    reason="malloc settings apply to glibc only")
def test_freed_buffers_stay_resident_until_released() -> None:
    """The tuned settings keep freed buffers for reuse (no page faults for the next chunk);
    release_free_memory gives them back after a large transfer."""
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True,
                            check=True)
    kept, released = map(int, result.stdout.split())
    assert kept > released + 80 * 1024  # most of the 100 MiB went back
