"""Freed memory goes back to the OS: what keeps the daemon's RSS flat on a long run.

Run in a fresh interpreter so that the arenas measured are this test's only. The
arrays are freed by the thread that allocated them, in its own arena, with a live
allocation after them so that the arena cannot shrink from its top by itself: the
state a chunk cut or an oversized body leaves behind.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = """
import threading
import numpy as np
from gpuwarden.native_memory import limit_arenas, release_freed_memory

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

print(int(limit_arenas(2)))
keep = []
def work():
    arrays = [np.ones(8 * 1024) for _ in range(2000)]  # 64 KiB each, 125 MiB in all
    keep.append(np.ones(16))
    del arrays

thread = threading.Thread(target=work)
thread.start()
thread.join()
before = rss_kib()
release_freed_memory(0)  # too small to be worth a trim: nothing happens
unchanged = rss_kib()
release_freed_memory()
print(before, unchanged, rss_kib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_arena_pages_are_returned() -> None:
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         check=True, timeout=60).stdout.split()
    limited, before, unchanged, after = (int(x) for x in out)
    assert limited == 1
    assert unchanged > before - 10 * 1024  # freed but still held by the arena
    assert after < before - 40 * 1024  # tens of MiB handed back


MMAP_SCRIPT = """
import sys
import numpy as np
from gpuwarden.native_memory import fix_mmap_threshold

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

fixed = sys.argv[1] == "fixed"
if fixed:
    assert fix_mmap_threshold(256 * 1024)
big = np.ones(512 * 1024)  # 4 MiB, mapped; freeing it raises glibc's threshold
del big
arrays = []
for _ in range(100):  # 300 KiB blocks with a live allocation after each: a cycle's churn
    arrays.append(np.ones(300 * 128))
    arrays.append(np.ones(1024))  # 8 KiB: from malloc, not numpy's small-block cache
before = rss_kib()
del arrays[::2]
print(before, rss_kib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_a_fixed_mmap_threshold_returns_big_blocks_when_freed() -> None:
    """Once a big mapped block was freed, glibc serves blocks below its size from the
    heap, where the small live ones between them keep their pages: with the threshold
    fixed (as the daemon does at start) they are mapped, and freed they are gone."""
    def freed_kib(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", MMAP_SCRIPT, mode], capture_output=True,
                             text=True, check=True, timeout=60).stdout.split()
        before, after = (int(x) for x in out)
        return before - after

    assert freed_kib("glibc") < 5 * 1024  # 29 MiB freed, held in the heap's holes
    assert freed_kib("fixed") > 25 * 1024  # handed back at once
