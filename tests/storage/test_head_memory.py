"""The memory window after a cut: compressed in memory, still exact, still database-free.

Cut cycles stay queryable from memory for ``memory_window`` as the chunks the cut wrote
(see ``storage/head.py``); these tests hold the store to what that must not change
(values bit for bit, no database round trip, ``latest()`` of a quiet series) and to
what it is for (the daemon's resident memory).
"""

from __future__ import annotations

import gc
import math
import subprocess
import sys
import textwrap
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event

from gpuwarden.model import Sample, SeriesData, make_labels
from gpuwarden.storage import Store, open_store
from gpuwarden.storage.head import (
    ENTRY_OVERHEAD,
    MIN_PAGE_ROWS,
    PAGE_ROWS,
    PAGE_TAIL_BYTES,
    Entry,
    Gathered,
    column_groups,
    compact,
    head_bytes,
    memory_bound,
    page_rows,
    part_ts,
    part_vals,
    split_cycle,
)
from tests.storage.conftest import T0, Backend, gpu_cycle


def _no_database(store: Store) -> list[str]:
    touched: list[str] = []
    event.listen(store.engine, "checkout", lambda *a: touched.append("checkout"))
    return touched


def test_odd_values_come_back_bit_exact_from_cut_memory(backend: Backend) -> None:
    """Non-decimal floats, NaN, infinities and -0.0 survive the in-memory chunks."""
    store = backend.open(chunk_span=10, memory_window=60)
    rng = np.random.default_rng(7)
    values = rng.normal(size=45) * 1e3
    values[[3, 17, 30]] = [math.nan, math.inf, -0.0]
    labels = make_labels(node="node-a", gpu="0")
    for k, v in enumerate(values):
        store.write([Sample("gpu_power_watts", labels, float(v), T0 + k + 0.123)])
    touched = _no_database(store)
    (s,) = store.query("gpu_power_watts", None, T0, T0 + 100)
    assert touched == []  # cycles 0..39 were cut: answered from the in-memory chunks
    np.testing.assert_array_equal(s.timestamps, T0 + np.arange(45) + 0.123)
    assert s.values.view(np.uint64).tolist() == values.view(np.uint64).tolist()


def test_series_gone_quiet_is_latest_until_it_leaves_the_memory_window(
    backend: Backend,
) -> None:
    """A server that stopped answering before the last cut keeps its last value."""
    store = backend.open(chunk_span=10, memory_window=30)
    quiet = make_labels(node="node-a", server="vllm-1")
    for k in range(25):
        extra = [Sample("server_up", quiet, 1.0, T0 + k)] if k < 8 else []
        store.write(gpu_cycle(k) + extra)
    touched = _no_database(store)
    assert store.latest("server_up") == [Sample("server_up", quiet, 1.0, T0 + 7)]
    (s,) = store.query("server_up", None, T0, T0 + 25)
    np.testing.assert_array_equal(s.timestamps, T0 + np.arange(8))
    assert touched == []
    for k in range(25, 50):
        store.write(gpu_cycle(k))
    assert store.latest("server_up") == []  # stale: older than the memory window
    assert len(store.query("server_up")[0]) == 8  # still stored


