"""Staleness: max(3 x interval, 5 s), widened to three of the series' own spacings."""

from __future__ import annotations

import numpy as np

from gpuwarden.model import SeriesData, make_labels
from gpuwarden.promql.staleness import (
    is_live,
    last_spacing,
    median_spacing,
    no_spacing,
    stale_after,
)

NOW = 1_000_000.0


def at(*ts: float) -> SeriesData:
    stamps = np.array([NOW + t for t in ts], dtype=np.float64)
    return SeriesData("x", make_labels(server="s"), stamps, np.zeros(len(stamps)))


def test_limit_is_three_intervals_at_least_five_seconds() -> None:
    assert stale_after(1.0) == 5.0
    assert stale_after(10.0) == 30.0
    assert stale_after(1.0, spacing=60.0) == 180.0


def test_edges() -> None:
    assert is_live(at(-10, -5), NOW, 1.0)  # exactly 5 s old: still live
    assert not is_live(at(-10.5, -5.001), NOW, 0.1, spacing=no_spacing)
    assert not is_live(at(), NOW, 1.0)
    assert is_live(at(-25), NOW, 10.0)  # one sample: the interval alone


def test_spacing_estimates() -> None:
    late_round = at(-300, -240, -180, -120, -10)  # once a minute, then one 110 s gap
    assert last_spacing(late_round) == 110.0
    assert median_spacing(late_round) == 60.0
    assert last_spacing(at(-1)) == 0.0 and median_spacing(at(-2, -1)) == 0.0
    old = at(-300, -240, -180)  # newest 180 s old: live only while 3 spacings reach it
    assert is_live(old, NOW, 1.0) and is_live(old, NOW, 1.0, spacing=median_spacing)
    assert not is_live(old, NOW + 1, 1.0)
    assert not is_live(old, NOW, 1.0, spacing=no_spacing)
