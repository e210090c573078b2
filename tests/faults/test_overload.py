"""Overload is quiet and counted: skipped cycles and repeated failures, one line a minute.

An overrunning cycle (here: rule evaluation made slow on purpose) makes APScheduler skip
runs; an SRE wants the count on a dashboard (``gpuwarden_cycles_skipped_total``), not a
warning per skipped run in the journal. A store that keeps failing must not log a line
per cycle either.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon

INTERVAL = 0.1


def start_daemon(tmp_path: Path) -> Daemon:
    config = parse_config(
        f'node = "overload"\ninterval = "{int(INTERVAL * 1000)}ms"\n'
        f'listen = "127.0.0.1:0"\n[storage]\nurl = "sqlite:///{tmp_path}/gw.db"\n'
        '[gpu]\nsource = "sim"\nsim_gpus = 2\n'
    )
    daemon = Daemon(config)
    daemon.start()
    return daemon


def self_metric(daemon: Daemon, name: str) -> dict[str, float]:
    text = requests.get(f"http://127.0.0.1:{daemon.http_port}/metrics", timeout=5).text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_overrunning_cycles_are_counted_and_logged_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.INFO)
    daemon = start_daemon(tmp_path)
    try:
        evaluate = daemon.cycle.evaluate_rules

        def slow_rules(*args: Any) -> Any:
            time.sleep(3.5 * INTERVAL)  # each cycle overruns the next ~3 scheduled runs
            return evaluate(*args)

        monkeypatch.setattr(daemon.cycle, "evaluate_rules", slow_rules)
        time.sleep(3.0)
        skipped = daemon.cycles_skipped_total
        assert skipped >= 5
        exported = self_metric(daemon, "gpuwarden_cycles_skipped_total")
        assert exported["gpuwarden_cycles_skipped_total"] >= 5
        assert requests.get(f"http://127.0.0.1:{daemon.http_port}/healthz",
                            timeout=5).status_code == 200
    finally:
        daemon.shutdown()
    lines = [r.getMessage() for r in caplog.records]
    assert not [m for m in lines if "maximum number of running instances" in m]
    assert len([m for m in lines if "collection cycle skipped" in m]) == 1


def test_a_store_that_keeps_failing_logs_once_a_minute(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    daemon = start_daemon(tmp_path)
    locker = sqlite3.connect(tmp_path / "gw.db", timeout=0.1, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline and daemon.store.write_errors["locked"] < 5:
            time.sleep(0.1)
        assert daemon.store.write_errors["locked"] >= 5
        locker.execute("ROLLBACK")
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and daemon.store.pending_samples:
            time.sleep(0.05)
        assert daemon.store.pending_samples == 0
    finally:
        locker.close()
        daemon.shutdown()
    failed = [r for r in caplog.records if "store write failed" in r.getMessage()]
    assert len(failed) == 1
    assert any("store writable again" in r.getMessage() for r in caplog.records)
