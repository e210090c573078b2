"""Prefetched: one read of each signal's widest window answers every narrower read of it
exactly as the store answers that read alone, and reads the rest from the store."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy.exc import OperationalError

from gpuwarden.errors import StoreUnavailable
from gpuwarden.model import SeriesData
from gpuwarden.promql.prefetch import Prefetched, widest
from gpuwarden.storage import Store, open_store
from tests.storage.test_query_many import CYCLES, SIGNALS, T0, _fill

NOW = T0 + CYCLES - 1


class Counted:
    """A store that counts the reads made of it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.reads = 0

    def query(self, signal: str, matchers: Mapping[str, str] | None = None,
              start: float = 0.0, end: float = 0.0) -> list[SeriesData]:
        self.reads += 1
        return self.store.query(signal, matchers, start, end)

    def query_many(self, ranges: Mapping[str, tuple[float, float]]) -> Any:
        self.reads += 1
        return self.store.query_many(ranges)


@pytest.fixture
def store(tmp_path: Path) -> Any:
    # 30 s chunks, 60 s of memory: the widest reads reach blocks and the database.
    with open_store(f"sqlite:///{tmp_path / 's.db'}", node="n", chunk_span=30.0,
                    memory_window=60.0) as s:
        _fill(s)
        yield s


def _same(got: list[SeriesData], want: list[SeriesData]) -> None:
    assert [(s.signal, s.labels) for s in got] == [(s.signal, s.labels) for s in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.timestamps, w.timestamps, strict=True)
        np.testing.assert_array_equal(g.values, w.values, strict=True)


def test_narrower_reads_are_what_the_store_answers_alone(store: Store) -> None:
    counted = Counted(store)
    reads = Prefetched(counted, dict.fromkeys(SIGNALS, 150.0), NOW)
    assert counted.reads == 1
    ranges = [(NOW - 150, NOW), (NOW - 60, NOW), (NOW - 30.0004, NOW - 10), (NOW - 5, NOW - 5),
              (NOW - 149.5, NOW - 100.2), (NOW - 20, NOW - 30), (NOW + 1, NOW)]
    for signal in SIGNALS:
        for start, end in ranges:
            _same(reads.query(signal, None, start, end), store.query(signal, None, start, end))
            _same(reads.query(signal, {"server": "s1"}, start, end),
                  store.query(signal, {"server": "s1"}, start, end))
        got, failed = reads.query_many({signal: (NOW - 45, NOW - 1)})
        assert failed == {}
        _same(got[signal], store.query(signal, None, NOW - 45, NOW - 1))
    assert counted.reads == 1  # all of it from the one read


def test_what_was_not_read_up_front_is_read_from_the_store_in_one_go(store: Store) -> None:
    counted = Counted(store)
    reads = Prefetched(counted, {"kv_cache_usage_ratio": 30.0}, NOW)
    asked = {"kv_cache_usage_ratio": (NOW - 10, NOW),  # held
             "ttft_seconds_bucket": (NOW - 10, NOW),  # not read
             "requests_waiting": (NOW - 150, NOW)}  # not read, reaching the database
    got, failed = reads.query_many(asked)
    assert failed == {} and counted.reads == 2
    for signal, (start, end) in asked.items():
        _same(got[signal], store.query(signal, None, start, end))
    # Wider than what was read: from the store.
    _same(reads.query("kv_cache_usage_ratio", None, NOW - 31, NOW),
          store.query("kv_cache_usage_ratio", None, NOW - 31, NOW))
    assert counted.reads == 3


def test_a_failed_read_is_raised_or_handed_back_as_the_store_does(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*_: object, **__: object) -> None:
        raise OperationalError("SELECT", {}, Exception("database is down"))

    monkeypatch.setattr(store.engine, "connect", down)
    reads = Prefetched(store, {"kv_cache_usage_ratio": 30.0, "ttft_seconds_bucket": 150.0},
                       NOW)
    with pytest.raises(StoreUnavailable, match="database is down"):
        reads.query("ttft_seconds_bucket", None, NOW - 100, NOW)
    got, failed = reads.query_many({"kv_cache_usage_ratio": (NOW - 30, NOW),
                                    "ttft_seconds_bucket": (NOW - 150, NOW)})
    assert len(got["kv_cache_usage_ratio"]) == 3
    assert set(failed) == {"ttft_seconds_bucket"}
    assert isinstance(failed["ttft_seconds_bucket"], StoreUnavailable)


def test_widest_takes_each_signals_longest_lookback() -> None:
    assert widest({"a": 60.0, "b": 600.0}, {}, {"a": 120.0, "c": 5.0}) == {
        "a": 120.0, "b": 600.0, "c": 5.0}
    assert widest() == {}
