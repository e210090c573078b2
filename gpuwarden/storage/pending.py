"""The pending buffer: cycles accepted by ``Store.append`` and not yet in the head log.

Why bounded: while the database cannot be written (locked, away, frozen) the collection
loop keeps appending, and memory must not grow without limit. Past ``max_cycles`` cycles
or ``max_samples`` samples the oldest cycle is dropped (and counted by the store), unless
a persist is writing it right now: it will be in the database in a moment, and dropping
it would count it twice.

Shared by the collection loop (``add``) and the store's writer (``writing``,
``written``), so every method takes the buffer's own lock.
"""

from __future__ import annotations

import threading
from collections import deque

from gpuwarden.storage.head import Entry


class PendingBuffer:
    """Cycles in write order; a persist writes a prefix of them and then pops it."""

    def __init__(self, *, max_cycles: int, max_samples: int) -> None:
        self.max_cycles = max_cycles
        self.max_samples = max_samples
        self._lock = threading.Lock()
        self._entries: deque[Entry] = deque()
        self._samples = 0  # of the entries, kept as they come and go: add() runs every cycle
        self._in_flight: set[int] = set()  # ids of entries a persist is writing

    @property
    def samples(self) -> int:
        with self._lock:
            return self._samples

    def add(self, entry: Entry) -> list[Entry]:
        """Queue one cycle; return the cycles dropped to stay within the bounds."""
        dropped: list[Entry] = []
        with self._lock:
            self._entries.append(entry)
            self._samples += entry.count
            # The oldest cycle goes first, unless a persist is writing it right now.
            while len(self._entries) > 1 and (
                len(self._entries) > self.max_cycles or self._samples > self.max_samples
            ) and id(self._entries[0]) not in self._in_flight:
                old = self._entries.popleft()
                self._samples -= old.count
                dropped.append(old)
        return dropped

    def start_writing(self) -> list[Entry]:
        """The whole backlog, in order, kept from being dropped until :meth:`done_writing`."""
        with self._lock:
            batch = list(self._entries)
            self._in_flight = {id(e) for e in batch}
        return batch

    def written(self, count: int) -> None:
        """The first ``count`` cycles are in the head log (``add`` only adds at the right
        meanwhile, and cannot drop them while they are being written)."""
        with self._lock:
            for _ in range(count):
                self._samples -= self._entries.popleft().count

    def done_writing(self) -> None:
        """The write started by :meth:`start_writing` is over, written or not."""
        with self._lock:
            self._in_flight = set()
