"""Hand-worked and property tests for gpuwarden.promql.windows (increase, rate).

Every expected number is derived in a comment from the Prometheus 2.42 algorithm; the
cases marked "2.42" distinguish it from later releases and were also checked against
the installed binary (``promtool test rules`` / instant queries) while writing them.
The end-to-end comparison with a live Prometheus is in test_windows_prometheus.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.model import SeriesData, make_labels
from gpuwarden.promql.windows import (
    bucket_increases,
    counter_rate,
    increase,
    rate,
    ratio_of_increases,
)


def arr(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)


# --------------------------------------------------------------------------- increase / rate


def test_extrapolates_to_both_edges_within_threshold() -> None:
    # samples every 10 s at 10..50: 100..140; window [5, 55].
    # raw 40; gaps 5 and 5 < 1.1 * 10 -> extrapolate fully: 40 * (40+5+5)/40 = 50
    # zero point: 40 * 100/40 = 100 s back, farther than 5 -> no clamp
    ts, vs = arr(10, 20, 30, 40, 50), arr(100, 110, 120, 130, 140)
    assert increase(ts, vs, 5, 55) == pytest.approx(50.0)
    assert rate(ts, vs, 5, 55) == pytest.approx(50.0 / 50)


def test_gap_beyond_threshold_extrapolates_half_a_spacing() -> None:
    # samples 10, 20, 30 (10, 20, 30); window [8, 60]: raw 20; gap to start 2 < 11 -> +2;
    # gap to end 30 >= 11 -> +10/2. 20 * (20+2+5)/20 = 27; rate 27/52.
    ts, vs = arr(10, 20, 30), arr(10, 20, 30)
    assert increase(ts, vs, 8, 60) == pytest.approx(27.0)
    assert rate(ts, vs, 8, 60) == pytest.approx(27.0 / 52)


def test_threshold_is_strictly_below_1_1_spacings() -> None:
    # 110, 120, 130 at 20, 30, 40; spacing 10, threshold 11; zero point 110 s back.
    # window [9.5, 40]: gap 10.5 < 11 -> +10.5: 20 * 30.5/20 = 30.5
    # window [9, 40]: gap 11 is not < 11 -> +5: 20 * 25/20 = 25 (both as promtool 2.42)
    ts, vs = arr(20, 30, 40), arr(110, 120, 130)
    assert increase(ts, vs, 9.5, 40) == pytest.approx(30.5)
    assert increase(ts, vs, 9, 40) == pytest.approx(25.0)


def test_zero_point_clamp() -> None:
    # 1, 11, 21 at 10, 20, 30; window [5, 30]: raw 20; the line hits 0 at
    # 20 * 1/20 = 1 s before the first sample, nearer than 5 -> extrapolate 1 s: 21
    assert increase(arr(10, 20, 30), arr(1, 11, 21), 5, 30) == pytest.approx(21.0)


def test_2_42_clamps_before_the_threshold_test() -> None:
    # Series starts inside the window: 8, 18, 28 at 30, 40, 50; window [0, 50].
    # raw 20; gap to start 30; zero point 20 * 8/20 = 8 s back -> gap := 8 < 11 -> +8.
    # 20 * 28/20 = 28. (Prometheus 3.x tests the threshold first: +min(5, 8) -> 25.)
    assert increase(arr(30, 40, 50), arr(8, 18, 28), 0, 50) == pytest.approx(28.0)


def test_counter_reset_mid_window() -> None:
    # 5, 15, 25, (restart) 3, 13 at 0..40; window [0, 40] exactly covers the samples.
    # raw 13 - 5 = 8, plus 25 lost at the reset = 33 (= 20 before + 13 after); factor 1.
    ts, vs = arr(0, 10, 20, 30, 40), arr(5, 15, 25, 3, 13)
    assert increase(ts, vs, 0, 40) == pytest.approx(33.0)
    assert rate(ts, vs, 0, 40) == pytest.approx(33.0 / 40)


def test_window_is_closed_at_start_in_2_42() -> None:
    # samples at 0, 10, 20; window [10, 20] holds 10 and 20 (3.x: only 20 -> no result)
    assert increase(arr(0, 10, 20), arr(0, 10, 20), 10, 20) == pytest.approx(10.0)


def test_millisecond_resolution() -> None:
    # 10.0004 rounds to 10000 ms, i.e. onto the window start: included, gap 0 -> 10
    assert increase(arr(10.0004, 20), arr(0, 10), 10, 20) == pytest.approx(10.0)


@pytest.mark.parametrize(("ts", "vs"), [((), ()), ((15,), (3,)), ((1, 2, 30), (1, 2, 3))])
def test_fewer_than_two_samples_in_window_is_none(
    ts: tuple[float, ...], vs: tuple[float, ...]
) -> None:
    assert increase(arr(*ts), arr(*vs), 10, 20) is None
    assert rate(arr(*ts), arr(*vs), 10, 20) is None


def test_empty_window_is_an_error() -> None:
    with pytest.raises(ValueError):
        increase(arr(1, 2), arr(1, 2), 5, 5)


@st.composite
def counters(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    n = draw(st.integers(2, 30))
    gaps = draw(st.lists(st.integers(1, 5000), min_size=n - 1, max_size=n - 1))
    t0 = 1_700_000_000.0 + draw(st.integers(0, 10_000)) / 1000
    ts = t0 + np.concatenate([[0], np.cumsum(gaps)]) / 1000
    steps = draw(st.lists(st.integers(0, 100), min_size=n, max_size=n))
    cum = np.cumsum(steps).astype(float)
    pre = draw(st.integers(0, 3000)) / 1000
    post = draw(st.integers(0, 3000)) / 1000
    return ts, cum, np.array(steps, dtype=float), ts[0] - pre, ts[-1] + post


@settings(max_examples=300, deadline=None)
@given(counters(), st.data())
def test_reset_correction_recovers_the_unreset_increase(
    c: tuple[np.ndarray, np.ndarray, np.ndarray, float, float], data: st.DataObject
) -> None:
    ts, cum, _steps, start, end = c
    k = data.draw(st.integers(1, len(cum) - 1))
    # a restart between samples k-1 and k: afterwards the counter shows only what
    # accumulated since then (Prometheus' assumption), if that is below the old value
    reset = cum.copy()
    reset[k:] -= cum[k - 1]
    got, want = increase(ts, reset, start, end), increase(ts, cum, start, end)
    assert got is not None and want is not None
    if reset[k] < reset[k - 1]:
        assert got == pytest.approx(want, rel=1e-12, abs=1e-9)
    assert got >= 0.0
    r = rate(ts, reset, start, end)
    range_s = (round(end * 1000) - round(start * 1000)) / 1000  # Prometheus works in whole ms
    assert r is not None and r * range_s == pytest.approx(got, rel=1e-9, abs=1e-9)


@settings(max_examples=200, deadline=None)
@given(counters())
def test_no_extrapolation_when_samples_sit_on_the_edges(
    c: tuple[np.ndarray, np.ndarray, np.ndarray, float, float],
) -> None:
    ts, cum, _steps, _s, _e = c
    assert increase(ts, cum, ts[0], ts[-1]) == pytest.approx(cum[-1] - cum[0], abs=1e-9)


# --------------------------------------------------------------------------- SeriesData helpers


def counter(ts: tuple[float, ...], vs: tuple[float, ...]) -> SeriesData:
    return SeriesData("c_total", make_labels(model="m"), arr(*ts), arr(*vs))


def test_counter_rate_and_ratio() -> None:
    assert counter_rate(counter((10, 20, 30, 40, 50), (100, 110, 120, 130, 140)), 5, 55) == (
        pytest.approx(1.0)
    )
    # 0 -> 30 hits, 0 -> 120 queries, samples on the edges: 30/120
    hits, queries = counter((0, 60), (0, 30)), counter((0, 60), (0, 120))
    assert ratio_of_increases(hits, queries, 0, 60) == pytest.approx(0.25)
    assert ratio_of_increases(hits, counter((0, 60), (5, 5)), 0, 60) is None  # no queries
    assert ratio_of_increases(hits, counter((30,), (5,)), 0, 60) is None


@given(
    st.lists(st.lists(st.integers(min_value=0, max_value=50), min_size=12, max_size=12),
             min_size=2, max_size=6),
    st.floats(min_value=0.0, max_value=5.0), st.floats(min_value=6.0, max_value=14.0),
)
def test_vectorised_bucket_increases_equal_per_series(rows: list[list[int]], start: float,
                                                      end: float) -> None:
    """Buckets sharing timestamps take the vectorised path: results must be bit-identical
    to increase() per series, counter resets (drops in the random rows) included."""
    ts = np.arange(12, dtype=np.float64) + 0.25
    series = [SeriesData("x_bucket", (("le", str(i)),), ts, np.array(r, dtype=np.float64))
              for i, r in enumerate(rows)]
    fast = bucket_increases(series, start, end)
    slow = [increase(s.timestamps, s.values, start, end) for s in series]
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow, strict=True):
        assert (a is None and b is None) or (a == b or (math.isnan(a) and math.isnan(b)))  # type: ignore[arg-type]
