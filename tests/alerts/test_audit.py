"""Audit trail, dead letters, ``gpuwarden audit`` and model history, on SQLite and
PostgreSQL (the ``backend`` fixture of the storage tests)."""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path

import pytest

from gpuwarden.alerts.audit import AuditLog, target_text
from gpuwarden.alerts.receivers.base import RetryPolicy
from gpuwarden.alerts.served_models import ModelHistory
from gpuwarden.cli.alerts import add_audit_command
from gpuwarden.model import Sample, make_labels
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


def test_audit_cli(backend: Backend, tmp_path: Path,
                   capsys: pytest.CaptureFixture[str]) -> None:
    store = backend.open(node="n1")
    log = AuditLog(store.engine)
    log.record(action="oncall", result="sent", labels={"alertname": "ServerDown"},
               fingerprint="f1", http_status=202, attempt=1)
    log.record(action="oncall", result="suppressed", labels={"alertname": "TTFTP95High"},
               fingerprint="f2", reason="inhibited by ServerDown")
    log.record(action="old", result="sent", labels={"alertname": "X"}, ts=time.time() - 7200)
    config = tmp_path / "gw.toml"
    config.write_text(f'node = "n1"\n[storage]\nurl = "{backend.url}"\n')
    parser = argparse.ArgumentParser()
    add_audit_command(parser.add_subparsers())

    args = parser.parse_args(["audit", "--config", str(config), "--since", "1h"])
    assert args.func(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2
    assert "sent" in out[0] and "ServerDown{}" in out[0] and "http=202" in out[0]
    assert "(inhibited by ServerDown)" in out[1]

    args = parser.parse_args(["audit", "--config", str(config), "--since", "3h", "--json",
                              "--action", "old"])
    assert args.func(args) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["action"] == "old" and row["target"] == "X{}"

    args = parser.parse_args(["audit", "--config", str(config), "--since", "soon"])
    assert args.func(args) == 2


def test_target_text() -> None:
    assert target_text({"alertname": "A", "b": "2", "a": "1"}) == 'A{a="1", b="2"}'


def kv(server: str, model: str, t: float) -> Sample:
    return Sample("kv_cache_usage_ratio", make_labels(node="n1", server=server, model=model),
                  0.5, t)


def test_model_history_survives_restart(backend: Backend) -> None:
    store = backend.open(node="n1")
    mh = ModelHistory(store.engine, node="n1", touch_every=10.0)
    mh.observe([kv("vllm-0", "m-v1", T0), kv("vllm-1", "other", T0)], T0)
    for k in range(1, 30):
        mh.observe([kv("vllm-0", "m-v1", T0 + k)], T0 + k)
    mh.observe([kv("vllm-0", "m-v2", T0 + 60)], T0 + 60)
    assert mh.current_model("vllm-0") == "m-v2" and mh.previous_model("vllm-0") == "m-v1"

    again = ModelHistory(store.engine, node="n1")
    assert again.annotations("vllm-0") == {"current_model": "m-v2", "previous_model": "m-v1"}
    assert again.annotations("vllm-1") == {"current_model": "other"}
    assert again.annotations("vllm-9") == {}
    assert ModelHistory(store.engine, node="n2").current_model("vllm-0") is None
    # A -> B -> A: the previous model is B.
    again.observe([kv("vllm-0", "m-v1", T0 + 120)], T0 + 120)
    third = ModelHistory(store.engine, node="n1")
    assert (third.current_model("vllm-0"), third.previous_model("vllm-0")) == ("m-v1", "m-v2")


def test_model_history_multi_model_and_gpu_labels_ignored() -> None:
    mh = ModelHistory(None, node="n1")
    mh.observe([kv("s", "base", T0), kv("s", "lora-a", T0),
                Sample("gpu_up", make_labels(node="n1", gpu="0", model="H100"), 1.0, T0)], T0)
    assert mh.current_model("s") == "base,lora-a"
    assert mh.current_model("") is None


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
