"""The SQLite write path's bytes: the WAL is checkpointed and cut back on a schedule, a
cycle's commit touches one page, and every acknowledged cycle survives SIGKILL.

What a user checks: the ``-wal`` file next to the database stays small instead of
keeping its largest size; another process reading the database sees every cycle; a
daemon killed in the middle of checkpoints loses nothing it acknowledged.
"""

from __future__ import annotations

import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import inspect

from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import codec, engine, open_store
from gpuwarden.storage import writer as writer_module
from gpuwarden.storage.engine import SQLITE_PAGE_SIZE, SQLITE_WAL_KEEP_BYTES, checkpoint_wal
from tests.faults.stored import read_stored
from tests.storage.conftest import T0, Backend
from tests.storage.wal_victim import SERIES, SIGNAL

NODE = "node-a"


def cycle(k: int, series: int = 64) -> list[Sample]:
    """Cycle ``k`` at T0 + k seconds; values that do not compress away."""
    return [Sample("probe", make_labels(node=NODE, s=str(s)), (k * 7919 + s) / 13.0, T0 + k)
            for s in range(series)]


def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.01)
    raise AssertionError("condition not met in time")


def wal_size(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])


def logged_cycles(db: Path) -> list[int]:
    """Sample counts of the head-log rows another process sees, decoded, oldest first."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT count, data FROM head_log ORDER BY id").fetchall()
    for count, data in rows:
        assert codec.decode_cycle(data)[0].size == count
    return [int(count) for count, _ in rows]


def test_scheduled_checkpoint_cuts_the_wal_back_and_a_reader_sees_every_cycle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "gw.db"
    store = open_store(f"sqlite:///{db}", node=NODE, chunk_span=3600.0)
    for k in range(200):  # all inside one chunk window: everything stays in the head log
        store.write(cycle(k))
    grown = wal_size(db)
    # Without a checkpoint the WAL holds every cycle (SQLite's own waits for 1,000 pages).
    assert grown > 2 * SQLITE_WAL_KEEP_BYTES

    monkeypatch.setattr(writer_module, "CHECKPOINT_EVERY_S", 0.0)
    writer = writer_module.StoreWriter(store)
    writer.start()
    try:
        for n in range(1, 4):  # the pass after a checkpoint starts the WAL over
            store.append(cycle(199 + n))
            writer.kick()
            wait_for(lambda n=n: store.pending_samples == 0 and writer.checkpoints_total >= n)
        # Cut back to the limit plus the frames written since the WAL started over.
        assert wal_size(db) <= SQLITE_WAL_KEEP_BYTES + 4 * (SQLITE_PAGE_SIZE + 24)
        assert logged_cycles(db) == [64] * 203  # another process sees every cycle
    finally:
        assert writer.stop(10.0)  # cuts the head into chunks
    store.close()

    again = open_store(f"sqlite:///{db}", node=NODE, chunk_span=3600.0)
    try:
        got = again.query("probe", {"s": "5"})
        assert [float(t) for t in got[0].timestamps] == [T0 + k for k in range(203)]
        assert got[0].values[202] == (202 * 7919 + 5) / 13.0
    finally:
        again.close()


def test_a_cycle_commit_writes_one_page(tmp_path: Path) -> None:
    """A cycle's commit adds one page frame to the WAL (two when its page fills up and a
    new one is linked in), not one per index: the bytes a cycle costs on disk."""
    db = tmp_path / "gw.db"
    store = open_store(f"sqlite:///{db}", node=NODE, chunk_span=3600.0)
    try:
        store.write(cycle(0, series=32))
        frames = []
        for k in range(1, 41):
            before = wal_size(db)
            store.write(cycle(k, series=32))
            frames.append((wal_size(db) - before) // (SQLITE_PAGE_SIZE + 24))
    finally:
        store.close()
    assert sorted(frames)[len(frames) // 2] == 1, frames
    assert max(frames) <= 4, frames


def test_new_sqlite_store_has_small_pages_and_no_head_log_index(backend: Backend) -> None:
    store = backend.open()
    try:
        with store.engine.connect() as conn:
            indexes = {ix["name"] for ix in inspect(conn).get_indexes("head_log")}
            if backend.name == "sqlite":
                assert conn.exec_driver_sql("PRAGMA page_size").scalar() == SQLITE_PAGE_SIZE
                assert indexes == set()
            else:  # PostgreSQL keeps its index (nodes share the table there)
                assert indexes == {"ix_head_log_writer_id"}
        if backend.name == "sqlite":
            assert checkpoint_wal(store.engine) is not None
        else:
            assert checkpoint_wal(store.engine) is None
    finally:
        store.close()


def test_database_made_before_opens_drops_the_index_and_replays(tmp_path: Path) -> None:
    """A store made with 4 KiB pages and the head-log index keeps its pages, loses the
    index, and replays its head log."""
    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA page_size = 4096")
        conn.execute("PRAGMA journal_mode = WAL")
    store = open_store(f"sqlite:///{db}", node=NODE, chunk_span=3600.0)
    for k in range(5):
        store.write(cycle(k))
    store.close()
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE INDEX ix_head_log_writer_id ON head_log (writer, id)")
    again = open_store(f"sqlite:///{db}", node=NODE, chunk_span=3600.0)
    try:
        assert len(again.query("probe", {"s": "3"})[0].timestamps) == 5
    finally:
        again.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA page_size").fetchone() == (4096,)
        assert conn.execute("SELECT name FROM sqlite_master WHERE type = 'index' "
                            "AND tbl_name = 'head_log'").fetchall() == []


def test_in_memory_store_has_no_wal_to_checkpoint() -> None:
    store = open_store("sqlite://", node=NODE)
    try:
        assert checkpoint_wal(store.engine) is None
    finally:
        store.close()


class Victim:
    """``wal_victim`` in a subprocess; its stdout says which cycles were acknowledged."""

    def __init__(self, url: str, span: float) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "tests.storage.wal_victim", url, NODE, str(span)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.popen.stdout is not None
        self.stdout = self.popen.stdout
        if self.stdout.readline().strip() != "ready":
            self.kill()
            raise AssertionError("victim did not start")

    def kill(self) -> tuple[list[int], int]:
        """SIGKILL by PID; the timestamps it acknowledged and the checkpoints it ran."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)
        lines = [line.split() for line in self.stdout.read().splitlines()
                 if line.startswith("ack ")]
        self.stdout.close()
        if self.popen.stderr is not None:
            self.popen.stderr.close()
        return [int(f[1]) for f in lines], max((int(f[2]) for f in lines), default=0)


