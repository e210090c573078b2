"""The store writer's passes: one per cycle that wakes it, and still one about every
second for its jobs when no cycle does (``writer.IDLE_PERIOD_S``, ``KICKED_GRACE_S``)."""

from __future__ import annotations

import itertools
import time

from gpuwarden.storage.writer import IDLE_PERIOD_S, KICKED_GRACE_S, StoreWriter
from tests.storage.conftest import Backend, gpu_cycle


def test_one_pass_per_cycle_at_a_one_second_interval(backend: Backend) -> None:
    """Cycles a second apart, each a little late as collection makes them: the writer
    runs once per cycle, not once more when its idle timer fires just before a cycle."""
    store = backend.open()
    writer = StoreWriter(store)
    passes: list[float] = []
    writer.add_job("count", lambda: passes.append(time.monotonic()))
    writer.start()
    try:
        cycles = 4
        for k in range(cycles):
            store.append(gpu_cycle(k))
            writer.kick()
            time.sleep(IDLE_PERIOD_S + 0.05)  # the cycle's collection ran late
        assert store.pending_samples == 0
        assert len(passes) == cycles, passes
    finally:
        assert writer.stop(5.0)


def test_jobs_still_run_when_no_cycle_wakes_the_writer(backend: Backend) -> None:
    store = backend.open()
    writer = StoreWriter(store)
    passes: list[float] = []
    writer.add_job("count", lambda: passes.append(time.monotonic()))
    writer.start()
    try:
        store.append(gpu_cycle(0))
        writer.kick()
        time.sleep(3 * IDLE_PERIOD_S + KICKED_GRACE_S + 0.3)
        # The kicked pass, then one after the grace, then one each idle period.
        assert len(passes) >= 3, passes
        gaps = [b - a for a, b in itertools.pairwise(passes)]
        assert max(gaps) < IDLE_PERIOD_S + KICKED_GRACE_S + 0.5, gaps
    finally:
        assert writer.stop(5.0)
