"""Keeping glibc's malloc from holding memory the daemon has freed.

numpy arrays and response bodies are allocated with ``malloc``. glibc gives each thread
that allocates its own arena (up to 8 per core) and keeps freed memory in it for reuse:
a daemon whose cycle runs on any of APScheduler's pool threads, whose store writer cuts
chunks on another and whose scrapes read bodies on eight more spreads its head over many
arenas, and each keeps the holes its frees leave. Measured on the soak benchmark
(100 ms, 8 GPUs, 4 servers): two arenas of ~30 MiB each, of which ``malloc_trim``
returned 40 MiB. So the daemon caps the number of arenas at start
(:func:`limit_arenas`), keeps big blocks out of the arenas (:func:`fix_mmap_threshold`)
and hands freed pages back after the big frees it knows of: a
chunk cut, an oversized body (:func:`release_freed_memory`).

Other frees are not known where they happen: a cycle's peaks (the derived signals'
window reads every few seconds, the hour of histograms every minute: ~15-20 MiB each
at 280 KB server payloads) leave holes that later, longer-lived allocations pin, and
RSS ratchets up with every peak. :class:`PeriodicTrim` hands them back after a cycle
at most every ``every_s`` seconds: ``malloc_trim(0)`` costs 0.2-0.7 ms there, so at
10 s it is a few hundredths of a millisecond per 1 s cycle (measured: 113-118 MiB
instead of 116-128 MiB after 3 minutes, 8 simulated GPUs + 4 servers of 280 KB).

Everything here is a no-op where the C library is not glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import functools
import sys
from typing import Any

#: ``mallopt`` parameters of glibc's malloc.h: the most arenas malloc creates, and the
#: size from which a block gets its own mapping (returned to the OS when freed).
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3
#: Bytes freed below which a trim is not worth its ~1 ms.
TRIM_AFTER_BYTES = 1024 * 1024


@functools.cache
def _libc() -> Any:
    """The C library if it has glibc's ``malloc_trim`` and ``mallopt``, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        trim, mallopt = libc.malloc_trim, libc.mallopt
    except (OSError, AttributeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return libc


def limit_arenas(count: int) -> bool:
    """At most ``count`` malloc arenas from now on (call before threads start)."""
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_ARENA_MAX, count))


def fix_mmap_threshold(nbytes: int) -> bool:
    """Blocks of ``nbytes`` or more get their own mapping from now on, for good.

    glibc starts at 128 KiB but raises the threshold to the size of each mapped block
    freed (up to 32 MiB), so once the store has freed a page of the head (its rows x
    series x 8 bytes: 3.4 MiB at 280 KB payloads with 64-row pages) every block below
    that size comes from the heap, where the long-lived ones (the next pages, a cut's
    blocks) pin the holes the cycle's short-lived ones leave: the heap grew to ~55 MiB
    with 23 MiB of it free at 280 KB payloads. A fixed threshold keeps big blocks out of
    the heap.
    """
    libc = _libc()
    return bool(libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, nbytes))


def release_freed_memory(size: int = TRIM_AFTER_BYTES) -> None:
    """Give the free pages of every arena back to the OS after ``size`` bytes were freed.

    ``malloc_trim(0)`` costs about a millisecond, so smaller frees are not worth it.
    """
    libc = _libc()
    if size >= TRIM_AFTER_BYTES and libc is not None:
        libc.malloc_trim(0)


class PeriodicTrim:
    """Hands freed pages back at most once every ``every_s`` seconds (module docstring).

    Called by one thread (the daemon's cycle, after each cycle); ``due`` compares the
    monotonic clock the caller passes, so the call itself costs nothing until a trim is
    due.
    """

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._next = 0.0
        self.trims = 0  # for tests

    def due(self, now: float) -> bool:
        """Trim now (and not again for ``every_s`` seconds) if the last trim is old enough."""
        if now < self._next:
            return False
        self._next = now + self.every_s
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)
        self.trims += 1
        return True
