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
``quantile.py`` ports ``histogram_quantile`` on top of :func:`increases_array`, the
vectorised :func:`increase` of many series at once (:func:`increases`, :func:`rates`).

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

__all__ = ["bucket_increases", "counter_rate", "increase", "increases", "rate", "rates",
           "ratio_of_increases"]


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
    """``increase()`` of every bucket of a histogram: :func:`increases` (kept under this
    name for the histogram readers)."""
    return increases(series, start, end)


def increases(series: Sequence[SeriesData], start: float, end: float) -> list[float | None]:
    """``increase()`` of each series over ``[start, end]``, bit-identical to :func:`increase`
    per series, in one set of array operations per sample count.

    The derived signals take the increases of every bucket of every server's histograms
    (~2000 series at 16 servers) each time: one numpy call per series and step dominated
    their CPU, so the series are stacked and each gets its own window in the same pass.
    """
    return _as_list(*_extrapolated_rates(series, start, end, is_rate=False))


def increases_array(series: Sequence[SeriesData], start: float,
                    end: float) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """:func:`increases` as an array (NaN where there is none) and the mask of the series
    that have one, for readers that go on computing with them (``quantile.py``)."""
    return _extrapolated_rates(series, start, end, is_rate=False)


def rates(series: Sequence[SeriesData], start: float, end: float) -> list[float | None]:
    """``rate()`` of each series over ``[start, end]``: :func:`rate` per series, vectorised
    as :func:`increases` is."""
    return _as_list(*_extrapolated_rates(series, start, end, is_rate=True))


def _as_list(values: FloatArray, has: npt.NDArray[np.bool_]) -> list[float | None]:
    return [v if ok else None for v, ok in zip(values.tolist(), has.tolist(), strict=True)]


# Timestamps and window edges up to this many milliseconds from 0 (year ~33700): every
# millisecond difference stays below 2**53, so numpy's float64 division of it is Python's
# int division, and the int64 conversion cannot overflow.
_STACKABLE_MS = 1e15


