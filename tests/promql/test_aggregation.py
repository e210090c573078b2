"""Aggregation over a window (last/mean/max/min, NaN skipped), median, label matching."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwarden.model import SeriesData, make_labels
from gpuwarden.promql.aggregation import aggregate, by_labels, median, values_in


def series(ts: list[float], vs: list[float], server: str = "s") -> SeriesData:
    return SeriesData("x", make_labels(server=server), np.array(ts, dtype=np.float64),
                      np.array(vs, dtype=np.float64))


S = series([0, 10, 20, 30, 40], [1.0, 5.0, math.nan, 3.0, 2.0])


def test_values_in_is_closed_and_skips_nan() -> None:
    assert values_in(S, 10, 30).tolist() == [5.0, 3.0]
    assert values_in(S, 41, 50).size == 0


def test_aggregations() -> None:
    assert aggregate(S, "mean", 10, 40) == pytest.approx(10 / 3)
    assert aggregate(S, "max", 0, 40) == 5.0
    assert aggregate(S, "min", 15, 40) == 2.0
    assert aggregate(S, "mean", 41, 50) is None
    # last: the newest value at or before the end, whatever the window start
    assert aggregate(S, "last", 35, 39) == 3.0
    assert aggregate(series([0, 10], [4.0, math.nan]), "last", 5, 10) == 4.0
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate(S, "p99", 0, 40)


@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=40))
def test_median_is_numpy_median(xs: list[float]) -> None:
    assert median(xs) == float(np.median(np.array(xs)))


def test_median_of_nothing_or_nan_is_nan() -> None:
    assert math.isnan(median([])) and math.isnan(median([1.0, math.nan]))


def test_by_labels() -> None:
    a, b = series([0], [1.0], "a"), series([0], [2.0], "b")
    assert by_labels([a, b]) == {a.labels: a, b.labels: b}
