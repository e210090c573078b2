"""Store behaviour a user relies on, run identically on SQLite and PostgreSQL."""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.engine import make_url

from gpuwarden.errors import StoreError, StoreUnavailable
from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import Store, codec, open_store, schema
from tests.storage.conftest import T0, Backend, TcpProxy, gpu_cycle, make_legacy


def _count(store: Store, table: Any, *where: Any) -> int:
    with store.engine.connect() as conn:
        return int(conn.scalar(select(func.count()).select_from(table).where(*where)) or 0)


def _expected(ks: range, gpu: int) -> tuple[np.ndarray, np.ndarray]:
    return np.array([T0 + k for k in ks]), np.array([(k + gpu) / 100 for k in ks])


def _assert_series(store: Store, ks: range, gpus: int = 4) -> None:
    result = store.query("gpu_utilization_ratio")
    assert [s.label_map["gpu"] for s in result] == [str(g) for g in range(gpus)]
    for g, s in enumerate(result):
        ts, vals = _expected(ks, g)
        np.testing.assert_array_equal(s.timestamps, ts)
        np.testing.assert_array_equal(s.values, vals)


def test_write_query_roundtrip_matchers_and_bounds(backend: Backend) -> None:
    store = backend.open()
    for k in range(10):
        assert store.write(gpu_cycle(k)) == 4
    store.write([Sample("gpu_temperature_celsius", make_labels(node="node-a", gpu="0"), 61.0, T0)])
    assert store.samples_written_total == 41

    (one,) = store.query("gpu_utilization_ratio", {"gpu": "2"}, T0 + 3, T0 + 7)
    assert one.labels == make_labels(node="node-a", gpu="2")
    assert one.timestamps.dtype == np.float64 and one.values.dtype == np.float64
    np.testing.assert_array_equal(one.timestamps, T0 + np.arange(3, 8))  # both ends inclusive
    np.testing.assert_array_equal(one.values, (np.arange(3, 8) + 2) / 100)
    assert len(store.query("gpu_utilization_ratio", {"gpu": "2"}, T0 + 3.001, T0 + 6.999)) == 1
    assert len(store.query("gpu_utilization_ratio", {"gpu": "2"}, T0 + 3.001)[0]) == 6
    assert store.query("gpu_utilization_ratio", {"gpu": "2", "node": "other"}) == []
    assert store.query("gpu_utilization_ratio", {"missing": "x"}) == []
    assert store.query("no_such_signal") == []
    assert len(store.query("gpu_utilization_ratio", {"node": "node-a"})) == 4
    assert store.query("gpu_utilization_ratio", None, T0 + 100, T0 + 200) == []

    latest = store.latest("gpu_utilization_ratio", {"gpu": "1"})
    assert latest == [
        Sample("gpu_utilization_ratio", make_labels(node="node-a", gpu="1"), 0.10, T0 + 9)
    ]
    assert [s[0] for s in store.series()] == ["gpu_temperature_celsius"] + [
        "gpu_utilization_ratio"
    ] * 4
    assert len(store.series("gpu_temperature_celsius")) == 1


def test_same_series_twice_in_one_cycle_keeps_both(backend: Backend) -> None:
    store = backend.open()
    labels = make_labels(node="node-a", gpu="0")
    store.write([Sample("x", labels, 1.0, T0), Sample("x", labels, 2.0, T0 + 0.5)])
    (s,) = store.query("x")
    np.testing.assert_array_equal(s.values, [1.0, 2.0])
    store.flush()
    (s,) = store.query("x")
    np.testing.assert_array_equal(s.timestamps, [T0, T0 + 0.5])


def test_chunk_cut_and_query_across_chunks_and_head(backend: Backend) -> None:
    store = backend.open(chunk_span=10, memory_window=15)
    for k in range(47):
        store.write(gpu_cycle(k))
    # windows [0,10) .. [30,40) are cut: 4 windows x 4 series; 40..46 still in the head log
    assert _count(store, schema.chunks) == 16
    assert _count(store, schema.head_log) == 7
    _assert_47_cycles_then_flush(store)


def _assert_47_cycles_then_flush(store: Store) -> None:
    """Cycles 0..46 of 4 GPUs read back whole and in part, then again once all is cut."""
    _assert_series(store, range(47))
    (s,) = store.query("gpu_utilization_ratio", {"gpu": "3"}, T0 + 5.5, T0 + 42)
    np.testing.assert_array_equal(s.timestamps, T0 + np.arange(6, 43))
    np.testing.assert_array_equal(s.values, (np.arange(6, 43) + 3) / 100)
    store.flush()
    assert _count(store, schema.head_log) == 0
    assert _count(store, schema.chunks) == 20
    _assert_series(store, range(47))