def _extrapolated_rates(
    series: Sequence[SeriesData], start: float, end: float, *, is_rate: bool
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """:func:`_extrapolated_rate` of each series (counters), vectorised.

    The series are stacked into one matrix per length; each row is windowed by counting
    its samples before ``start`` and up to ``end`` (rows are sorted), which is where the
    two binary searches of :func:`_window` land. Every float step is the same IEEE
    operation, in the same order, as the scalar port, so results are bit-identical.
    Anything the stacking cannot take exactly (odd arrays or dtypes, unsorted or
    out-of-range timestamps, an empty window) goes through the scalar port, which also
    raises its errors. Returns the results (NaN where there is none) and which exist.
    """
    out = np.full(len(series), math.nan)
    has = np.zeros(len(series), dtype=np.bool_)

    def scalar(i: int) -> None:
        s = series[i]
        got = _extrapolated_rate(s.timestamps, s.values, start, end, is_counter=True,
                                 is_rate=is_rate)
        if got is not None:
            out[i], has[i] = got, True

    try:
        start_ms, end_ms = _ms(start), _ms(end)
        stackable = end_ms > start_ms and max(abs(start_ms), abs(end_ms)) <= _STACKABLE_MS
        stamps_list = [s.timestamps for s in series]
        values_list = [s.values for s in series]
        lengths = list(map(len, stamps_list))
        stackable = stackable and bool(series) and lengths == list(map(len, values_list))
        if stackable:
            # float64 as _window's np.asarray(..., float64) converts; 1-D or it raises
            flat_t, flat_v = np.concatenate(stamps_list), np.concatenate(values_list)
            stackable = (flat_t.dtype == flat_v.dtype == np.float64 and flat_t.ndim == 1
                         and flat_v.ndim == 1)
    except (OverflowError, TypeError, ValueError):  # odd edges or arrays: the scalar
        stackable = False  # port takes them, and raises what it raises
    if not stackable:
        for i in range(len(series)):
            scalar(i)
        return out, has
    if min(lengths) == max(lengths):  # the usual case: every series as long
        matrices = [(np.arange(len(series)), flat_t.reshape(len(series), lengths[0]),
                     flat_v.reshape(len(series), lengths[0]))]
    else:
        sizes = np.asarray(lengths)
        offsets = np.cumsum(sizes) - sizes
        matrices = []
        for length in np.unique(sizes).tolist():
            rows = np.flatnonzero(sizes == length)
            at = offsets[rows][:, None] + np.arange(length)
            matrices.append((rows, flat_t[at], flat_v[at]))
    for rows, stamps, values in matrices:
        if stamps.shape[1] < 2:  # under two samples in all, hence in the window: none
            continue
        # NaN fails the range test too; the milliseconds before the floor (of _window's
        # t_ms), sorted, select as its binary searches do (floor(x) < k iff x < k).
        limit = _STACKABLE_MS / 1000
        if not (stamps.min() >= -limit and stamps.max() <= limit):
            for i in rows.tolist():
                scalar(i)
            continue
        ms = stamps * 1000.0 + 0.5
        if not (ms[:, 1:] >= ms[:, :-1]).all():  # unsorted: searchsorted's own answer
            for i in rows.tolist():
                scalar(i)
            continue
        out[rows], has[rows] = _stacked_rates(ms, values, start_ms, end_ms, is_rate)
    return out, has


def _stacked_rates(
    ms: FloatArray, values: FloatArray, range_start: int, range_end: int, is_rate: bool,
) -> tuple[FloatArray, npt.NDArray[np.bool_]]:
    """:func:`_extrapolated_rate` of each row of ``values`` (a counter), its timestamps in
    milliseconds before the floor (``ms``, rows sorted)."""
    rows = np.arange(len(ms))
    # searchsorted(start, "left") and (end, "right") of a sorted row of floor(ms); the
    # store cuts series to the window already, so usually no sample lies outside it.
    if ms[:, 0].min() >= range_start:
        lo = np.zeros(len(ms), dtype=np.intp)
    else:
        lo = (ms < range_start).sum(axis=1)
    if ms[:, -1].max() < range_end + 1:
        hi = np.full(len(ms), ms.shape[1], dtype=np.intp)
    else:
        hi = (ms < range_end + 1).sum(axis=1)
    count = hi - lo
    enough = count >= 2  # "at least two points"
    last_i = np.maximum(hi - 1, 0)
    first_i = np.minimum(lo, last_i)
    first, last = values[rows, first_i], values[rows, last_i]
    with np.errstate(all="ignore"):  # inf - inf is NaN, as in Python: no warning
        result = last - first
    # Counter resets inside the window: pair (j, j + 1) counts when lo <= j < hi - 1.
    drops = values[:, 1:] < values[:, :-1]
    reset = np.flatnonzero(drops.any(axis=1))
    if reset.size:
        pair = np.arange(ms.shape[1] - 1)
        inside = (drops[reset] & (pair >= lo[reset, None])
                  & (pair < (hi[reset] - 1)[:, None]))
        # Go adds each value before a drop to the result, in order: accumulate is that
        # sequential sum, and -0.0 (x + -0.0 == x for every x) stands for "no drop here".
        addends = np.where(inside, values[reset, :-1], -0.0)
        with np.errstate(all="ignore"):  # inf + -inf is NaN, as in Python: no warning
            result[reset] = np.add.accumulate(np.column_stack([result[reset], addends]),
                                              axis=1)[:, -1]
    t_first = np.floor(ms[rows, first_i]).astype(np.int64)
    t_last = np.floor(ms[rows, last_i]).astype(np.int64)
    duration_to_start = (t_first - range_start) / 1000
    duration_to_end = (range_end - t_last) / 1000
    sampled_interval = (t_last - t_first) / 1000
    usable = enough & (sampled_interval != 0)
    with np.errstate(all="ignore"):  # rows left out below may divide by zero
        average_between = sampled_interval / np.maximum(count - 1, 1)
        # min(duration_to_start, duration_to_zero) as Python's min picks: the second
        # only when strictly smaller.
        duration_to_zero = sampled_interval * (first / result)
        clamp = (result > 0) & (first >= 0) & (duration_to_zero < duration_to_start)
        duration_to_start = np.where(clamp, duration_to_zero, duration_to_start)
        threshold = average_between * 1.1
        extrapolate_to = sampled_interval + np.where(duration_to_start < threshold,
                                                     duration_to_start, average_between / 2)
        extrapolate_to = extrapolate_to + np.where(duration_to_end < threshold,
                                                   duration_to_end, average_between / 2)
        factor = extrapolate_to / sampled_interval
        if is_rate:
            factor = factor / ((range_end - range_start) / 1000)
        answer = result * factor
    return np.where(usable, answer, math.nan), usable


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