def test_memory_window_is_held_compressed(tmp_path: Path) -> None:
    """Ten minutes of 1 s cycles of 300 series cost far less than their raw 16 B/sample."""
    store = open_store(f"sqlite:///{tmp_path}/m.db", node="node-a")
    labels = [make_labels(node="node-a", gpu=str(g), le=str(b)) for g in range(30)
              for b in range(10)]
    rng = np.random.default_rng(1)

    def cycle(k: int) -> list[Sample]:
        # Decimal gauges and slowly growing counters, as NVML and servers report them.
        vals = np.round(rng.uniform(0, 1, len(labels)), 2) + (k // 7)
        return [Sample("x", lab, float(v), T0 + k + 0.001 * (i % 5))
                for i, (lab, v) in enumerate(zip(labels, vals, strict=True))]

    try:
        for k in range(300):  # warm-up: registry, statement caches, a first cut
            store.write(cycle(k))
        gc.collect()
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        held = []
        for k in range(300, 1500):
            store.write(cycle(k))
            if k >= 1200 and k % 20 == 0:  # over a whole chunk span: cut to cut
                gc.collect()
                held.append(tracemalloc.get_traced_memory()[0] - base)
        tracemalloc.stop()
        raw = 16 * 600 * len(labels)  # int64 timestamp + float64 value
        # Measured: <= 0.5 (the raw part is the uncut chunk span); raw cut cycles: > 1.1.
        assert max(held) < 0.7 * raw, [round(h / raw, 2) for h in held]
        (s,) = store.query("x", {"gpu": "3", "le": "4"}, T0 + 900, T0 + 1500)
        assert len(s) == 600
    finally:
        store.close()


def test_sqlite_daemon_path_leaves_heavy_modules_unimported(tmp_path: Path) -> None:
    """Store, alert state and the spread/trend detectors on SQLite: no PostgreSQL dialect,
    no ``numpy.ma`` (each held ~1-2 MiB for the daemon's life)."""
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        from gpuwarden.alerts.state import AlertStateStore
        from gpuwarden.detectors.trend import theil_sen
        from gpuwarden.promql.aggregation import median
        from gpuwarden.promql.derived import spread_of
        from gpuwarden.model import Sample, SeriesData, make_labels
        from gpuwarden.storage import open_store

        store = open_store("sqlite:///{tmp_path}/d.db", node="n", chunk_span=10)
        labels = make_labels(node="n", gpu="0")
        for k in range(40):
            store.write([Sample("u", labels, k / 100, {T0} + k)])
        store.query("u")
        store.latest("u")
        store.flush()
        AlertStateStore(store.engine, "n").save([], ["nothing"], {T0})
        spread_of("n", {{"0": 0.1, "1": 0.5, "2": 0.2}})
        median(np.arange(5.0))
        theil_sen(np.arange(10.0), np.arange(10.0) * 2)
        print(sorted(m for m in ("numpy.ma", "sqlalchemy.dialects.postgresql")
                     if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]", out.stderr


def test_clock_stepping_back_inside_a_cut_keeps_series_sorted_and_whole(
    backend: Backend,
) -> None:
    store = backend.open(chunk_span=10, memory_window=60)
    steps = [*range(12), 8.5, *range(12, 30)]  # one cycle stamped 3.5 s in the past
    for k, t in enumerate(steps):
        store.write([Sample(s.signal, s.labels, s.value, T0 + t) for s in gpu_cycle(k)])
    want = np.sort(T0 + np.array(steps, dtype=np.float64))
    for s in store.query("gpu_utilization_ratio", None, T0, T0 + 100):  # from memory
        np.testing.assert_array_equal(s.timestamps, want)
    store.close()
    for s in backend.open(chunk_span=10).query("gpu_utilization_ratio"):  # from chunks
        np.testing.assert_array_equal(s.timestamps, want)


def _cycles(n: int, series: int, step_ms: int, t0_ms: int) -> list[Entry]:
    """``n`` cycles of ``series`` series every ``step_ms``, as the store makes them."""
    rng = np.random.default_rng(3)
    last = np.empty(0, np.int64)
    entries = []
    for k in range(n):
        lids = rng.permutation(series).astype(np.int64)  # collectors' order varies
        ts = t0_ms + k * step_ms + rng.integers(0, 3, series)
        entry, last = split_cycle(lids, ts, rng.normal(size=series), last)
        entries.append(entry)
    return entries


def _gather(entries: list[Entry], lids: list[int], lo: int, hi: int) -> Gathered:
    got = Gathered()
    got.add_head(entries, lids, lo, hi)
    return got


def _pairs(s: SeriesData) -> list[tuple[int, float]]:
    ms = np.rint(s.timestamps * 1000).astype(np.int64)
    return list(zip(ms.tolist(), s.values.tolist(), strict=True))


def _brute_force(entries: list[Entry], lid: int, lo: int, hi: int) -> list[tuple[int, float]]:
    out = []
    for e in entries:
        for p in e.parts:
            out += [(int(t), float(v))
                    for i, t, v in zip(p.ids, part_ts(e, p), part_vals(e, p), strict=True)
                    if i == lid and lo <= t <= hi]
    return sorted(out)


def test_query_work_follows_the_range_not_the_uncut_cycles_before_it() -> None:
    """A 64 s query at a 100 ms interval steps through the same number of entries and
    pages whether 1,024 or 2,048 uncut cycles precede its range (the climb between cuts
    an SRE saw as 18 -> 44 % of a core), and returns every sample of the range."""
    visited = {}
    for older in (1_024, 2_048):
        entries = _cycles(older + 640, 50, 100, 0)
        assert compact(entries, -(2**63), 600_000) == len(entries)  # 64-cycle pages
        lo, hi = older * 100, (older + 640) * 100
        got = _gather(entries, [7, 31], lo, hi)
        (a, b) = got.to_series("x", [make_labels(s="7"), make_labels(s="31")], lo / 1000,
                               hi / 1000)
        assert _pairs(a) == _brute_force(entries, 7, lo, hi)
        assert len(b) == 640
        visited[older] = got.visited
    # 10 pages in the range and the one that ends the walk; a cycle at a time: 641+.
    assert visited[1_024] == visited[2_048] <= 12, visited


def test_wide_nodes_page_sooner_so_the_unpaged_tail_stays_small() -> None:
    """Unpaged cycles cost 16 bytes a sample: a node of 280 KB payloads (6,744 series)
    pages every 16 cycles, so they hold at most 15 cycles (1.6 MiB) rather than 63
    (6.8 MiB); a small node's pages stay 64 cycles long (fewer pages for a query to
    walk). Every sample still reads back exactly."""
    for series, rows in ((50, PAGE_ROWS), (6_744, MIN_PAGE_ROWS)):
        entries = _cycles(2 * PAGE_ROWS, series, 1_000, 0)
        tail: list[Entry] = []
        worst = 0
        for e in entries:
            tail.append(e)
            compact(tail, -(2**63), 600_000)
            tail = [t for t in tail if t.page is None]
            worst = max(worst, head_bytes(tail, [])[0] - len(tail) * ENTRY_OVERHEAD)
        pages = {id(e.page): e.page.rows for e in entries if e.page is not None}
        assert set(pages.values()) == {rows}, (series, pages)
        assert page_rows(series) == rows
        if series > 1_000:
            assert PAGE_TAIL_BYTES < worst <= MIN_PAGE_ROWS * series * 16
        got = _gather(entries, [7], 0, 10**9).to_series("x", [make_labels(s="7")], 0, 10**6)
        assert _pairs(got[0]) == _brute_force(entries, 7, 0, 10**9)


def test_pages_partly_cut_or_thinned_still_answer_exactly() -> None:
    """Cycles removed from under a page (a cut of persisted cycles only, the pending
    buffer dropping its oldest) leave the rest answered sample for sample."""
    entries = _cycles(300, 20, 1_000, 0)
    compact(entries, -(2**63), 240_000)
    kept = entries[10:50] + entries[53:140] + entries[200:]  # holes inside pages
    got = _gather(kept, [4], 0, 10**9).to_series("x", [make_labels(s="4")], 0, 10**6)
    want = _brute_force(kept, 4, 0, 10**9)
    assert _pairs(got[0]) == want


@pytest.mark.parametrize("delay", [0.0, 15.0])
def test_head_stays_within_its_documented_memory_bound(tmp_path: Path, delay: float) -> None:
    """Cycle after cycle, through cuts and evictions, the head holds no more than
    ``memory_bound`` for its series count, interval, span, window and cut delay, and at
    its peak a good part of it (the bound is not vacuous)."""
    series, span, window = 200, 20.0, 60.0
    store = open_store(f"sqlite:///{tmp_path}/b.db", node="node-a", chunk_span=span,
                       memory_window=window, cut_delay=delay)
    labels = [make_labels(node="node-a", gpu=str(g), le=str(b)) for g in range(20)
              for b in range(10)]
    bound = memory_bound(series, 1.0, span, window, cut_delay=delay)
    seen = []
    try:
        for k in range(400):  # 400 s: 20 cuts, the window full from ~80 s on
            vals = np.round(np.linspace(0, 1, series) + k / 50, 2)
            store.write([Sample("x", lab, float(v), T0 + k + 0.001 * (i % 3))
                         for i, (lab, v) in enumerate(zip(labels, vals, strict=True))])
            uncut, cut = head_bytes(store._entries, store._blocks)
            seen.append(uncut + cut)
        assert max(seen) <= bound, (max(seen), bound)
        assert max(seen[200:]) > 0.4 * bound, (max(seen[200:]), bound)
        assert max(seen[300:]) <= 1.05 * max(seen[100:200])  # flat once the window is full
    finally:
        store.close()


def test_cut_pages_are_freed_without_the_cyclic_collector() -> None:
    """Pages must not be in a reference cycle with their entries: the cyclic collector
    reaches them late, and a soak showed +41 MiB of RSS at the first cut when they were."""
    entries = _cycles(128, 20, 100, 0)
    compact(entries, -(2**63), 600_000)
    assert entries[0].page is not None
    page = weakref.ref(entries[0].page)
    gc.disable()
    try:
        del entries[:64]  # the first page's cycles, cut
        assert page() is None
    finally:
        gc.enable()


def _scraped_cycles(n: int, per_source: int, sources: int, t0_ms: int) -> list[Entry]:
    """Cycles as a node makes them: each source's series carry its scrape's time, which
    moves by a few ms from cycle to cycle; sometimes two sources land on the same ms."""
    rng = np.random.default_rng(5)
    last = np.empty(0, np.int64)
    series = per_source * sources
    entries = []
    for k in range(n):
        stamps = t0_ms + k * 1_000 + rng.integers(0, 4, sources)  # collisions included
        ts = np.repeat(stamps, per_source)
        lids = np.arange(series, dtype=np.int64)
        entry, last = split_cycle(lids, ts, rng.normal(size=series), last)
        entries.append(entry)
    return entries


def test_paging_keeps_every_timestamp_at_a_fraction_of_the_memory() -> None:
    """A page keeps the timestamps of series scraped together once per cycle: every
    entry's samples read back exactly as written, and the uncut cycles' memory drops
    from 16 to about 8 bytes a sample (the values)."""
    n = 10 * page_rows(2_500)  # whole pages
    entries = _scraped_cycles(n, per_source=500, sources=5, t0_ms=600_000 * 1_666_667)
    before = [tuple(a.copy() for a in e.columns()) for e in entries]
    unpaged, _ = head_bytes(entries, [])
    assert compact(entries, -(2**63), 600_000) == len(entries)
    for e, (ids, ts, vals) in zip(entries, before, strict=True):
        now = e.columns()
        np.testing.assert_array_equal(now[0], ids)
        np.testing.assert_array_equal(now[1], ts)
        np.testing.assert_array_equal(now[2], vals)
    paged, _ = head_bytes(entries, [])
    samples = n * 2_500
    # 8 bytes a value, the timestamps' few groups, each page's column indexes (8 bytes
    # a series, over 26 rows here) and the entries' own objects.
    assert unpaged >= 16 * samples and paged <= 9 * samples, (unpaged, paged)
    lo, hi = entries[100].t_min, entries[180].t_max
    got = _gather(entries, [3, 2_499], lo, hi).to_series(
        "x", [make_labels(s="3"), make_labels(s="2499")], lo / 1000, hi / 1000)
    assert [_pairs(s) for s in got] == [_brute_force(entries, 3, lo, hi),
                                        _brute_force(entries, 2_499, lo, hi)]
    assert len(_pairs(got[0])) == 81


@given(st.lists(st.lists(st.integers(-3, 3), min_size=1, max_size=6), min_size=1,
                max_size=5).filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_column_groups_rebuild_the_matrix_with_one_column_per_distinct_series(
        rows: list[list[int]]) -> None:
    ts = np.array(rows, dtype=np.int64) + 10**12
    stamps, group = column_groups(ts)
    np.testing.assert_array_equal(stamps[:, group], ts)
    assert stamps.shape[1] == len({tuple(col) for col in ts.T.tolist()})


def test_series_that_did_not_change_share_their_values_bit_for_bit() -> None:
    """A page keeps one column for series whose values are the same in every row (idle
    models' buckets, counters that did not move): each reads back bit for bit, -0.0
    apart from 0.0 and NaN payloads apart, and the page costs ~4 bytes a series for
    them instead of 8 a sample."""
    series, n = 2_000, 128
    rng = np.random.default_rng(9)
    const = np.zeros(series)  # most: idle buckets at 0.0
    const[100:200] = -0.0
    const[200:300] = 17.0
    const[300:310] = np.frombuffer(np.array([0x7FF8000000000001 + i for i in range(10)],
                                            np.int64).tobytes(), np.float64)  # NaNs
    moving = slice(1_800, 2_000)  # 10 % of the series change every cycle
    last = np.empty(0, np.int64)
    entries = []
    for k in range(n):
        vals = const.copy()
        vals[moving] = rng.normal(size=200) + k
        if k == 77:
            vals[500] = 1.0  # a series that moves once
        ts = np.full(series, 600_000 * 1_666_667 + k * 1_000, np.int64)
        entry, last = split_cycle(np.arange(series, dtype=np.int64), ts, vals, last)
        entries.append(entry)
    before = [e.columns()[2].copy() for e in entries]
    unpaged, _ = head_bytes(entries, [])
    assert compact(entries, -(2**63), 600_000) == n
    for e, want in zip(entries, before, strict=True):
        assert e.columns()[2].tobytes() == want.tobytes()  # bit for bit
    paged, _ = head_bytes(entries, [])
    # The moving tenth, and a handful of distinct constant columns per page.
    assert paged < 0.12 * unpaged, (paged, unpaged)
    got = _gather(entries, [150, 305, 500, 1_900], 0, 2**62)
    for s, lid in zip(got.to_series("x", [make_labels(s=str(i)) for i in range(4)], 0, 2e10),
                      (150, 305, 500, 1_900), strict=True):
        want = np.array([b[lid] for b in before])
        assert s.values.tobytes() == want.tobytes()


@given(st.lists(st.lists(st.sampled_from([0.0, -0.0, 1.5, math.nan, math.inf]), min_size=1,
                         max_size=6), min_size=1, max_size=5)
       .filter(lambda rows: len({len(r) for r in rows}) == 1))
def test_value_columns_are_grouped_by_bit_pattern(rows: list[list[float]]) -> None:
    bits = np.array(rows, dtype=np.float64).view(np.int64)
    distinct, group = column_groups(bits)
    assert distinct[:, group].tobytes() == bits.tobytes()
    assert distinct.shape[1] == len({tuple(col) for col in bits.T.tolist()})
