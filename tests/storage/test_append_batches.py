"""Store.append keeps exactly what it kept before it remembered the last cycle's series
ids: the same head (parts, ids, timestamps, values, shared id arrays), the same series
registry, the same head-log rows and answers, whatever the sequence of cycles (the same
label objects, equal new ones, other spellings, new series, another order, a series
twice in a cycle, a non-finite timestamp)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.model import Labels, Sample, make_labels
from gpuwarden.storage import Store, head_log, open_store
from tests.storage.conftest import T0, Backend, backend

__all__ = ["backend"]


def reference_append(store: Store, samples: list[Sample]) -> None:
    """``Store._append`` as it was: a dict lookup per sample, arrays built from lists."""
    get = store._series.local.get
    lid_list = [get((s.signal, s.labels), -1) for s in samples]
    if -1 in lid_list:
        with store._lock:
            register = store._series.register
            lid_list = [register((s.signal, s.labels)) for s in samples]
    ts = np.array([s.ts for s in samples], dtype=np.float64)
    if not np.isfinite(ts).all():
        raise ValueError("sample timestamps must be finite")
    vals = np.array([s.value for s in samples], dtype=np.float64)
    ts_ms = np.rint(ts * 1000.0).astype(np.int64)
    entry = store._make_entry(np.array(lid_list, dtype=np.int64), ts_ms, vals)
    store._add_to_head(entry)
    dropped = store._pending.add(entry)
    for old in dropped:
        store.dropped_samples_total += old.count
        with store._lock:
            store._entries.remove(old)


def _head(store: Store) -> list[Any]:
    """The head's entries as plain values, with which id arrays are shared."""
    arrays: list[int] = []

    def shared(a: np.ndarray) -> int:
        for k, seen in enumerate(arrays):
            if seen == id(a):
                return k
        arrays.append(id(a))
        return len(arrays) - 1

    return [(e.t_min, e.t_max, e.count,
             [(p.ids.tolist(), p.ts.tolist(), p.vals.tolist(), shared(p.ids)) for p in e.parts])
            for e in store._entries]


def _state(store: Store) -> tuple[Any, ...]:
    registry = store._series
    return (_head(store), registry.keys, dict(registry.local), registry.by_signal,
            store.pending_samples, store.dropped_samples_total)


def _labels(server: int, le: str | None = None) -> Labels:
    return make_labels(node="node-a", server=f"s{server}", **({} if le is None else {"le": le}))


PLAN = [  # the label tuples a scrape's mapping plan hands out every cycle
    ("kv_cache_usage_ratio", _labels(0)), ("kv_cache_usage_ratio", _labels(1)),
    ("ttft_seconds_bucket", _labels(0, "0.1")), ("ttft_seconds_bucket", _labels(0, "+Inf")),
    ("requests_waiting", _labels(1)),
]


def _cycles() -> list[list[Sample]]:
    """Cycles of every kind the cache must not get wrong, one after another."""
    def of(k: int, keys: list[tuple[str, Labels]]) -> list[Sample]:
        return [Sample(sig, labels, k * 10.0 + j, T0 + k + j * 0.0004)
                for j, (sig, labels) in enumerate(keys)]

    equal_copies = [(sig, tuple((name, value) for name, value in labels))
                    for sig, labels in PLAN]
    unsorted = [(sig, tuple(reversed(labels))) for sig, labels in PLAN]
    return [
        of(0, PLAN), of(1, PLAN), of(2, PLAN),  # the same objects every cycle
        of(3, equal_copies),  # equal tuples, new objects
        of(4, unsorted),  # another spelling of the same series
        of(5, [*PLAN, ("gpu_up", _labels(7))]),  # a new series
        of(6, PLAN[::-1]),  # another order
        of(7, [*PLAN, PLAN[0]]),  # a series twice in one cycle
        of(8, PLAN), of(9, PLAN[:3]), of(10, PLAN),
        of(11, [(PLAN[0][0], PLAN[1][1]), (PLAN[1][0], PLAN[0][1]), *PLAN[2:]]),
        of(12, [("kv_cache_usage_ratio", _labels(2)), *PLAN[1:]]),  # same length, new key
        of(13, PLAN),
    ]


