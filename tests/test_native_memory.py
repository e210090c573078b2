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
