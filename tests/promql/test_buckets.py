"""Bucket series: the le bound PromQL reads, and grouping per histogram."""

from __future__ import annotations

import numpy as np

from gpuwarden.model import SeriesData, make_labels
from gpuwarden.promql.buckets import by_histogram, finite_bounds, le_of, parse_le, without_le


def bucket(le: str | None, model: str = "m") -> SeriesData:
    labels = make_labels(model=model) if le is None else make_labels(model=model, le=le)
    return SeriesData("ttft_seconds_bucket", labels, np.zeros(1), np.zeros(1))


def test_le_reading() -> None:
    assert parse_le("+Inf") == float("inf") and parse_le("0.25") == 0.25
    assert parse_le("bogus") is None and parse_le(None) is None
    assert le_of(make_labels(le="1", model="m")) == 1.0 and le_of(make_labels(model="m")) is None
    assert without_le(make_labels(le="1", model="m")) == make_labels(model="m")


def test_grouped_per_histogram_and_finite_bounds_sorted() -> None:
    a = [bucket("+Inf", "a"), bucket("0.5", "a"), bucket("0.1", "a"), bucket("bogus", "a")]
    b = [bucket("1", "b"), bucket(None, "b")]
    groups = by_histogram([a[0], b[0], *a[1:], b[1]])
    assert list(groups) == [make_labels(model="a"), make_labels(model="b")]
    assert groups[make_labels(model="a")] == a
    assert finite_bounds(groups[make_labels(model="a")]) == [0.1, 0.5]
    assert finite_bounds(groups[make_labels(model="b")]) == [1.0]