def test_sigkill_during_checkpoints_loses_no_acknowledged_cycle(tmp_path: Path) -> None:
    rng = random.Random(14)
    db = tmp_path / "gw.db"
    url = f"sqlite:///{db}"
    acknowledged: list[int] = []
    checkpoints = 0
    victims: list[Victim] = []
    try:
        for _ in range(8):
            victim = Victim(url, 0.5)  # a cut every 0.5 s, a checkpoint every pass
            victims.append(victim)
            time.sleep(rng.uniform(0.2, 0.9))
            got, ran = victim.kill()
            assert got, "a run acknowledged nothing"
            acknowledged += got
            checkpoints += ran
    finally:
        for victim in victims:
            if victim.popen.poll() is None:
                victim.kill()

    assert checkpoints >= 8, "the kills hit too few checkpoints"
    assert integrity(db) == "ok"
    stored = read_stored(url)
    assert stored.duplicates() == {}, "samples stored twice"
    for k in range(SERIES):
        lost = set(acknowledged) - set(stored.timestamps(SIGNAL, k=str(k)))
        assert not lost, f"series k={k}: {len(lost)} of {len(acknowledged)} acknowledged lost"


def test_engine_constants_are_the_early_writers() -> None:
    from gpuwarden.storage import early

    assert early.SQLITE_PAGE_SIZE == engine.SQLITE_PAGE_SIZE
