"""The pending buffer: bounded, oldest dropped first, never a cycle being written."""

from __future__ import annotations

import numpy as np

from gpuwarden.storage.head import Entry, Part
from gpuwarden.storage.pending import PendingBuffer


def cycle(n: int, t: int = 0) -> Entry:
    ids = np.arange(n, dtype=np.int64)
    part = Part(ids, np.full(n, t, np.int64), np.zeros(n))
    return Entry([part], t, t, n)


def test_bounded_by_cycles_and_by_samples_dropping_the_oldest() -> None:
    buffer = PendingBuffer(max_cycles=3, max_samples=10)
    cycles = [cycle(2, t) for t in range(4)]
    assert [buffer.add(c) for c in cycles[:3]] == [[], [], []]
    assert buffer.add(cycles[3]) == [cycles[0]]  # a fourth cycle
    assert buffer.samples == 6
    big = cycle(7, 9)
    assert buffer.add(big) == [cycles[1], cycles[2]]  # 2 + 2 + 7 > 10, then 2 + 7
    assert buffer.samples == 9


def test_one_cycle_is_kept_whatever_its_size() -> None:
    buffer = PendingBuffer(max_cycles=1, max_samples=1)
    huge = cycle(5)
    assert buffer.add(huge) == []
    assert buffer.samples == 5


def test_cycles_being_written_are_not_dropped_then_popped_once_written() -> None:
    buffer = PendingBuffer(max_cycles=2, max_samples=100)
    first, second = cycle(1, 0), cycle(1, 1)
    buffer.add(first)
    buffer.add(second)
    assert buffer.start_writing() == [first, second]
    third = cycle(1, 2)
    assert buffer.add(third) == []  # the oldest is being written: over the bound meanwhile
    buffer.written(2)
    buffer.done_writing()
    assert buffer.start_writing() == [third]
    buffer.done_writing()
    fourth, fifth = cycle(1, 3), cycle(1, 4)
    buffer.add(fourth)
    assert buffer.add(fifth) == [third]  # not in flight any more: dropped as usual
