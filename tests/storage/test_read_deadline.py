"""Reads with a deadline: a database that does not answer costs one deadline, then none."""

from __future__ import annotations

import threading
import time

import pytest

from gpuwarden.errors import StoreUnavailable
from gpuwarden.storage.read_deadline import ReadDeadline


def test_without_a_deadline_the_read_runs_in_the_caller() -> None:
    reads = ReadDeadline(None)
    assert reads.run(threading.current_thread) is threading.current_thread()
    reads.close()


def test_a_stuck_read_fails_once_then_at_once_until_it_returns() -> None:
    reads = ReadDeadline(0.05)
    thaw = threading.Event()
    try:
        assert reads.run(lambda: 42) == 42
        with pytest.raises(StoreUnavailable, match=r"did not answer a read within 0\.05s"):
            reads.run(lambda: thaw.wait(5))
        assert reads.timeouts_total == 1
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="earlier read is still waiting"):
            reads.run(lambda: 1)
        assert time.monotonic() - started < 0.05  # no thread, no wait: the loop goes on
        thaw.set()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                assert reads.run(lambda: 2) == 2
                break
            except StoreUnavailable:
                time.sleep(0.01)
        else:
            pytest.fail("reads did not resume after the stuck one returned")
        assert reads.timeouts_total == 1
    finally:
        thaw.set()
        reads.close()
