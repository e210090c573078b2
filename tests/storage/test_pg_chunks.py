"""Many writers, one PostgreSQL: partitioned chunks, idempotent cuts, partition retention.

Every test here runs on the real PostgreSQL of ``GPUWARDEN_TEST_POSTGRES_URL`` in a
schema of its own (``conftest.backend``). The lost commit reply of a network partition
is made by letting the real commit through and then raising the driver's own error, as
a dropped connection does at that point (a TCP cut cannot be timed between the server's
commit and its reply); the killed backend is a real ``pg_terminate_backend``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import Connection, Engine, event, text
from sqlalchemy.engine import make_url

from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import Store, chunk_table, pg_chunks
from gpuwarden.storage.pg_chunks import PARTITION_MS, chunks_ddl
from tests.storage.conftest import T0, Backend, gpu_cycle, make_legacy

pytestmark = pytest.mark.parametrize(
    "backend", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)

#: T0 is 22:13:20 UTC on 2023-11-14: cycles 100 s apart cross midnight at k = 64.
DAY0 = int(T0 * 1000) // PARTITION_MS
T0ms = int(T0 * 1000)


def spaced_cycle(k: int, gpus: int = 4, step: float = 100.0) -> list[Sample]:
    return [Sample("gpu_utilization_ratio", make_labels(node="node-a", gpu=str(g)),
                   (k + g) / 100, T0 + k * step) for g in range(gpus)]


def stored_rows(store: Store) -> list[tuple[int, int, int]]:
    """(series_id, t_min, copies) of every chunk key."""
    with store.engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT series_id, t_min, count(*) FROM chunks GROUP BY 1, 2 ORDER BY 1, 2"))
        return [(int(a), int(b), int(c)) for a, b, c in rows]


def stored_samples(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(text("SELECT coalesce(sum(count), 0) FROM chunks")) or 0)


def partitions(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return sorted(pg_chunks.existing_partitions(conn))


def assert_each_sample_once(store: Store, ks: list[int], gpus: int = 4, step: float = 1.0) -> None:
    got = store.query("gpu_utilization_ratio")
    assert [s.label_map["gpu"] for s in got] == [str(g) for g in range(gpus)]
    for g, s in enumerate(got):
        np.testing.assert_array_equal(s.timestamps, [T0 + k * step for k in ks])
        np.testing.assert_array_equal(s.values, [(k + g) / 100 for k in ks])


class LostCommitReply:
    """The next commit of a transaction that deleted head-log rows (a cut) is made, then
    its reply is 'lost': the driver's error for a closed connection is raised."""

    def __init__(self, engine: Engine) -> None:
        self.armed = False
        self.fired = 0
        self._cut_in_flight = False
        real = engine.dialect.do_commit

        def before(conn: Connection, _cur: Any, statement: str, *_a: Any) -> None:
            if statement.startswith("DELETE FROM head_log"):
                self._cut_in_flight = True

        def do_commit(dbapi_connection: Any) -> None:
            real(dbapi_connection)
            if self.armed and self._cut_in_flight:
                self.armed, self._cut_in_flight = False, False
                self.fired += 1
                raise psycopg.OperationalError(
                    "consuming input failed: server closed the connection unexpectedly")
            self._cut_in_flight = False

        event.listen(engine, "before_cursor_execute", before)
        engine.dialect.do_commit = do_commit  # type: ignore[method-assign]


