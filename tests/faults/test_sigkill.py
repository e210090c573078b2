"""SIGKILL loops on a SQLite store: nothing acknowledged is lost, nothing doubled.

Two victims, each killed at seeded random moments and restarted:

* the daemon itself (``gpuwarden run``), killed during start-up (the early first-cycle
  write, the head-log replay) and while cycling; before each kill the test notes what
  the daemon had acknowledged (``gpuwarden_samples_written_total``) and which samples
  the database held;
* a process writing through ``Store`` with a chunk span of a fraction of a second, so
  that kills land inside chunk cuts (chunks inserted and head-log rows deleted in one
  transaction); it prints each cycle ``Store.write`` returned for, and about half of
  the kills are aimed just after a chunk boundary, when the next write cuts.

Afterwards ``PRAGMA integrity_check`` is ``ok``, every acknowledged sample is stored,
and no series holds a timestamp twice.
"""

from __future__ import annotations

import math
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.faults.conftest import Daemons
from tests.faults.daemon_proc import NODE, wait_for
from tests.faults.kill_writer import SERIES, SIGNAL
from tests.faults.stored import Stored, read_stored

pytestmark = pytest.mark.slow


def integrity(db: Path) -> str:
    conn = sqlite3.connect(db)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def assert_kept(before: Stored, after: Stored) -> None:
    """Every sample stored before is still stored after."""
    for key, ts in before.by_series.items():
        missing = set(ts) - set(after.by_series.get(key, []))
        assert not missing, f"{len(missing)} samples of {key} lost"


def test_daemon_sigkill_loop(tmp_path: Path, daemons: Daemons) -> None:
    rng = random.Random(20_11)
    db = tmp_path / "gw.db"
    url = f"sqlite:///{db}"
    snapshots: list[Stored] = []
    acknowledged_runs = 0
    for i in range(12):
        started_ms = math.floor(time.time() * 1000)
        proc = daemons.start(url, name=f"run{i}", interval="100ms")
        # A third of the kills during start-up (first write, replay), the rest while cycling.
        time.sleep(rng.uniform(0.2, 1.0) if i % 3 == 0 else 0.0)
        written = None
        if i % 3:
            proc.wait_healthy()
            proc.wait_cycles(rng.randint(1, 8))
            written = proc.metric("gpuwarden_samples_written_total")
        stored = read_stored(url) if db.exists() else Stored()
        proc.popen.send_signal(signal.SIGKILL)
        proc.kill()  # reaps it
        if written is not None:
            # What /metrics acknowledged was in the database before the kill.
            assert stored.count_since(started_ms) >= written > 0, (i, written)
            acknowledged_runs += 1
        snapshots.append(stored)
    assert acknowledged_runs == 8

    # The daemon still starts on what the kills left, cycles, and stops cleanly.
    proc = daemons.start(url, name="final", interval="100ms")
    proc.wait_healthy()
    proc.wait_cycles(3)
    assert proc.stop() == 0
    assert integrity(db) == "ok"
    final = read_stored(url)
    assert final.duplicates() == {}, "samples stored twice"
    for snapshot in snapshots:
        assert_kept(snapshot, final)
    gpu0 = final.timestamps("gpu_utilization_ratio", gpu="0", node=NODE)
    assert len(gpu0) > len(snapshots[-1].timestamps("gpu_utilization_ratio", gpu="0"))


class Writer:
    """``kill_writer`` in a subprocess; its stdout says which cycles were acknowledged."""

    def __init__(self, url: str, span: float) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.faults.kill_writer", url, NODE, str(span)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.popen.stdout is not None
        self.stdout = self.popen.stdout
        ready = self.stdout.readline().strip()
        if ready != "ready":
            self.kill()
            raise AssertionError(f"writer did not start: {self.popen.stderr.read()}")  # type: ignore[union-attr]

    def kill(self) -> list[int]:
        """SIGKILL by PID; the timestamps it acknowledged before dying."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        acks = [int(line.split()[1]) for line in self.stdout.read().splitlines()
                if line.startswith("ack ")]
        self.stdout.close()
        if self.popen.stderr is not None:
            self.popen.stderr.close()
        return acks


def test_store_sigkill_loop_during_chunk_cuts(tmp_path: Path) -> None:
    rng = random.Random(11)
    span = 0.4  # seconds: a chunk cut every 0.4 s
    db = tmp_path / "gw.db"
    url = f"sqlite:///{db}"
    acknowledged: list[int] = []
    writers: list[Writer] = []
    try:
        for i in range(14):
            writer = Writer(url, span)
            writers.append(writer)
            if i % 2:  # aim just after the next boundary: the next write cuts the window
                now = time.time()
                time.sleep(math.ceil(now / span) * span - now + rng.uniform(0.0, 0.03))
            else:
                time.sleep(rng.uniform(0.05, 0.8))
            got = writer.kill()
            assert got, f"run {i} acknowledged nothing"
            acknowledged += got
    finally:
        for writer in writers:
            if writer.popen.poll() is None:
                writer.kill()

    assert integrity(db) == "ok"
    stored = read_stored(url)
    assert stored.duplicates() == {}, "samples stored twice"
    for k in range(SERIES):
        ts = set(stored.timestamps(SIGNAL, k=str(k)))
        lost = set(acknowledged) - ts
        assert not lost, f"series k={k}: {len(lost)} of {len(acknowledged)} acknowledged lost"
    chunks = sqlite3.connect(db).execute("SELECT count(*) FROM chunks").fetchone()[0]
    assert chunks >= SERIES * 10, f"only {chunks} chunks: the kills hit too few cuts"


def test_killed_daemon_leaves_the_lock_free(tmp_path: Path, daemons: Daemons) -> None:
    # The instance lock must not outlive a SIGKILLed daemon, or systemd's restart fails.
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    first = daemons.start(url, name="first")
    first.wait_healthy()
    first.kill()
    second = daemons.start(url, name="second")
    second.wait_healthy()
    wait_for(lambda: second.cycles() >= 2, 15, "the restarted daemon cycles")
    try:
        assert second.get("/healthz").status_code == 200
    except requests.RequestException as exc:  # pragma: no cover - reported as failure
        raise AssertionError(second.log_text()) from exc
    assert second.stop() == 0
