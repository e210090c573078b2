"""Window functions over stored series, computed exactly as Prometheus 2.42 computes them.

Why exactly Prometheus: operators compare gpuwarden's p95 TTFT or token rate with what
their Grafana shows from the same vLLM ``/metrics``. If the daemon used its own
definition (a plain ``last - first``, another quantile interpolation), an alert would
fire on a number nobody can reproduce. So this module ports, line for line:

* ``extrapolatedRate`` (``promql/functions.go``) for ``increase()`` and ``rate()``:
  counter-reset correction, extrapolation towards the window edges (fully when the gap
  is under 1.1 x the average sample spacing, else by half a spacing) and the counter
  zero-point clamp, in the 2.x order (clamp *before* the threshold test; 3.x applies it
  after, which can give a smaller result when a series starts inside the window);
* ``bucketQuantile`` (``promql/quantile.go``) for ``histogram_quantile()``, with the 2.42
  ``ensureMonotonic`` (the ``1e-12`` small-delta tolerance of later releases does not
  exist in 2.42; checked against the installed binary).

The version pinned is the one CI runs (Debian ``prometheus`` 2.42.0), and
``tests/test_windows_prometheus.py`` compares these functions with it on real scrapes.

Timestamps are Unix seconds (floats) as in :class:`~gpuwarden.model.SeriesData`. They
are rounded to whole milliseconds first, because Prometheus stores and selects at
millisecond resolution; computing on integer milliseconds also makes the window-edge
test exact (a float ``end - 10.0`` may miss a sample lying exactly on the edge).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from gpuwarden.model import FloatArray, Labels, SeriesData
from gpuwarden.promql.buckets import le_of, without_le

__all__ = [
    "counter_rate",
    "histogram_quantile",
    "increase",
    "rate",
    "ratio_of_increases",
    "window_quantile",
    "window_quantiles",
]

_NAN = math.nan
_INF = math.inf


def _ms(t: float) -> int:
    """Seconds to integer milliseconds, rounding halves up (Go's ``math.Round`` for t > 0)."""
    return math.floor(t * 1000.0 + 0.5)


def _div(a: float, b: float) -> float:
    """IEEE division (x/0 = ±Inf, 0/0 = NaN) as Go does it; Python's ``/`` raises instead."""
    with np.errstate(all="ignore"):
        return float(np.float64(a) / np.float64(b))


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


def _go_search(n: int, pred: Callable[[int], bool]) -> int:
    """Go's ``sort.Search``: the binary search itself, so NaN counts land where Go's do."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) >> 1
        if not pred(mid):
            lo = mid + 1
        else:
            hi = mid
    return lo


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """PromQL ``histogram_quantile`` over classic buckets ``(upper bound le, cumulative count)``.

    Port of Prometheus 2.42 ``bucketQuantile``. Returns NaN where PromQL returns NaN: no
    ``+Inf`` bucket, fewer than two distinct bounds, or zero observations (no traffic in
    the window). An empty bucket list (PromQL would output nothing) and a NaN bound
    (PromQL's answer then depends on Go's sort order) also give NaN.
    """
    if math.isnan(q):
        return _NAN
    if q < 0:
        return -_INF
    if q > 1:
        return _INF
    if not buckets or any(math.isnan(le) for le, _ in buckets):
        return _NAN
    ordered = sorted(((float(le), float(c)) for le, c in buckets), key=lambda b: b[0])
    if ordered[-1][0] != _INF:
        return _NAN

    # coalesceBuckets: the same bound spelled twice ("1" and "1.0") is one bucket.
    bounds: list[float] = []
    counts: list[float] = []
    for le, c in ordered:
        if bounds and bounds[-1] == le:
            counts[-1] += c
        else:
            bounds.append(le)
            counts.append(c)

    # ensureMonotonic (2.42): buckets are not scraped atomically, and increase() scales
    # each bucket by its own factor, so a higher bucket can come out smaller; take the
    # running maximum ("envelope") so the binary search below stays meaningful.
    top = counts[0]
    for i in range(1, len(counts)):
        if counts[i] > top:
            top = counts[i]
        elif counts[i] < top:
            counts[i] = top

    if len(counts) < 2:
        return _NAN
    observations = counts[-1]
    if observations == 0:
        return _NAN
    rank = q * observations
    b = _go_search(len(counts) - 1, lambda i: counts[i] >= rank)

    if b == len(counts) - 1:
        # In the +Inf bucket nothing is known about the value except that it exceeds the
        # largest finite bound; Prometheus answers with that bound (a floor, not a guess).
        return bounds[-2]
    if b == 0 and bounds[0] <= 0:
        return bounds[0]
    bucket_start = 0.0  # natural lower bound of the first bucket (latencies are >= 0)
    bucket_end = bounds[b]
    count = counts[b]
    if b > 0:
        bucket_start = bounds[b - 1]
        count -= counts[b - 1]
        rank -= counts[b - 1]
    return bucket_start + (bucket_end - bucket_start) * _div(rank, count)


def window_quantile(
    q: float, bucket_series: Sequence[SeriesData], start: float, end: float
) -> float | None:
    """One quantile; see :func:`window_quantiles` (which computes several at once)."""
    return window_quantiles((q,), bucket_series, start, end)[0]


def window_quantiles(
    qs: Sequence[float], bucket_series: Sequence[SeriesData], start: float, end: float
) -> list[float | None]:
    """``histogram_quantile(q, increase(x_bucket[end-start]))`` for each q, ONE histogram.

    ``bucket_series`` are the ``_bucket`` series of one histogram: the same signal and
    labels apart from ``le`` (grouping a multi-model scrape is the caller's job; a mix
    raises ValueError rather than silently blending two models).

    Returns None when PromQL would output nothing (no bucket has two samples in the
    window: not enough data yet). Returns NaN when the window saw no observations (the
    ``+Inf`` bucket did not increase), as PromQL does. Detectors must treat NaN as "no
    traffic", never as a breach; ``nan > slo`` is False, so a plain comparison already
    does not fire.
    """
    identity: tuple[str, Labels] | None = None
    usable: list[tuple[float, SeriesData]] = []
    for s in bucket_series:
        rest = without_le(s.labels)
        if identity is None:
            identity = (s.signal, rest)
        elif identity != (s.signal, rest):
            raise ValueError(
                f"bucket series of different histograms: {identity!r} vs {(s.signal, rest)!r}"
            )
        le = le_of(s.labels)
        if le is not None:
            usable.append((le, s))
    increases = _bucket_increases([s for _, s in usable], start, end)
    buckets = [(le, inc) for (le, _), inc in zip(usable, increases, strict=True)
               if inc is not None]
    if not buckets:
        return [None] * len(qs)
    # The bucket increases are the expensive part: compute them once for every q.
    return [histogram_quantile(q, buckets) for q in qs]


def _bucket_increases(
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
