"""``histogram_quantile`` as Prometheus 2.42 computes it, and over a window of buckets.

Why a port and not a textbook quantile: an SLO alert on p95 TTFT must fire on the
number the operator's Grafana shows for the same vLLM ``/metrics`` (``windows.py`` says
why exactly Prometheus). This module ports ``bucketQuantile`` (``promql/quantile.go``),
with the 2.42 ``ensureMonotonic`` (the ``1e-12`` small-delta tolerance of later releases
does not exist in 2.42; checked against the installed binary), and composes it with the
bucket increases of ``windows.py`` into ``histogram_quantile(q, increase(x_bucket[w]))``,
the one p50/p95/p99 of the exposition and of the quantile detector alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from gpuwarden.model import Labels, SeriesData
from gpuwarden.promql.buckets import le_of, without_le
from gpuwarden.promql.windows import bucket_increases

_NAN = math.nan
_INF = math.inf


def _div(a: float, b: float) -> float:
    """IEEE division (x/0 = ±Inf, 0/0 = NaN) as Go does it; Python's ``/`` raises instead."""
    with np.errstate(all="ignore"):
        return float(np.float64(a) / np.float64(b))


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
    increases = bucket_increases([s for _, s in usable], start, end)
    buckets = [(le, inc) for (le, _), inc in zip(usable, increases, strict=True)
               if inc is not None]
    if not buckets:
        return [None] * len(qs)
    # The bucket increases are the expensive part: compute them once for every q.
    return [histogram_quantile(q, buckets) for q in qs]
