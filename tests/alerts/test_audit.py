"""Audit trail and dead letters, the background writer and its bounded queue, on SQLite
and PostgreSQL (the ``backend`` fixture of the storage tests)."""

from __future__ import annotations

import logging
import sqlite3
import time

import pytest

from gpuwarden.alerts.audit import AuditLog, target_text
from gpuwarden.alerts.receivers.base import RetryPolicy
from gpuwarden.storage import Store
from tests.storage.conftest import Backend, backend

from .conftest import Harness, Recorder, Reply, action, dstore, firing, make_alert

__all__ = ["backend", "dstore"]  # fixtures reused from the storage and delivery tests
T0 = 1_700_000_000.0


def test_audit_rows_round_trip(backend: Backend) -> None:
    store = backend.open(node="n1")
    log = AuditLog(store.engine, clock=lambda: T0)
    labels = {"alertname": "KVCacheNearFull", "server": "vllm-0", "node": "n1"}
    log.record(action="hook", result="sent", labels=labels, fingerprint="abc",
               http_status=200, attempt=1, detail={"status": "firing", "delivery": "msg_1"})
    log.record(action="hook", result="suppressed", labels=labels, fingerprint="abc",
               reason="cooldown 10m", ts=T0 + 5)
    rows = log.query(since=T0 - 1)
    assert [(r.result, r.http_status, r.attempt, r.reason) for r in rows] == [
        ("sent", 200, 1, None), ("suppressed", None, None, "cooldown 10m")]
    assert rows[0].target == 'KVCacheNearFull{node="n1", server="vllm-0"}'
    assert rows[0].detail == {"status": "firing", "delivery": "msg_1"}
    assert log.query(since=T0 + 1, result="suppressed")[0].ts == T0 + 5
    letter = log.add_dead_letter(action="hook", fingerprint="abc", payload="{}",
                                 last_error="HTTP 500", attempts=3)
    assert letter is not None and log.count_dead_letters() == 1
    log.mark_replayed(letter, attempts=1, ok=True, last_error=None)
    assert log.count_dead_letters() == 0
    (dl,) = log.dead_letters(pending_only=False)
    assert dl.attempts == 4 and dl.replayed_at == T0


def test_dispatcher_dead_letters_on_backend(backend: Backend, recorder: Recorder) -> None:
    store = backend.open(node="n1")
    h = Harness(store)
    try:
        recorder.default = Reply(503)
        d = h(action(url=recorder.url), retry=RetryPolicy(attempts=2, base=0.01))
        d.submit([firing(make_alert())])
        assert d.wait_idle()
        assert [r.result for r in h.audit()] == ["failed", "failed", "dead_letter"]
        assert d.audit is not None and d.audit.dead_letters()[0].attempts == 2
    finally:
        h.close()


def test_target_text() -> None:
    assert target_text({"alertname": "A", "b": "2", "a": "1"}) == 'A{a="1", b="2"}'


def test_background_writer_keeps_order_and_counts_what_does_not_fit(backend: Backend) -> None:
    """The dispatcher's log: writes return at once, land in order, and a full queue
    drops (and counts) rows instead of blocking the caller."""
    store = backend.open(node="n1")
    log = AuditLog(store.engine, clock=lambda: T0, background=True, queue_size=1000)
    try:
        for i in range(300):
            log.record(action="hook", result="sent", fingerprint=f"f{i:03d}", attempt=1)
        assert log.flush(20)
        rows = log.query(since=T0 - 1)
        assert [r.fingerprint for r in rows] == [f"f{i:03d}" for i in range(300)]
        assert log.dropped_total == 0
    finally:
        log.close(5)


def test_full_audit_queue_drops_and_counts_instead_of_blocking(dstore: Store) -> None:
    """The store is locked by another process: the writer is stuck, the bounded queue
    fills, further rows are dropped and counted; the rest land in order afterwards."""
    blocker = sqlite3.connect(str(dstore.engine.url.database), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        small = AuditLog(dstore.engine, clock=lambda: T0, background=True, queue_size=5)
        started = time.monotonic()
        for i in range(20):
            small.record(action="hook", result="sent", fingerprint=f"g{i:02d}")
        assert time.monotonic() - started < 0.5
        assert small.dropped_total == 15 and small.queued == 5
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert small.flush(20)
    small.close(1)
    kept = [r.fingerprint for r in AuditLog(dstore.engine).query(since=T0 - 1)]
    assert kept == [f"g{i:02d}" for i in range(5)]


def test_locked_store_is_a_warning_and_keeps_the_rows(dstore: Store,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """SQLite busy with another writer (the store's chunk cut, here another process's
    transaction) past the busy timeout: the rows wait and land in order once it is
    free; the log says so as a warning, not an error (nothing was lost)."""
    blocker = sqlite3.connect(str(dstore.engine.url.database), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    log = AuditLog(dstore.engine, clock=lambda: T0, background=True)
    try:
        with caplog.at_level(logging.WARNING, logger="gpuwarden.alerts.audit"):
            for i in range(3):
                log.record(action="hook", result="sent", fingerprint=f"w{i}")
            deadline = time.monotonic() + 10
            while not caplog.records and time.monotonic() < deadline:
                time.sleep(0.02)
            blocker.execute("ROLLBACK")
            assert log.flush(20)
    finally:
        blocker.close()
        log.close(5)
    assert [r.fingerprint for r in AuditLog(dstore.engine).query(since=T0 - 1)] == [
        "w0", "w1", "w2"]
    assert log.errors_total == 0
    levels = {r.levelname for r in caplog.records}
    assert levels == {"WARNING"}, caplog.text
    assert "3 rows kept, retrying" in caplog.text