def test_new_database_partitions_chunks_by_day_and_reads_across_them(backend: Backend) -> None:
    store = backend.open(chunk_span=60)
    assert store.chunk_table.layout == "partitioned"
    with store.engine.connect() as conn:
        kind = conn.scalar(text("SELECT relkind FROM pg_class WHERE oid = 'chunks'::regclass"))
        assert kind == "p"
        assert "PRIMARY KEY (series_id, t_min)" in str(conn.scalar(text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'pk_chunks'")))
    ks = list(range(100))  # 22:13 on day 0 to 01:03 on day 1
    for k in ks:
        store.write(spaced_cycle(k))
    store.flush()
    # the two days written and the one after the newest, made ahead
    assert partitions(store) == ["chunks_p20231114", "chunks_p20231115", "chunks_p20231116"]
    with store.engine.connect() as conn:
        per_partition: dict[str, int] = dict(conn.execute(text(
            "SELECT tableoid::regclass::text, sum(count) FROM chunks GROUP BY 1")).all())
    assert per_partition == {"chunks_p20231114": 64 * 4, "chunks_p20231115": 36 * 4}
    assert_each_sample_once(store, ks, step=100.0)
    reopened = backend.open(node="node-b")  # another node reads what node-a cut...
    (s,) = reopened.query("gpu_utilization_ratio", {"node": "node-a", "gpu": "2"},
                          T0 + 6300, T0 + 6600)
    np.testing.assert_array_equal(s.timestamps, T0 + 100.0 * np.arange(63, 67))
    # ...when it names node-a: unasked, a node's reads are its own (its rules must not
    # alert on the fleet's samples; the fleet's leader reads those, fleet/source.py).
    assert reopened.query("gpu_utilization_ratio", {"gpu": "2"}, T0 + 6300, T0 + 6600) == []


def test_a_cut_whose_commit_reply_is_lost_is_retried_without_duplicates(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    store = backend.open(chunk_span=10)
    lost = LostCommitReply(store.engine)
    for k in range(15):
        store.write(gpu_cycle(k))
    lost.armed = True
    with caplog.at_level(logging.WARNING):
        for k in range(15, 25):  # the cut at k = 20 commits, its reply is lost
            store.write(gpu_cycle(k))
    assert lost.fired == 1 and "chunk cut failed, will retry" in caplog.text
    assert store.write_errors_total == 1
    for k in range(25, 35):  # the next cut carries the first one's chunks again
        store.write(gpu_cycle(k))
    store.flush()
    assert store.chunk_table.conflicts_total == 4  # window [10,20) of 4 series, again
    assert store.chunk_table.differing_total == 0
    assert all(copies == 1 for _, _, copies in stored_rows(store))
    assert stored_samples(store) == 35 * 4
    assert_each_sample_once(store, list(range(35)))


def test_a_backend_killed_mid_cut_loses_and_duplicates_nothing(backend: Backend) -> None:
    store = backend.open(chunk_span=10)
    admin = admin_connection(backend)
    killed: list[int] = []

    def kill_at_head_log_delete(conn: Connection, _cur: Any, statement: str, *_a: Any) -> None:
        if statement.startswith("DELETE FROM head_log") and not killed:
            pid = conn.connection.dbapi_connection.info.backend_pid  # type: ignore[union-attr]
            admin.execute("SELECT pg_terminate_backend(%s)", [pid])
            killed.append(pid)

    event.listen(store.engine, "before_cursor_execute", kill_at_head_log_delete)
    try:
        for k in range(11):  # the cut at k = 10 loses its backend after the COPY
            store.write(gpu_cycle(k))
    finally:
        admin.close()
    assert killed and store.write_errors_total == 1
    assert stored_samples(store) == 0  # that transaction never committed
    for k in range(11, 31):
        store.write(gpu_cycle(k))
    store.flush()
    assert store.chunk_table.conflicts_total == 0
    assert all(copies == 1 for _, _, copies in stored_rows(store))
    assert stored_samples(store) == 31 * 4
    assert_each_sample_once(store, list(range(31)))


def test_a_node_restarted_after_a_lost_reply_replays_and_cuts_each_sample_once(
        backend: Backend) -> None:
    first = backend.open(chunk_span=10)
    lost = LostCommitReply(first.engine)
    lost.armed = True
    for k in range(24):
        first.write(gpu_cycle(k))
    assert lost.fired == 1
    first.engine.dispose()  # the process dies here: no flush, no close
    backend.opened.remove(first)
    second = backend.open(chunk_span=10)  # replays what the head log still holds
    for k in range(24, 40):
        second.write(gpu_cycle(k))
    second.flush()
    assert all(copies == 1 for _, _, copies in stored_rows(second))
    assert stored_samples(second) == 40 * 4
    assert_each_sample_once(second, list(range(40)))


def test_the_same_cut_inserted_twice_is_stored_once_and_other_content_is_counted(
        backend: Backend) -> None:
    store = backend.open()
    rows = [(1, T0ms, T0ms + 9_000, 10, b"a" * 40), (2, T0ms, T0ms + 9_000, 10, b"b" * 40)]
    table = store.chunk_table
    table.prepare(store.engine, rows)
    for attempt in range(2):
        with store.engine.begin() as conn:
            table.insert(conn, rows)
        assert table.conflicts_total == 2 * attempt
    with store.engine.begin() as conn:  # same keys, other samples: the stored ones stay
        table.insert(conn, [(1, T0ms, T0ms + 5_000, 6, b"c" * 40)])
    assert (table.conflicts_total, table.differing_total) == (3, 1)
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT series_id, count, data FROM chunks ORDER BY 1")).all() == [
            (1, 10, b"a" * 40), (2, 10, b"b" * 40)]


def test_retention_drops_whole_day_partitions_without_deleting_rows(backend: Backend) -> None:
    store = backend.open(chunk_span=60)
    ks = list(range(0, 2000, 10))  # 1,000 s apart: 22:13 on day 0 to ~03:33 on day 3
    for k in ks:
        store.write(spaced_cycle(k))
    store.flush()
    assert partitions(store) == [f"chunks_p202311{d}" for d in range(14, 19)]
    with store.engine.begin() as conn:
        conn.execute(text("ANALYZE chunks"))  # the dropped rows are the planner's count
        old_rows = conn.scalar(text(
            "SELECT count(*) FROM chunks WHERE t_min < :t"), {"t": (DAY0 + 3) * PARTITION_MS})
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute",
                 lambda _c, _cur, statement, *_a: statements.append(statement))
    now = T0 + 4 * 86_400  # day 4; the cutoff, a day back, is on day 3 at 22:13
    assert store.apply_retention(now, 86_400) == old_rows
    assert not [s for s in statements if s.lstrip().upper().startswith("DELETE FROM CHUNKS")]
    assert sorted(s for s in statements if s.startswith("DROP TABLE")) == [
        f'DROP TABLE "chunks_p202311{d}"' for d in (14, 15, 16)]
    # day 3 is kept; the day of "now" and the next one are made ahead of the writes
    assert partitions(store) == ["chunks_p20231117", "chunks_p20231118", "chunks_p20231119"]
    kept = [k for k in ks if (int((T0 + k * 100) * 1000) // PARTITION_MS) == DAY0 + 3]
    assert kept
    assert_each_sample_once(store, kept, step=100.0)
    assert store.apply_retention(now, 86_400) == 0  # nothing more to drop
    store.write(spaced_cycle(2000))  # the writer carries on into the kept partitions
    store.flush()
    assert_each_sample_once(store, [*kept, 2000], step=100.0)


def test_nodes_opening_and_cutting_together_make_each_partition_once(backend: Backend) -> None:
    errors: list[BaseException] = []
    stores: list[Store] = []
    barrier = threading.Barrier(4, timeout=30)

    def node(n: int) -> None:
        try:
            barrier.wait()
            store = backend.open(node=f"node-{n}", chunk_span=60)
            stores.append(store)
            for k in range(100):
                store.write([Sample("x", make_labels(node=f"node-{n}"), float(k), T0 + k * 100)])
            store.flush()
        except BaseException as exc:  # reported below, with the node that raised it
            errors.append(exc)

    threads = [threading.Thread(target=node, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(stores) == 4
    assert sum(s.write_errors_total for s in stores) == 0
    assert partitions(stores[0]) == ["chunks_p20231114", "chunks_p20231115", "chunks_p20231116"]
    assert stored_samples(stores[0]) == 400
    assert all(copies == 1 for _, _, copies in stored_rows(stores[0]))


def test_a_database_made_before_partitioning_is_used_as_it_was_and_noted_once(
        backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    make_legacy(backend)
    chunk_table._noted_legacy.clear()
    with caplog.at_level(logging.WARNING, logger="gpuwarden.storage.chunk_table"):
        store = backend.open(chunk_span=10)
        again = backend.open(node="node-b", chunk_span=10)
    assert (store.chunk_table.layout, again.chunk_table.layout) == ("legacy", "legacy")
    assert caplog.text.count("is not partitioned") == 1
    assert "pg_migrate" in caplog.text
    for k in [*range(60), *range(1000, 1030)]:
        store.write(gpu_cycle(k))
    store.flush()
    assert store.apply_retention(T0 + 1030, 120, batch_size=5) == 24  # DELETE batches
    assert_each_sample_once(store, list(range(1000, 1030)))


def test_timescaledb_makes_a_hypertable_and_plain_postgresql_partitions(
        backend: Backend) -> None:
    # TimescaleDB is not installed here: the hypertable branch is checked as the SQL it
    # chooses; which branch runs is read from the server's pg_extension, as at startup.
    store = backend.open()
    with store.engine.connect() as conn:
        installed = pg_chunks.installed_extensions(conn)
    assert "timescaledb" not in installed
    plain = chunks_ddl(installed)
    assert "PARTITION BY RANGE (t_min)" in plain[0]
    assert not any("create_hypertable" in s for s in plain)
    hyper = chunks_ddl(installed | {"timescaledb"})
    assert "PARTITION BY" not in hyper[0] and "PRIMARY KEY (series_id, t_min)" in hyper[0]
    assert f"create_hypertable('chunks', 't_min', chunk_time_interval => {PARTITION_MS}" in hyper[1]


# ------------------------------------------------------------------------------ helpers
def admin_connection(backend: Backend) -> psycopg.Connection[Any]:
    """An autocommit connection of its own to the test's schema."""
    url = make_url(backend.url)
    base = url.set(drivername="postgresql", query={}).render_as_string(hide_password=False)
    return psycopg.connect(base, options=str(url.query["options"]), autocommit=True)


def test_a_table_made_before_partitioning_is_migrated_in_place(backend: Backend) -> None:
    make_legacy(backend)
    store = backend.open(chunk_span=10)
    ks = list(range(0, 2000, 10))  # 1,000 s apart: five days' partitions
    for k in ks:
        store.write(spaced_cycle(k))
    store.flush()
    with store.engine.begin() as conn:  # a cut retried on the old table stored twice
        conn.execute(text("INSERT INTO chunks (series_id, t_min, t_max, count, data) "
                          "SELECT series_id, t_min, t_max, count, data FROM chunks LIMIT 3"))
    store.close()
    run = [sys.executable, "-m", "gpuwarden.storage.pg_migrate", backend.url]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"chunks partitioned: {len(ks) * 4} rows moved"
    again = subprocess.run(run, capture_output=True, text=True, timeout=60, check=False)
    assert (again.returncode, again.stdout.strip()) == (
        0, "nothing to migrate: chunks is missing or partitioned already")
    reopened = backend.open(chunk_span=10)
    assert reopened.chunk_table.layout == "partitioned"
    assert partitions(reopened) == [f"chunks_p202311{d}" for d in range(14, 18)]
    assert all(copies == 1 for _, _, copies in stored_rows(reopened))
    assert_each_sample_once(reopened, ks, step=100.0)
