"""Delivery's threads sleep until there is work: the router until an event, its next
timer or a stop; the delivery workers and the audit writer until something is queued or
they are stopped. None of them wakes on a period when idle, and stopping stays prompt.
"""

from __future__ import annotations

import threading
import time

import pytest

from gpuwarden.alerts.audit import AuditLog
from gpuwarden.alerts.dispatch import MAX_SLEEP_S, Dispatcher
from gpuwarden.storage import Store
from tests.alerts.conftest import FakeTime, Harness, Recorder, action, firing, make_alert


def record_router_sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """How long each router of this test chose to sleep, in order."""
    sleeps: list[float] = []
    sleep_for = Dispatcher._sleep_for

    def recording(self: Dispatcher, now: float) -> float:
        s = sleep_for(self, now)
        sleeps.append(s)
        return s

    monkeypatch.setattr(Dispatcher, "_sleep_for", recording)
    return sleeps


def test_idle_router_sleeps_until_its_next_timer(harness: Harness, recorder: Recorder,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps = record_router_sleeps(monkeypatch)
    harness(action(url=recorder.url))
    time.sleep(0.6)  # a router polling every 0.1 s would have slept ~6 times
    # Once before the dead-letter count's timer (60 s) was scheduled, once after.
    assert 1 <= len(sleeps) <= 2
    assert all(s > MAX_SLEEP_S - 5 for s in sleeps)


def test_group_wait_timer_fires_on_time(harness: Harness, recorder: Recorder) -> None:
    d = harness(action(url=recorder.url, group_wait=0.3))
    started = time.monotonic()
    d.submit([firing(make_alert())])
    (req,) = recorder.wait(1, timeout=10)
    assert req.at - started >= 0.3  # not before group_wait
    assert d.wait_idle()


def test_fake_clock_is_still_looked_at(harness: Harness, recorder: Recorder) -> None:
    """A clock moved by hand wakes nobody: without a poll given, the router polls it."""
    clock = FakeTime(1_700_000_000.0)
    d = harness(action(url=recorder.url, group_wait=30.0), clock=clock, wait=clock.wait,
                poll=None)
    d.submit([firing(make_alert())])
    time.sleep(0.3)
    assert recorder.requests == []  # 30 s of group_wait on the fake clock
    clock.advance(31.0)
    recorder.wait(1, timeout=10)


def test_stop_of_idle_threads_is_prompt(harness: Harness, recorder: Recorder) -> None:
    d = harness(action("a", url=recorder.url), action("b", url=recorder.url + "/b"))
    d.submit([firing(make_alert(actions=("a", "b")))])
    recorder.wait(2, timeout=10)
    assert d.wait_idle()
    time.sleep(0.3)  # every thread asleep with nothing to do
    stopper = threading.Thread(target=d.stop, args=(2.0,), daemon=True)
    stopper.start()
    stopper.join(15)
    assert not stopper.is_alive()
    threads = [d._router_thread, *(w.thread for w in d._workers.values())]
    assert d.audit is not None and d.audit._thread is not None
    threads.append(d.audit._thread)
    for t in threads:
        assert t is not None
        t.join(5)
        assert not t.is_alive(), t.name


def test_idle_audit_writer_writes_what_comes_and_stops(dstore: Store) -> None:
    log = AuditLog(dstore.engine, background=True)
    try:
        time.sleep(0.3)  # asleep on an empty queue
        log.record(action="hook", result="sent", fingerprint="f1")
        assert log.flush(10)
        assert [(r.action, r.result) for r in log.query()] == [("hook", "sent")]
    finally:
        log.close(2.0)
    assert log._thread is not None
    log._thread.join(5)
    assert not log._thread.is_alive()
