"""Store.query_many: several signals read together give, signal for signal, exactly what
Store.query gives each alone, and both exactly what was written.

The store is small on purpose (30 s chunks, 60 s of memory) so that the ranges asked for
reach every place a sample can be: uncut cycles, paged cycles, cut blocks in memory,
chunks in the database, and signals this node never wrote (the database alone).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from gpuwarden.errors import StoreUnavailable
from gpuwarden.model import Labels, Sample, SeriesData, make_labels
from gpuwarden.storage import Store
from tests.storage.conftest import Backend, backend

__all__ = ["backend"]

T0 = 1_700_000_000.0
CYCLES = 200
SIGNALS = ("kv_cache_usage_ratio", "ttft_seconds_bucket", "gpu_up", "requests_waiting")


def _cycle(k: int) -> list[Sample]:
    """One second of a node: steady series, one that comes and goes, one sample of a
    series written twice in a cycle (the head splits it into parts)."""
    ts = T0 + k + 0.0004 * (k % 3)  # sub-ms jitter: the store keeps whole ms
    out = []
    for s in range(3):
        labels = make_labels(node="n", server=f"s{s}")
        out.append(Sample("kv_cache_usage_ratio", labels, math.sin(k * 0.1 + s), ts))
        for le in ("0.1", "1", "+Inf"):
            out.append(Sample("ttft_seconds_bucket", make_labels(node="n", server=f"s{s}", le=le),
                              float(k * (s + 1)), ts))
    if k % 40 < 25:  # a server that comes and goes
        out.append(Sample("requests_waiting", make_labels(node="n", server="s9"), float(k), ts))
    if k % 50 == 7:
        out.append(Sample("requests_waiting", make_labels(node="n", server="s9"), -1.0, ts))
    return out


def _written() -> dict[str, dict[Labels, list[tuple[float, float]]]]:
    out: dict[str, dict[Labels, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list))
    for k in range(CYCLES):
        for s in _cycle(k):
            out[s.signal][s.labels].append((float(np.rint(s.ts * 1000.0)) / 1000.0, s.value))
    return out


def _fill(store: Store) -> None:
    for k in range(CYCLES):
        store.write(_cycle(k))


def _as_dict(series: list[SeriesData]) -> dict[Labels, list[tuple[float, float]]]:
    return {s.labels: list(zip(s.timestamps.tolist(), s.values.tolist(), strict=True))
            for s in series}


RANGES = [(T0 + 190 - back, T0 + 190) for back in (0.5, 5, 30, 59.9996, 61, 150, 400)] + [
    (-math.inf, math.inf), (T0 + 20.0004, T0 + 45.0004), (T0 + 500, T0 + 600)]


def test_query_many_equals_query_and_what_was_written(backend: Backend) -> None:
    store = backend.open(node="n", chunk_span=30.0, memory_window=60.0)
    _fill(store)
    written = _written()
    for start, end in RANGES:
        ranges = dict.fromkeys(SIGNALS, (start, end))
        # mixed ranges in one call too: each signal its own
        mixed = {signal: (start - 7 * i, end) for i, signal in enumerate(SIGNALS)}
        for asked in (ranges, mixed):
            got, failed = store.query_many(asked)
            assert failed == {}
            for signal, (a, b) in asked.items():
                alone = store.query(signal, None, a, b)
                together = got[signal]
                assert [s.labels for s in together] == [s.labels for s in alone]
                for x, y in zip(together, alone, strict=True):
                    assert x.signal == signal
                    assert np.array_equal(x.timestamps, y.timestamps)
                    assert np.array_equal(x.values, y.values)
                expected = {labels: sorted((t, v) for t, v in pts if a <= t <= b)
                            for labels, pts in written.get(signal, {}).items()}
                expected = {k: v for k, v in expected.items() if v}
                got_pairs = _as_dict(together)
                # same (ts, value) multiset; a duplicated ts keeps its write order
                assert {k: sorted(v) for k, v in got_pairs.items()} == expected
    store.close()


def test_a_failed_database_read_costs_only_the_signals_that_needed_it(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = backend.open(node="n", chunk_span=30.0, memory_window=60.0)
    _fill(store)
    now = T0 + CYCLES - 1

    def down(*_: object, **__: object) -> None:
        raise OperationalError("SELECT", {}, Exception("database is down"))

    monkeypatch.setattr(store.engine, "connect", down)
    asked = {"kv_cache_usage_ratio": (now - 30, now),  # in memory
             "ttft_seconds_bucket": (now - 150, now),  # older than the memory: database
             "gpu_up": (now - 150, now),  # never written here, older: database
             "gpu_xid_errors_total": (now - 30, now)}  # never written, in memory: none
    got, failed = store.query_many(asked)
    assert set(got) == {"kv_cache_usage_ratio", "gpu_xid_errors_total"}
    assert len(got["kv_cache_usage_ratio"]) == 3 and got["gpu_xid_errors_total"] == []
    assert set(failed) == {"ttft_seconds_bucket", "gpu_up"}
    assert all(isinstance(e, StoreUnavailable) and "database is down" in str(e)
               for e in failed.values())
    with pytest.raises(StoreUnavailable, match="database is down"):
        store.query("gpu_up", None, now - 150, now)
    with pytest.raises(StoreUnavailable, match="database is down"):  # another node's
        store.query("gpu_up", {"node": "m"}, now - 30, now)
    monkeypatch.undo()
    store.close()
