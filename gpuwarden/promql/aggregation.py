"""Aggregating stored samples: over time within a series, and matching series by labels.

One implementation for every detector and derived signal, so that two rules reading the
same signal agree on what "the mean over the window" or "the last value" is:

* ``last``/``mean``/``max``/``min`` over ``[start, end]`` (PromQL's ``last_over_time``,
  ``avg_over_time``...), NaN samples skipped; ``last`` takes the newest value at or
  before ``end`` whatever its age (staleness is ``staleness.py``'s question);
* the median of an array without ``np.median`` (see :func:`median` for why);
* one-to-one matching of two signals' series on identical label sets (PromQL's
  ``a / b`` without ``on``/``ignoring``), and the peak of their sum over a window
  (``max_over_time((a + b)[w])``, e.g. running + waiting requests).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import numpy.typing as npt

from gpuwarden.model import FloatArray, Labels, SeriesData


def in_window(series: SeriesData, start: float, end: float) -> tuple[FloatArray, FloatArray]:
    """The series' timestamps and values with ``start <= ts <= end`` (views, NaN kept)."""
    ts = series.timestamps
    lo = int(np.searchsorted(ts, start, side="left"))
    hi = int(np.searchsorted(ts, end, side="right"))
    return ts[lo:hi], series.values[lo:hi]


def values_in(series: SeriesData, start: float, end: float) -> FloatArray:
    """The series' non-NaN values with ``start <= ts <= end``, oldest first."""
    _, vs = in_window(series, start, end)
    if vs.size and np.isnan(vs).any():
        vs = vs[~np.isnan(vs)]
    return vs


def aggregate(series: SeriesData, aggregation: str, start: float, end: float) -> float | None:
    """``last``/``mean``/``max``/``min`` of the window; None when it holds no value."""
    if aggregation == "last":
        vs = values_in(series, -math.inf, end)
        return float(vs[-1]) if vs.size else None
    vs = values_in(series, start, end)
    if not vs.size:
        return None
    if aggregation == "mean":
        return float(vs.mean())
    if aggregation == "max":
        return float(vs.max())
    if aggregation == "min":
        return float(vs.min())
    raise ValueError(f"unknown aggregation {aggregation!r}")


def median(values: npt.ArrayLike) -> float:
    """``np.median`` of 1-D data (NaN if any value is NaN or there is none), bit for bit.

    Not ``np.median`` itself: numpy 2 imports ``numpy.ma`` on its first call (to check
    for a masked array), ~1.3 MiB the daemon would then hold for its whole life.
    """
    a = np.asarray(values, dtype=np.float64).ravel()
    n = a.size
    if n == 0 or bool(np.isnan(a).any()):
        return math.nan
    h = n // 2
    part = np.partition(a, [h - 1, h] if n % 2 == 0 else h)
    return float(part[h]) if n % 2 else float((part[h - 1] + part[h]) / 2.0)


def by_labels(series: Iterable[SeriesData]) -> dict[Labels, SeriesData]:
    """Series keyed by their label set, to match one signal's series with another's."""
    return {s.labels: s for s in series}


def peak_of_sum(a: SeriesData, b: SeriesData, start: float, end: float) -> float | None:
    """max over ``[start, end]`` of ``a + b`` at the timestamps both have (one scrape gives
    both), NaN skipped; None when they share none."""
    ta, va = in_window(a, start, end)
    tb, vb = in_window(b, start, end)
    _, ia, ib = np.intersect1d(ta, tb, assume_unique=True, return_indices=True)
    total = va[ia] + vb[ib]
    total = total[~np.isnan(total)]
    return float(total.max()) if total.size else None