def test_cut_delay_keeps_the_last_window_uncut_and_answers_alike(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``cut_delay=5`` a window is cut once its boundary is 5 s behind, so a read of
    the last 5 s never decodes a chunk, even right after a cut; every read answers what
    it did without the delay, and a flush still cuts everything."""
    decoded: list[int] = []
    real_decode = codec.decode_chunks
    monkeypatch.setattr(codec, "decode_chunks",
                        lambda blobs: decoded.append(len(blobs)) or real_decode(blobs))
    store = backend.open(chunk_span=10, memory_window=30, cut_delay=5)
    for k in range(47):
        store.write(gpu_cycle(k))
        decoded.clear()
        recent = store.query("gpu_utilization_ratio", None, T0 + k - 5, T0 + k)
        assert [len(s) for s in recent] == [min(k, 5) + 1] * 4
        assert decoded == [], k  # the head holds it in columns
        if k == 44:  # 40 is 4 s behind: [30, 40) stays uncut
            assert _count(store, schema.chunks) == 12
            assert _count(store, schema.head_log) == 15
        if k == 45:  # and now 5 s: cut
            assert _count(store, schema.chunks) == 16
            assert _count(store, schema.head_log) == 6
    _assert_47_cycles_then_flush(store)


def test_cut_delay_must_be_a_finite_non_negative_number(backend: Backend) -> None:
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="cut_delay"):
            backend.open(cut_delay=bad)


def test_recent_window_is_answered_without_the_database(backend: Backend) -> None:
    store = backend.open(chunk_span=10, memory_window=30)
    for k in range(100):
        store.write(gpu_cycle(k))
    touched: list[str] = []
    event.listen(store.engine, "checkout", lambda *a: touched.append("checkout"))
    event.listen(store.engine, "before_cursor_execute", lambda *a: touched.append("sql"))
    recent = store.query("gpu_utilization_ratio", None, T0 + 70, T0 + 99)
    assert [len(s) for s in recent] == [30] * 4
    assert store.latest("gpu_utilization_ratio")[0].ts == T0 + 99
    assert touched == []
    old = store.query("gpu_utilization_ratio", {"gpu": "0"}, T0, T0 + 99)
    assert len(old[0]) == 100
    assert "sql" in touched


def test_restart_finds_chunks_and_uncut_head_log(backend: Backend) -> None:
    store = backend.open(chunk_span=10)
    for k in range(25):
        store.write(gpu_cycle(k))
    assert _count(store, schema.chunks) == 8
    assert _count(store, schema.head_log) == 5
    store.close()  # no flush: cycles 20..24 live only in the head log

    again = backend.open(chunk_span=10)
    _assert_series(again, range(25))
    assert again.latest("gpu_utilization_ratio")[0].ts == T0 + 24
    for k in range(25, 33):
        again.write(gpu_cycle(k))
    assert _count(again, schema.head_log) == 3
    again.close()
    _assert_series(backend.open(chunk_span=10), range(33))


def test_restart_with_thousands_of_series_replays_them_all(backend: Backend) -> None:
    """A node with more series than the head's first id table (1,024): a 250 KB vLLM
    scrape alone maps to ~630 series per server. The restart must replay every one."""
    def cycle(k: int) -> list[Sample]:
        return [Sample("ttft_seconds_bucket", make_labels(node="n", server=f"s{i // 500}",
                                                          le=str(i % 500)), float(k), T0 + k)
                for i in range(2600)]

    store = backend.open()
    for k in range(3):
        store.write(cycle(k))
    store.close()  # no flush: everything lives in the head log only
    again = backend.open()
    got = again.query("ttft_seconds_bucket", None, T0 - 1, T0 + 10)
    assert len(got) == 2600
    assert all(list(s.values) == [0.0, 1.0, 2.0] for s in got)
    again.write(cycle(3))
    assert len(again.query("ttft_seconds_bucket", {"server": "s5"}, T0 + 3, T0 + 3)) == 100


def test_nodes_sharing_a_database_replay_only_their_own_head_log(backend: Backend) -> None:
    a = backend.open("node-a", chunk_span=10)
    b = backend.open("node-b", chunk_span=10)
    for k in range(5):
        a.write(gpu_cycle(k))
        b.write([Sample("server_up", make_labels(node="node-b", server="s"), 1.0, T0 + k)])
    a.close()
    a2 = backend.open("node-a", chunk_span=10)
    _assert_series(a2, range(5))
    assert a2.query("server_up") == []  # node-b's head is node-b's until cut
    a2.flush()
    hl = schema.head_log
    assert _count(a2, hl, hl.c.writer == "node-b") == 5
    assert _count(a2, hl, hl.c.writer == "node-a") == 0
    b.flush()
    (up,) = a2.query("server_up", {"node": "node-b"})  # after the cut, chunks are shared
    assert len(up) == 5
    assert a2.query("server_up") == []  # but a node reads its own unless it names another


def test_retention_deletes_old_chunks_in_batches(backend: Backend) -> None:
    if backend.name == "postgres":  # the DELETE path there: a table made before partitioning
        make_legacy(backend)  # (partitions and their retention: test_pg_chunks.py)
    store = backend.open(chunk_span=10)
    for k in [*range(60), *range(1000, 1030)]:
        store.write(gpu_cycle(k))
    store.flush()
    assert _count(store, schema.chunks) == (6 + 3) * 4
    deletes: list[str] = []

    def on_sql(_c: Any, _cur: Any, statement: str, *_a: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE"):
            deletes.append(statement)

    event.listen(store.engine, "before_cursor_execute", on_sql)
    now = T0 + 1030
    assert store.apply_retention(now, 120, batch_size=5) == 24
    assert len(deletes) == 5  # 24 rows in batches of at most 5
    assert store.apply_retention(now, 120, batch_size=5) == 0
    assert store.query("gpu_utilization_ratio", None, T0, T0 + 500) == []
    kept = store.query("gpu_utilization_ratio", {"gpu": "0"})
    np.testing.assert_array_equal(kept[0].timestamps, T0 + np.arange(1000, 1030))


def test_locked_database_buffers_then_persists_backlog_in_order(backend: Backend) -> None:
    store = backend.open()
    store.write(gpu_cycle(0))
    with backend.lock_writes():
        for k in (1, 2):
            with pytest.raises(StoreUnavailable):
                store.write(gpu_cycle(k))
        assert store.pending_samples == 8
        assert store.write_errors_total == 2
        _assert_series(store, range(3))  # detectors still see the buffered cycles
    assert store.write(gpu_cycle(3)) == 12  # backlog first, then this cycle
    assert store.pending_samples == 0
    assert store.samples_written_total == 16
    store.close()
    reopened = backend.open()
    _assert_series(reopened, range(4))
    hl = schema.head_log
    with reopened.engine.connect() as conn:
        t_mins = conn.scalars(select(hl.c.t_min).order_by(hl.c.id)).all()
    assert t_mins == [round((T0 + k) * 1000) for k in range(4)]


def test_pending_buffer_is_bounded_and_drops_oldest(backend: Backend) -> None:
    store = backend.open(max_pending_cycles=3)
    store.write(gpu_cycle(0))
    with backend.lock_writes():
        for k in range(1, 6):
            with pytest.raises(StoreUnavailable):
                store.write(gpu_cycle(k))
        assert store.dropped_samples_total == 8  # cycles 1 and 2
        assert store.pending_samples == 12
    assert store.flush_pending() == 12
    store.close()
    reopened = backend.open()
    (s,) = reopened.query("gpu_utilization_ratio", {"gpu": "0"})
    np.testing.assert_array_equal(s.timestamps, T0 + np.array([0, 3, 4, 5]))


def test_newer_schema_version_is_refused(backend: Backend) -> None:
    backend.open().close()
    engine = create_engine(backend.url)
    with engine.begin() as conn:
        conn.execute(update(schema.schema_version).values(version=schema.SCHEMA_VERSION + 1))
    engine.dispose()
    with pytest.raises(StoreError, match="newer than this gpuwarden supports"):
        open_store(backend.url, node="node-a")


def test_unopenable_url_is_a_store_error(backend: Backend) -> None:
    with pytest.raises(StoreError) as info:
        open_store(backend.bad_url, node="node-a")
    assert not isinstance(info.value, StoreUnavailable)
    assert ("does not exist" if backend.name == "sqlite" else "cannot open store") in str(
        info.value
    )


def test_concurrent_queries_during_cuts_see_each_sample_once(backend: Backend) -> None:
    store = backend.open(chunk_span=5, memory_window=5)
    stop = threading.Event()
    problems: list[str] = []

    def reader() -> None:
        while not stop.is_set():
            for s in store.query("gpu_utilization_ratio", None, T0, T0 + 1000):
                steps = np.diff(s.timestamps)
                if s.timestamps[0] != T0 or not np.all(steps == 1.0):
                    problems.append(f"{s.label_map['gpu']}: {s.timestamps - T0}")

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for k in range(150):
            store.write(gpu_cycle(k))
    finally:
        stop.set()
        thread.join()
    assert problems == []
    _assert_series(store, range(150))


def test_postgres_outage_buffers_then_recovers(backend: Backend) -> None:
    """PostgreSQL goes away (connections dropped, new ones refused) and comes back."""
    if backend.name != "postgres":
        pytest.skip("a network outage only exists for a database server")
    url = make_url(backend.url)
    proxy = TcpProxy((url.host or "127.0.0.1", url.port or 5432))
    try:
        store = open_store(
            url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False),
            node="node-a",
        )
        backend.opened.append(store)
        store.write(gpu_cycle(0))
        proxy.stop()
        for k in (1, 2):
            with pytest.raises(StoreUnavailable):
                store.write(gpu_cycle(k))
        assert store.pending_samples == 8
        _assert_series(store, range(3))
        proxy.start()
        assert store.write(gpu_cycle(3)) == 12
        assert store.pending_samples == 0
    finally:
        proxy.stop()
    _assert_series(backend.open(), range(4))