def test_appended_cycles_are_kept_as_before(backend: Backend) -> None:
    new = backend.open(node="node-a")
    old = backend.open(node="node-b")  # the same cycles, appended the old way
    for cycle in _cycles():
        new.append(cycle)
        reference_append(old, cycle)
        assert _state(new) == _state(old)
    new.persist()
    old.persist()
    with new.engine.connect() as conn:
        new_rows = head_log.read_cycles(conn, "node-a")
        old_rows = head_log.read_cycles(conn, "node-b")
    assert len(new_rows) == len(old_rows) == len(_cycles())
    for (_, ids_n, ts_n, vals_n), (_, ids_o, ts_o, vals_o) in zip(new_rows, old_rows,
                                                                  strict=True):
        assert ids_n.tolist() == ids_o.tolist()  # one series table: the same database ids
        assert ts_n.tolist() == ts_o.tolist() and vals_n.tolist() == vals_o.tolist()
    for signal in {s for s, _ in PLAN} | {"gpu_up"}:
        got_n = [(s.labels, s.timestamps.tolist(), s.values.tolist())
                 for s in new.query(signal, {"node": "node-a"})]
        got_o = [(s.labels, s.timestamps.tolist(), s.values.tolist())
                 for s in old.query(signal, {"node": "node-a"})]
        assert got_n == got_o and got_n


def test_a_non_finite_timestamp_is_refused_as_before(tmp_path: Path) -> None:
    new = open_store(f"sqlite:///{tmp_path}/n.db", node="node-a")
    old = open_store(f"sqlite:///{tmp_path}/o.db", node="node-a")
    try:
        for append in (new.append, lambda c: reference_append(old, c)):
            append([Sample(sig, labels, 1.0, T0) for sig, labels in PLAN])
            bad = [Sample(sig, labels, 2.0, T0 + 1) for sig, labels in PLAN]
            bad[2] = bad[2]._replace(ts=math.nan)
            with pytest.raises(ValueError, match="finite"):
                append(bad)
            with pytest.raises(ValueError, match="finite"):  # a cycle remembered as well
                append([*bad[:4], Sample("gpu_up", _labels(9), 1.0, math.inf)])
            append([Sample(sig, labels, 3.0, T0 + 2) for sig, labels in PLAN])
        assert _state(new) == _state(old)
    finally:
        new.close()
        old.close()


KEYS = [(sig, labels) for sig in ("a", "b") for labels in (_labels(0), _labels(1), _labels(2))]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from(range(len(KEYS))), min_size=1, max_size=8),
                min_size=1, max_size=12),
       st.lists(st.booleans(), min_size=12, max_size=12))
def test_any_sequence_of_cycles_is_kept_as_before(
    tmp_path_factory: pytest.TempPathFactory, cycles: list[list[int]], repeat: list[bool]
) -> None:
    path = tmp_path_factory.mktemp("append")
    new = open_store(f"sqlite:///{path}/n.db", node="node-a", max_pending_cycles=5)
    old = open_store(f"sqlite:///{path}/o.db", node="node-a", max_pending_cycles=5)
    try:
        last: list[int] | None = None
        for k, drawn in enumerate(cycles):
            # The previous cycle's keys again, or new ones.
            picks = last if repeat[k] and last is not None else drawn
            cycle = [Sample(KEYS[i][0], KEYS[i][1], float(k * 100 + j), T0 + k)
                     for j, i in enumerate(picks)]
            new.append(cycle)
            reference_append(old, cycle)
            assert _state(new) == _state(old)
            last = picks
    finally:
        new.close()
        old.close()
