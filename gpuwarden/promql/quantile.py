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
from itertools import pairwise
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from gpuwarden.model import FloatArray, Labels, SeriesData
from gpuwarden.promql.buckets import by_histogram, split_le
from gpuwarden.promql.windows import bucket_increases, increases_array

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
        rest, le = split_le(s.labels)
        if identity is None:
            identity = (s.signal, rest)
        elif identity != (s.signal, rest):
            raise ValueError(
                f"bucket series of different histograms: {identity!r} vs {(s.signal, rest)!r}"
            )
        if le is not None:
            usable.append((le, s))
    increases = bucket_increases([s for _, s in usable], start, end)
    buckets = [(le, inc) for (le, _), inc in zip(usable, increases, strict=True)
               if inc is not None]
    if not buckets:
        return [None] * len(qs)
    # The bucket increases are the expensive part: compute them once for every q.
    return [histogram_quantile(q, buckets) for q in qs]


def quantiles_by_histogram(
    qs: Sequence[float], bucket_series: Sequence[SeriesData], start: float, end: float
) -> list[tuple[Labels, list[float | None]]]:
    """:func:`window_quantiles` of every histogram among ``bucket_series``, each labelled
    as and in the order of :func:`~gpuwarden.promql.buckets.by_histogram`, bit-identical
    to calling it per histogram; :func:`quantiles_of_families` says how."""
    return quantiles_of_families(qs, [bucket_series], start, end)[0]


def quantiles_of_families(
    qs: Sequence[float], families: Sequence[Sequence[SeriesData]], start: float, end: float
) -> list[list[tuple[Labels, list[float | None]]]]:
    """:func:`quantiles_by_histogram` of each family's bucket series, all in one go.

    The exposition takes p50/p95/p99 of every server's six latency histograms every few
    seconds (~100 histograms of ~20 buckets at 16 servers): the bucket increases of all of
    them are one :func:`~gpuwarden.promql.windows.increases_array`, the histograms that
    share their bounds one matrix for :func:`_stacked_quantiles`, and how the series
    group into histograms and matrices is worked out once per label sequence
    (:func:`_plan`). A histogram that matrix cannot take exactly (a bucket without
    increase, a bound twice or NaN, no ``+Inf``, non-finite counts, counts
    :func:`histogram_quantile` would have to make monotonic) is computed by
    :func:`histogram_quantile` itself, and a family whose series are of several signals
    by :func:`window_quantiles` per histogram (which refuses a histogram of two).
    """
    out: list[list[tuple[Labels, list[float | None]]]] = [[] for _ in families]
    plain: list[int] = []
    for f, family in enumerate(families):
        if len({s.signal for s in family}) > 1:
            out[f] = [(labels, window_quantiles(qs, group, start, end))
                      for labels, group in by_histogram(family).items()]
        else:
            plain.append(f)
    series = [s for f in plain for s in families[f]]
    plan = _plan_of([len(families[f]) for f in plain], [s.labels for s in series])
    usable = series if plan.usable is None else [series[i] for i in plan.usable]
    counts, has = increases_array(usable, start, end)
    results: list[list[float | None]] = [[] for _ in plan.labels]
    for pos, les, members in plan.singles:
        results[pos] = _one_histogram(qs, les, counts[members].tolist(), has[members].tolist())
    for stack in plan.stacks:
        stacked = counts[stack.rows]
        done, answers = _stacked_quantiles(qs, stack.bounds, stacked)
        done &= has[stack.rows].all(axis=1)
        for row, (pos, ok, answer) in enumerate(zip(stack.positions, done.tolist(), answers,
                                                     strict=True)):
            results[pos] = answer if ok else _one_histogram(
                qs, stack.les, stacked[row].tolist(), has[stack.rows[row]].tolist())
    for f, (first, stop) in zip(plain, pairwise(plan.family_starts), strict=True):
        out[f] = list(zip(plan.labels[first:stop], results[first:stop], strict=True))
    return out


def _one_histogram(qs: Sequence[float], les: Sequence[float], counts: Sequence[float],
                   has: Sequence[bool]) -> list[float | None]:
    """:func:`window_quantiles`' answer from the bucket increases (``has``: which exist)."""
    buckets = [(le, c) for le, c, ok in zip(les, counts, has, strict=True) if ok]
    if not buckets:
        return [None] * len(qs)
    return [histogram_quantile(q, buckets) for q in qs]


class _Stack(NamedTuple):
    """Histograms with the same bounds: one matrix of bucket increases."""

    les: tuple[float, ...]  # the bounds, sorted, distinct, the last +Inf
    bounds: FloatArray  # the same as an array
    rows: npt.NDArray[np.intp]  # per histogram, its buckets' positions among the usable
    positions: list[int]  # per histogram, its position in the answer


class _Plan(NamedTuple):
    """How the bucket series of some families (by label set) group into histograms."""

    labels: list[Labels]  # the histograms, as by_histogram groups each family's
    family_starts: list[int]  # where each family's histograms begin in ``labels``, + end
    usable: list[int] | None  # the series with an ``le`` bound (None: all)
    singles: list[tuple[int, tuple[float, ...], list[int]]]  # position, bounds, buckets
    stacks: list[_Stack]
    label_sets: Sequence[Labels]  # what it was made from (kept alive: see _plan_of)


#: Plans by family sizes and the label sets' identities, then by their values; cleared
#: when full. The store hands out the same label tuples each read, so the identity look-up
#: (a tuple of ints) usually answers; a plan keeps its tuples alive, so an identity in
#: its key cannot be another object's while it is there. A daemon reads a handful of
#: label sequences (the latency families, the two length histograms, the quantile
#: rules'), which change only as series come and go; a plan of 16 servers' ~2000 bucket
#: series is ~0.2 MB, hence the small bound.
_PLANS_BY_ID: dict[tuple[tuple[int, ...], tuple[int, ...]], _Plan] = {}
_PLANS: dict[tuple[tuple[int, ...], tuple[Labels, ...]], _Plan] = {}
_PLANS_MAX = 16


