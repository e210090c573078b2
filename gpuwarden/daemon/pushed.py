"""Samples pushed over HTTP (``POST /api/v1/quality``), waiting for the next cycle.

The HTTP thread queues them; the next cycle takes them and stores them with its own, so
every database write stays on the cycle's path. The latest sample of each pushed series
also stays on ``/metrics`` for a while (``PUSHED_TTL_S``), as a scraped gauge would,
though it is stored only once.
"""

from __future__ import annotations

import threading

from gpuwarden.model import Labels, Sample

#: Pushed samples waiting for the next cycle at most; a push past it is refused (503).
MAX_PUSHED_SAMPLES = 10_000
#: Seconds a pushed series stays on ``/metrics`` after its latest sample.
PUSHED_TTL_S = 600.0


class PushedSamples:
    """The queue between the HTTP thread and the cycle; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[Sample] = []
        self._latest: dict[tuple[str, Labels], Sample] = {}

    def push(self, samples: list[Sample]) -> None:
        """Queue externally pushed samples for the next cycle (bounded)."""
        with self._lock:
            if len(self._waiting) + len(samples) > MAX_PUSHED_SAMPLES:
                raise OverflowError("too many pushed samples waiting for the next cycle")
            self._waiting.extend(samples)
            for sample in samples:
                self._latest[(sample.signal, sample.labels)] = sample

    def take(self) -> list[Sample]:
        """What was pushed since the last call, for the cycle to store."""
        with self._lock:
            taken, self._waiting = self._waiting, []
        return taken

    def recent(self, now: float) -> list[Sample]:
        """The latest sample of each pushed series younger than ``PUSHED_TTL_S``."""
        cutoff = now - PUSHED_TTL_S
        with self._lock:
            for key in [k for k, s in self._latest.items() if s.ts < cutoff]:
                del self._latest[key]
            return list(self._latest.values())
