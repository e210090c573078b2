"""``histogram_quantile`` as current Prometheus computes it, and over a window of buckets.

Why a port and not a textbook quantile: an SLO alert on p95 TTFT must fire on the
number the operator's Grafana shows for the same vLLM ``/metrics`` (``windows.py`` says
why exactly Prometheus). This module ports ``BucketQuantile`` of ``promql/quantile.go``
as Prometheus 2.49 and later compute it (3.x included): before the envelope that forces
the cumulative counts to be monotonic, ``ensureMonotonicAndIgnoreSmallDeltas`` treats
neighbouring counts within a relative ``1e-12`` of each other as equal (float noise
from summing or scaling buckets, e.g. ``increase()`` of buckets scraped at slightly
different times), so such noise cannot move a quantile to the far edge of an empty
bucket. Prometheus 2.42 to 2.48 lack that tolerance: on such buckets they answer, say,
20 where current Prometheus (and gpuwarden) answer 15. Counts further apart than that
(integer counts below 5 * 10^11 always are) give the same answer in both, so the
comparison with the installed Debian 2.42 binary in
``tests/promql/test_windows_prometheus.py`` still holds;
``tests/promql/test_quantile_prometheus.py`` checks that binary's answers on noisy
buckets, the difference included. The result composes with the
bucket increases of ``windows.py`` into ``histogram_quantile(q, increase(x_bucket[w]))``,
the one p50/p95/p99 of the exposition and of the quantile detector alike.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Callable, Sequence

import numpy as np

from gpuwarden.model import Labels, SeriesData
from gpuwarden.promql.buckets import le_of, without_le
from gpuwarden.promql.windows import bucket_increases

_NAN = math.nan
_INF = math.inf
# Prometheus' ``smallDeltaTolerance``: neighbouring bucket counts closer than this,
# relative to their sum, are treated as equal.
SMALL_DELTA_TOLERANCE = 1e-12
# Smallest positive normal float64; ``almost.Equal`` measures a difference against a 0
# (or denormal) count by it instead of by the sum.
_MIN_NORMAL = 2.2250738585072014e-308
_STALE_NAN_BITS = 0x7FF0000000000002  # Prometheus' staleness marker, a NaN of its own


def _div(a: float, b: float) -> float:
    """IEEE division (x/0 = ±Inf, 0/0 = NaN) as Go does it; Python's ``/`` raises instead."""
    with np.errstate(all="ignore"):
        return float(np.float64(a) / np.float64(b))


def _is_stale_nan(x: float) -> bool:
    return math.isnan(x) and struct.unpack("<Q", struct.pack("<d", x))[0] == _STALE_NAN_BITS


def almost_equal(a: float, b: float, epsilon: float) -> bool:
    """Prometheus' ``almost.Equal``: ``|a - b|`` below ``epsilon`` times ``|a| + |b|``.

    Two NaNs are equal (but a staleness marker only to another one); a 0 (or a pair of
    denormals) is only "almost equal" to a number within ``epsilon`` smallest normals.
    """
    if math.isnan(a) or math.isnan(b):
        if _is_stale_nan(a) or _is_stale_nan(b):
            return _is_stale_nan(a) and _is_stale_nan(b)
        return math.isnan(a) and math.isnan(b)
    if a == b:
        return True
    abs_sum = abs(a) + abs(b)
    diff = abs(a - b)
    if a == 0 or b == 0 or abs_sum < _MIN_NORMAL:
        return diff < epsilon * _MIN_NORMAL
    return diff / min(abs_sum, sys.float_info.max) < epsilon


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

    Port of ``BucketQuantile`` of Prometheus 2.49 and later (module docstring). Returns
    NaN where PromQL returns NaN: no ``+Inf`` bucket, fewer than two distinct bounds, or
    zero observations (no traffic in the window). An empty bucket list (PromQL would
    output nothing) and a NaN bound (PromQL's answer then depends on Go's sort order)
    also give NaN.
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

    # ensureMonotonicAndIgnoreSmallDeltas: buckets are not scraped atomically, and
    # increase() scales each bucket by its own factor, so a higher bucket can come out
    # smaller. A count within SMALL_DELTA_TOLERANCE of the last one kept is float noise,
    # in either direction: it takes that count. A real decrease is raised to it (the
    # "envelope"), so the binary search below stays meaningful. In both cases the count
    # kept stays the reference for the next bucket.
    prev = counts[0]
    for i in range(1, len(counts)):
        curr = counts[i]
        if curr == prev:
            continue
        if almost_equal(prev, curr, SMALL_DELTA_TOLERANCE) or curr < prev:
            counts[i] = prev
            continue
        prev = curr

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