def _plan_of(sizes: Sequence[int], label_sets: Sequence[Labels]) -> _Plan:
    by_id = (tuple(sizes), tuple(map(id, label_sets)))
    plan = _PLANS_BY_ID.get(by_id)
    if plan is None:
        by_value = (by_id[0], tuple(label_sets))
        plan = _PLANS.get(by_value)
        if plan is None:
            if len(_PLANS) >= _PLANS_MAX:
                _PLANS.clear()
            plan = _PLANS[by_value] = _plan(sizes, by_value[1])
        if len(_PLANS_BY_ID) >= _PLANS_MAX:
            _PLANS_BY_ID.clear()
        _PLANS_BY_ID[by_id] = plan
    return plan


def _plan(sizes: Sequence[int], label_sets: Sequence[Labels]) -> _Plan:
    """Group each family's bucket series (``sizes``: how many of ``label_sets`` each has,
    in order) as :func:`by_histogram` and :func:`window_quantiles` do, and stack the
    histograms whose bounds need no more of :func:`histogram_quantile` than sorting: two
    or more, none NaN or twice, ``+Inf`` among them (so that their order cannot matter)."""
    groups: dict[tuple[int, Labels], tuple[list[float], list[int]]] = {}
    family_starts: list[int] = []
    usable: list[int] = []
    i = 0
    for f, size in enumerate(sizes):
        family_starts.append(len(groups))
        for labels in label_sets[i:i + size]:
            rest, le = split_le(labels)
            group = groups.get((f, rest))
            if group is None:
                group = groups[f, rest] = ([], [])
            if le is not None:
                group[0].append(le)
                group[1].append(len(usable))
                usable.append(i)
            i += 1
    family_starts.append(len(groups))
    singles: list[tuple[int, tuple[float, ...], list[int]]] = []
    stacked: dict[tuple[float, ...], list[tuple[int, list[int]]]] = {}
    for pos, (les, members) in enumerate(groups.values()):
        order = sorted(range(len(les)), key=les.__getitem__)
        bounds = tuple(les[i] for i in order)
        if len(bounds) >= 2 and bounds[-1] == _INF and all(
                a < b for a, b in pairwise(bounds)):  # False for NaN too
            stacked.setdefault(bounds, []).append((pos, [members[i] for i in order]))
        else:
            singles.append((pos, tuple(les), members))
    stacks = [_Stack(bounds, np.asarray(bounds, dtype=np.float64),
                     np.asarray([rows for _, rows in group], dtype=np.intp),
                     [pos for pos, _ in group])
              for bounds, group in stacked.items()]
    return _Plan([rest for _, rest in groups], family_starts,
                 None if len(usable) == len(label_sets) else usable, singles, stacks,
                 label_sets)


def _stacked_quantiles(
    qs: Sequence[float], bounds: FloatArray, counts: FloatArray
) -> tuple[npt.NDArray[np.bool_], list[list[float | None]]]:
    """:func:`histogram_quantile` of each row of ``counts`` (cumulative, in the order of
    the sorted, distinct ``bounds``, the last ``+Inf``) for the rows whose counts are
    finite and already monotonic, Prometheus' small deltas included: the rows it computes
    (the others' answers are placeholders) and the answers per row.

    Same IEEE operations as the scalar port, row by row; the binary search is a count of
    the counts below the rank, which is where it lands on monotonic counts.
    """
    below, above = counts[:, :-1], counts[:, 1:]
    with np.errstate(all="ignore"):
        # almost_equal(below, above, SMALL_DELTA_TOLERANCE) for finite, unequal counts
        abs_sum = np.abs(below) + np.abs(above)
        diff = np.abs(below - above)
        tiny = (below == 0) | (above == 0) | (abs_sum < _MIN_NORMAL)
        almost = np.where(tiny, diff < SMALL_DELTA_TOLERANCE * _MIN_NORMAL,
                          diff / np.minimum(abs_sum, sys.float_info.max)
                          < SMALL_DELTA_TOLERANCE)
    # The monotonicity pass leaves a count alone when it equals the last one kept or
    # rises clearly above it; rows where every count does need nothing of it.
    done = (np.isfinite(counts).all(axis=1)
            & ((above == below) | ((above > below) & ~almost)).all(axis=1))
    n = counts.shape[1]
    rows = np.arange(len(counts))
    observations = counts[:, -1]
    per_q: list[list[float]] = []
    for q in qs:
        if math.isnan(q) or q < 0 or q > 1:  # answered before the buckets are looked at
            per_q.append([histogram_quantile(q, [])] * len(counts))
            continue
        with np.errstate(all="ignore"):  # IEEE arithmetic, as the scalar port (_div)
            rank = q * observations
            b = (below < rank[:, None]).sum(axis=1)
            prev = np.maximum(b - 1, 0)
            inner = b > 0
            bucket_start = np.where(inner, bounds[prev], 0.0)
            bucket_end = bounds[b]
            count = np.where(inner, counts[rows, b] - counts[rows, prev], counts[rows, b])
            rank = np.where(inner, rank - counts[rows, prev], rank)
            value = bucket_start + (bucket_end - bucket_start) * (rank / count)
        value = np.where((b == 0) & (bounds[0] <= 0), bounds[0], value)
        value = np.where(b == n - 1, bounds[n - 2], value)
        value = np.where(observations == 0, _NAN, value)
        per_q.append(value.tolist())
    answers: list[list[float | None]] = [[row[i] for row in per_q] for i in range(len(counts))]
    return done, answers
