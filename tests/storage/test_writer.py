"""The store writer: collection appends, a thread writes, a hung database is counted.

Each test runs on SQLite and on PostgreSQL (``backend``). A database that hangs without
answering is played by holding the store's write lock from the test, which stops the
writer inside ``persist`` exactly where a frozen server would (the real frozen
PostgreSQL is in ``tests/faults/test_postgres_faults.py``); a database that answers with
errors is a real lock on its tables (``backend.lock_writes``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import event

from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import open_store
from gpuwarden.storage.writer import StoreWriter
from tests.storage.conftest import T0, Backend, gpu_cycle

GPUS = 4


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def stored_timestamps(backend: Backend, node: str = "node-a") -> list[float]:
    """Every stored timestamp of GPU 0, read by a fresh store (what survives)."""
    store = backend.open(node=node)
    try:
        series = store.query("gpu_utilization_ratio", {"gpu": "0"})
        return [] if not series else [float(t) for t in series[0].timestamps]
    finally:
        store.close()


def test_hung_write_blocks_no_cycle_is_counted_and_everything_lands(backend: Backend) -> None:
    store = backend.open()
    writer = StoreWriter(store, stall_after=0.2)
    writer.start()
    store.write(gpu_cycle(0))
    store._write_lock.acquire()  # the writer's next persist hangs, as on a frozen server
    try:
        started = time.monotonic()
        for k in range(1, 31):
            store.append(gpu_cycle(k))  # what the collection loop does every cycle
            writer.kick()
            writer.check()
            time.sleep(0.02)
        appending = time.monotonic() - started
        assert appending < 0.02 * 30 + 1.0  # no cycle waited on the hung write
        status = writer.status()
        assert status.degraded and status.last_error == "not answering"
        assert status.pending_samples == 30 * GPUS
        assert store.write_errors["timeout"] >= 2  # about one per stall_after of hanging
        # Detectors read the cycles from memory meanwhile.
        recent = store.query("gpu_utilization_ratio", {"gpu": "0"}, T0, T0 + 30)
        assert len(recent[0].timestamps) == 31
    finally:
        store._write_lock.release()
    wait_for(lambda: store.pending_samples == 0)
    assert not writer.status().degraded
    assert writer.stop(5.0)
    store.close()
    assert stored_timestamps(backend) == [T0 + k for k in range(31)]  # in order, once each


def test_failed_writes_counted_by_reason_then_written(backend: Backend) -> None:
    store = backend.open()
    writer = StoreWriter(store, stall_after=5.0)
    writer.start()
    with backend.lock_writes():
        for k in range(5):
            store.append(gpu_cycle(k))
            writer.kick()
            time.sleep(0.1)
        wait_for(lambda: store.write_errors_total > 0)
        reason = "locked" if backend.name == "sqlite" else "timeout"
        assert set(store.write_errors) == {reason}
        assert writer.status().degraded
    wait_for(lambda: store.pending_samples == 0)
    assert writer.status().to_json()["store"] == "ok"
    assert writer.stop(5.0)
    store.close()
    assert stored_timestamps(backend) == [T0 + k for k in range(5)]


def test_stop_gives_up_on_a_database_that_does_not_answer(backend: Backend) -> None:
    store = backend.open()
    writer = StoreWriter(store, stall_after=0.2)
    writer.start()
    store.append(gpu_cycle(0))
    store._write_lock.acquire()
    try:
        writer.kick()
        started = time.monotonic()
        assert writer.stop(0.3) is False  # the daemon exits instead of hanging on SIGTERM
        assert time.monotonic() - started < 2.0
    finally:
        store._write_lock.release()


def test_jobs_run_after_each_write_and_a_failing_job_does_not_stop_the_writer(
        backend: Backend) -> None:
    store = backend.open()
    writer = StoreWriter(store)
    calls: list[str] = []

    def broken() -> None:
        calls.append("broken")
        raise RuntimeError("boom")

    writer.add_job("broken", broken)
    writer.add_job("state", lambda: calls.append("state"))
    writer.start()
    for k in range(3):
        store.append(gpu_cycle(k))
        writer.kick()
        wait_for(lambda k=k: calls.count("state") > k)  # type: ignore[misc]
    assert store.pending_samples == 0
    assert writer.stop(5.0)


def test_full_disk_is_counted_and_written_once_there_is_room(tmp_path: Path) -> None:
    """SQLite's ``max_page_count`` makes the file unable to grow: SQLITE_FULL, exactly the
    error a full disk gives ("database or disk is full"), without filling a real disk."""
    store = open_store(f"sqlite:///{tmp_path / 'gw.db'}", node="node-a")
    room = {"pages": 0}

    @event.listens_for(store.engine, "connect")
    def _cap(dbapi_conn: Any, _record: Any) -> None:
        if room["pages"]:
            dbapi_conn.execute(f"PRAGMA max_page_count = {room['pages']}")

    with store.engine.connect() as conn:
        room["pages"] = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0)
    store.engine.dispose()  # new connections get the cap
    writer = StoreWriter(store, stall_after=5.0)
    writer.start()
    big = [Sample("gpu_utilization_ratio", make_labels(node="node-a", gpu=str(g)), 0.5, T0)
           for g in range(2000)]  # new series rows: the file must grow
    store.append(big)
    writer.kick()
    wait_for(lambda: store.write_errors["disk_full"] > 0)
    assert writer.status().degraded and store.pending_samples == 2000
    room["pages"] = 0  # the operator freed some space
    store.engine.dispose()
    writer.kick()
    wait_for(lambda: store.pending_samples == 0)
    assert writer.stop(5.0)
    store.close()
    reopened = open_store(f"sqlite:///{tmp_path / 'gw.db'}", node="node-a")
    try:
        assert len(reopened.query("gpu_utilization_ratio")) == 2000
    finally:
        reopened.close()
