"""Range-vector functions over stored series, computed exactly as Prometheus 2.42 does.

Why exactly Prometheus: operators compare gpuwarden's p95 TTFT or token rate with what
their Grafana shows from the same vLLM ``/metrics``. If the daemon used its own
definition (a plain ``last - first``, another quantile interpolation), an alert would
fire on a number nobody can reproduce. So this module ports, line for line,
``extrapolatedRate`` (``promql/functions.go``) for ``increase()`` and ``rate()``:
counter-reset correction, extrapolation towards the window edges (fully when the gap
is under 1.1 x the average sample spacing, else by half a spacing) and the counter
zero-point clamp, in the 2.x order (clamp *before* the threshold test; 3.x applies it
after, which can give a smaller result when a series starts inside the window).
``quantile.py`` ports ``histogram_quantile`` on top of :func:`bucket_increases`.

The version pinned is the one CI runs (Debian ``prometheus`` 2.42.0), and
``tests/promql/test_windows_prometheus.py`` compares these functions with it on real
scrapes.

Timestamps are Unix seconds (floats) as in :class:`~gpuwarden.model.SeriesData`. They
are rounded to whole milliseconds first, because Prometheus stores and selects at
millisecond resolution; computing on integer milliseconds also makes the window-edge
test exact (a float ``end - 10.0`` may miss a sample lying exactly on the edge).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from gpuwarden.model import FloatArray, SeriesData

__all__ = ["bucket_increases", "counter_rate", "increase", "rate", "ratio_of_increases"]


def _ms(t: float) -> int:
    """Seconds to integer milliseconds, rounding halves up (Go's ``math.Round`` for t > 0)."""
    return math.floor(t * 1000.0 + 0.5)


def _window(
    timestamps: FloatArray, values: FloatArray, start: float, end: float
) -> tuple[npt.NDArray[np.int64], FloatArray, int, int]:
    """The samples a range selector ``[end - start]`` evaluated at ``end`` sees.

    Prometheus 2.x selects the CLOSED interval ``[start, end]`` (a sample exactly on
    ``start`` counts); Prometheus 3.0 changed range selectors to left-open
    ``(start, end]``. We follow 2.42, the version we are tested against.
    """
    start_ms, end_ms = _ms(start), _ms(end)
    if end_ms <= start_ms:
        raise ValueError(f"empty window: start={start!r} end={end!r}")
    ts = np.asarray(timestamps, dtype=np.float64)
    vs = np.asarray(values, dtype=np.float64)
    if ts.shape != vs.shape:
        raise ValueError("timestamps and values differ in length")
    t_ms = np.floor(ts * 1000.0 + 0.5).astype(np.int64)
    # Series are sorted by time (SeriesData's contract): two binary searches select
    # the window without a per-sample pass, which matters at ~800 calls per cycle.
    lo = int(np.searchsorted(t_ms, start_ms, side="left"))
    hi = int(np.searchsorted(t_ms, end_ms, side="right"))
    return t_ms[lo:hi], vs[lo:hi], start_ms, end_ms


def _extrapolated_rate(
    timestamps: FloatArray,
    values: FloatArray,
    start: float,
    end: float,
    *,
    is_counter: bool,
    is_rate: bool,
) -> float | None:
    """Port of ``extrapolatedRate`` (Prometheus 2.42, float samples only)."""
    t, v, range_start, range_end = _window(timestamps, values, start, end)
    # "No sense in trying to compute a rate without at least two points."
    if len(v) < 2:
        return None
    first, last = float(v[0]), float(v[-1])
    result = last - first
    if is_counter:
        # A drop means the counter restarted from zero: what it had reached before the
        # drop was lost from last - first, so add it back (one addition per reset, in
        # order, as Go does, so the float result is bit-identical).
        for i in np.flatnonzero(v[1:] < v[:-1]):
            result += float(v[i])

    t_first, t_last = int(t[0]), int(t[-1])
    duration_to_start = (t_first - range_start) / 1000
    duration_to_end = (range_end - t_last) / 1000
    sampled_interval = (t_last - t_first) / 1000
    if sampled_interval == 0:  # two samples in one millisecond: Prometheus cannot store that
        return None
    average_between = sampled_interval / (len(v) - 1)

    if is_counter and result > 0 and first >= 0:
        # A counter cannot have been negative: do not extrapolate back past the moment
        # the line through the samples crosses zero (a series that started inside the
        # window). 2.42 clamps here, before the threshold test below.
        duration_to_zero = sampled_interval * (first / result)
        duration_to_start = min(duration_to_start, duration_to_zero)

    # Extrapolate to a window edge when the gap looks like a missing next sample (less
    # than 1.1 spacings); otherwise the series began/ended inside the window: add only
    # half a spacing.
    threshold = average_between * 1.1
    extrapolate_to = sampled_interval
    extrapolate_to += duration_to_start if duration_to_start < threshold else average_between / 2
    extrapolate_to += duration_to_end if duration_to_end < threshold else average_between / 2
    factor = extrapolate_to / sampled_interval
    if is_rate:
        factor /= (range_end - range_start) / 1000
    return result * factor


def increase(timestamps: FloatArray, values: FloatArray, start: float, end: float) -> float | None:
    """PromQL ``increase(x[end-start])`` evaluated at ``end``; None where PromQL has no output.

    Like PromQL, the result is extrapolated and hence usually not an integer even for
    integer counters.
    """
    return _extrapolated_rate(timestamps, values, start, end, is_counter=True, is_rate=False)


def rate(timestamps: FloatArray, values: FloatArray, start: float, end: float) -> float | None:
    """PromQL ``rate(x[end-start])`` at ``end``, per second; None where PromQL has no output."""
    return _extrapolated_rate(timestamps, values, start, end, is_counter=True, is_rate=True)



def bucket_increases(
    series: Sequence[SeriesData], start: float, end: float
) -> list[float | None]:
    """``increase()`` of every bucket, vectorised when they share timestamps.

    The buckets of one histogram come from the same scrapes, so they almost always
    share their timestamps: then one window selection and one set of array operations
    serve all ~20 of them (the per-call numpy overhead dominated the cycle's CPU).
    The arithmetic is the same IEEE operations in the same order as
    :func:`_extrapolated_rate`, so results are bit-identical; anything irregular takes
    the per-series path.
    """
    n = len(series[0].timestamps) if series else 0
    if len(series) < 2 or any(len(s.timestamps) != n for s in series):
        return [increase(s.timestamps, s.values, start, end) for s in series]
    stamps = np.vstack([s.timestamps for s in series])
    if not (stamps == stamps[0]).all():  # one comparison for all buckets
        return [increase(s.timestamps, s.values, start, end) for s in series]
    t, _, range_start, range_end = _window(series[0].timestamps, series[0].values, start, end)
    if len(t) < 2:
        return [None] * len(series)
    lo = int(np.searchsorted(np.floor(series[0].timestamps * 1000.0 + 0.5), t[0], "left"))
    v = np.vstack([s.values for s in series])[:, lo : lo + len(t)]
    first, last = v[:, 0], v[:, -1]
    result = last - first
    drops = v[:, 1:] < v[:, :-1]
    for row in np.flatnonzero(drops.any(axis=1)):  # counter resets: rare, exact order
        total = float(result[row])
        for i in np.flatnonzero(drops[row]):
            total += float(v[row, i])
        result[row] = total
    t_first, t_last = int(t[0]), int(t[-1])
    sampled_interval = (t_last - t_first) / 1000
    if sampled_interval == 0:
        return [None] * len(series)
    average_between = sampled_interval / (len(t) - 1)
    to_start = np.full(len(series), (t_first - range_start) / 1000)
    to_end = (range_end - t_last) / 1000
    with np.errstate(all="ignore"):
        clamp = (result > 0) & (first >= 0)
        to_start = np.where(clamp, np.minimum(to_start, sampled_interval * (first / result)),
                            to_start)
    threshold = average_between * 1.1
    extrapolate_to = sampled_interval + np.where(to_start < threshold, to_start,
                                                 average_between / 2)
    extrapolate_to = extrapolate_to + (to_end if to_end < threshold else average_between / 2)
    out: list[float | None] = [float(x) for x in result * (extrapolate_to / sampled_interval)]
    return out


def counter_rate(series: SeriesData, start: float, end: float) -> float | None:
    """Per-second ``rate()`` of a counter series over ``[start, end]``; None without 2 samples."""
    return rate(series.timestamps, series.values, start, end)


def ratio_of_increases(num: SeriesData, den: SeriesData, start: float, end: float) -> float | None:
    """``increase(num[w]) / increase(den[w])``, e.g. prefix-cache hits / queries.

    None when either side has no result or the denominator did not increase: PromQL
    would give NaN or Inf there, and a ratio "with no queries" is no data, not 0 % or
    100 % (a hit-ratio detector must not fire on an idle server).
    """
    n = increase(num.timestamps, num.values, start, end)
    d = increase(den.timestamps, den.values, start, end)
    if n is None or d is None or not d > 0:
        return None
    return n / d
