"""The vectorised window functions against the per-series/per-histogram code they replace.

``windows.increases``/``rates`` and ``quantile.quantiles_by_histogram``/
``quantiles_of_families`` (with ``derived.latency_quantiles_all``, ``tokens_per_second``
and ``increase_ratio`` on top) compute in a few array operations what the scalar ports
compute series by series. They must give the same floats, bit for bit, the same labels
and the same order, on regular data and on everything else: counter resets, missing
buckets, bounds spelled twice, NaN or unparsable bounds, ``+Inf``-only histograms, NaN
counts, float noise, short and empty windows. The references below are the
implementations as they were before the vectorisation (``bucket_increases``,
``window_quantiles``, ``by_histogram``, ``latency_quantiles`` and the derived signals),
built only on the scalar ports ``increase``/``rate``/``histogram_quantile``.
"""

from __future__ import annotations

import math
import struct
from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.model import Labels, Sample, SeriesData, make_labels
from gpuwarden.promql import quantile, windows
from gpuwarden.promql.buckets import le_of, without_le
from gpuwarden.promql.derived import (
    LATENCY_HISTOGRAMS,
    QUANTILES,
    increase_ratio,
    latency_quantiles,
    latency_quantiles_all,
    tokens_per_second,
)
from gpuwarden.promql.quantile import (
    histogram_quantile,
    quantiles_by_histogram,
    quantiles_of_families,
)
from gpuwarden.promql.windows import (
    _window,
    counter_rate,
    increase,
    increases,
    rate,
    rates,
    ratio_of_increases,
)

# ------------------------------------------------------------------ the references


def ref_bucket_increases(series: Sequence[SeriesData], start: float,
                         end: float) -> list[float | None]:
    """``windows.bucket_increases`` before the vectorisation over all series."""
    n = len(series[0].timestamps) if series else 0
    if len(series) < 2 or any(len(s.timestamps) != n for s in series):
        return [increase(s.timestamps, s.values, start, end) for s in series]
    stamps = np.vstack([s.timestamps for s in series])
    if not (stamps == stamps[0]).all():
        return [increase(s.timestamps, s.values, start, end) for s in series]
    t, _, range_start, range_end = _window(series[0].timestamps, series[0].values, start, end)
    if len(t) < 2:
        return [None] * len(series)
    lo = int(np.searchsorted(np.floor(series[0].timestamps * 1000.0 + 0.5), t[0], "left"))
    v = np.vstack([s.values for s in series])[:, lo : lo + len(t)]
    first, last = v[:, 0], v[:, -1]
    result = last - first
    drops = v[:, 1:] < v[:, :-1]
    for row in np.flatnonzero(drops.any(axis=1)):
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
    return [float(x) for x in result * (extrapolate_to / sampled_interval)]


def ref_by_histogram(bucket_series: Sequence[SeriesData]) -> dict[Labels, list[SeriesData]]:
    groups: dict[Labels, list[SeriesData]] = defaultdict(list)
    for series in bucket_series:
        groups[without_le(series.labels)].append(series)
    return groups


def ref_window_quantiles(qs: Sequence[float], bucket_series: Sequence[SeriesData],
                         start: float, end: float) -> list[float | None]:
    identity = None
    usable = []
    for s in bucket_series:
        rest = without_le(s.labels)
        if identity is None:
            identity = (s.signal, rest)
        elif identity != (s.signal, rest):
            raise ValueError("bucket series of different histograms")
        le = le_of(s.labels)
        if le is not None:
            usable.append((le, s))
    got = ref_bucket_increases([s for _, s in usable], start, end)
    buckets = [(le, inc) for (le, _), inc in zip(usable, got, strict=True) if inc is not None]
    if not buckets:
        return [None] * len(qs)
    return [histogram_quantile(q, buckets) for q in qs]


def ref_quantiles_by_histogram(qs: Sequence[float], bucket_series: Sequence[SeriesData],
                               start: float, end: float) -> list[tuple[Labels, list[float | None]]]:
    return [(labels, ref_window_quantiles(qs, group, start, end))
            for labels, group in ref_by_histogram(bucket_series).items()]


def ref_tokens_per_second(tokens: Sequence[SeriesData], start: float,
                          end: float) -> list[tuple[Labels, float]]:
    out = []
    for series in tokens:
        r = counter_rate(series, start, end)
        if r is not None:
            out.append((series.labels, r))
    return out


def ref_increase_ratio(num: Sequence[SeriesData], den: Sequence[SeriesData], start: float,
                       end: float) -> list[tuple[Labels, float]]:
    den_by_labels = {s.labels: s for s in den}
    out = []
    for series in num:
        match = den_by_labels.get(series.labels)
        if match is not None:
            ratio = ratio_of_increases(series, match, start, end)
            if ratio is not None:
                out.append((series.labels, ratio))
    return out


# ------------------------------------------------------------------ comparing


def bits(x: object) -> object:
    """A float by its bit pattern (so -0.0 != 0.0 and every NaN payload counts)."""
    return struct.pack("<d", x) if isinstance(x, float) else x


def deep_bits(x: object) -> object:
    if isinstance(x, (list, tuple)):
        return [deep_bits(y) for y in x]
    return bits(x)


def outcome(fn: Callable[..., object], *args: object) -> object:
    """The result by bits, or the exception type raised."""
    try:
        return deep_bits(fn(*args))
    except (ValueError, OverflowError) as exc:
        return type(exc)


# ------------------------------------------------------------------ data


LAYOUTS: list[tuple[str | None, ...]] = [
    ("0.1", "0.25", "0.5", "1", "+Inf"),
    ("0.1", "0.25", "0.5", "1", "+Inf"),  # the usual case, twice as likely
    ("1", "1.0", "5", "+Inf"),  # one bound spelled twice: coalesced
    ("+Inf",),  # +Inf only
    ("0.1", "0.5"),  # no +Inf
    ("NaN", "1", "+Inf"),
    ("bogus", "1", "+Inf"),  # unparsable: ignored
    (None, "1", "+Inf"),  # no le label at all
    ("-1", "0", "2", "+Inf"),  # bounds at and below 0
    ("0", "0.5", "+Inf"),
    ("+Inf", "0.5", "0.1"),  # series not in bound order
]
STEPS = [0, 1, 1, 2, 5, 40, -7, -1000]  # negative: a counter reset


@st.composite
def histogram_family(draw: st.DrawFn) -> list[SeriesData]:
    """The ``_bucket`` series of a few servers' histograms of one family, shuffled."""
    out = []
    for server in range(draw(st.integers(1, 4))):
        layout = draw(st.sampled_from(LAYOUTS))
        n = draw(st.integers(0, 9))
        t0 = draw(st.sampled_from([0.0, 0.25, 2.0004, 7.5]))
        step = draw(st.sampled_from([1.0, 2.5, 0.0004, 0.001]))
        ts = t0 + step * np.arange(n, dtype=np.float64)
        base = draw(st.sampled_from([0.0, 3.0, 1e6]))
        cumulative = draw(st.booleans())  # counts rise with the bound (else random)
        noise = draw(st.sampled_from([0.0, 0.0, 1e-7, 1e-14, 3e-13]))
        below = np.full(n, base)
        for le in layout:
            steps = np.array(draw(st.lists(st.sampled_from(STEPS), min_size=n, max_size=n)),
                             dtype=np.float64)
            values = base + np.cumsum(steps)
            if cumulative:  # noise: each bound's counts scaled a little more
                values = np.maximum(values, below) * (1 + noise)
                below = values
            if n and draw(st.integers(0, 9)) == 0:
                values[draw(st.integers(0, n - 1))] = math.nan
            stamps = ts
            if n > 2 and draw(st.integers(0, 9)) == 0:  # one bucket missed a scrape
                cut = draw(st.integers(0, n - 1))
                stamps, values = np.delete(ts, cut), np.delete(values, cut)
            labels = {"model": "m", "server": f"s{server}"}
            if le is not None:
                labels["le"] = le
            out.append(SeriesData("ttft_seconds_bucket", make_labels(labels), stamps, values))
    return draw(st.permutations(out))


# -0.85: 1.1 spacings of 1 s before a series starting at 0.25, the extrapolation threshold
windows_st = st.tuples(st.sampled_from([-1.0, -0.85, 0.0, 0.0005, 0.25, 1.9996, 3.0, 7.5]),
                       st.sampled_from([0.0, 0.0005, 1.0, 4.0, 60.0]))
QS = st.lists(st.sampled_from([0.0, 0.5, 0.95, 0.99, 1.0, -0.5, 1.5, math.nan]), max_size=4)


# ------------------------------------------------------------------ properties


@settings(max_examples=400, deadline=None)
@given(histogram_family(), windows_st, QS)
def test_quantiles_by_histogram_equal_per_histogram(family: list[SeriesData],
                                                    window: tuple[float, float],
                                                    qs: list[float]) -> None:
    start, length = window
    end = start + length
    assert outcome(quantiles_by_histogram, qs, family, start, end) == outcome(
        ref_quantiles_by_histogram, qs, family, start, end)


@settings(max_examples=150, deadline=None)
@given(st.lists(histogram_family(), max_size=4), windows_st)
def test_quantiles_of_families_equal_per_family(families: list[list[SeriesData]],
                                                window: tuple[float, float]) -> None:
    start, length = window
    end = start + length
    assert outcome(quantiles_of_families, QUANTILES, families, start, end) == outcome(
        lambda: [ref_quantiles_by_histogram(QUANTILES, f, start, end) for f in families])


def test_a_family_of_two_signals_is_refused_per_histogram_as_before() -> None:
    ts = np.array([0.0, 60.0])
    a = SeriesData("a_bucket", make_labels(le="+Inf", server="x"), ts, np.array([0.0, 5.0]))
    b = SeriesData("b_bucket", make_labels(le="1", server="x"), ts, np.array([0.0, 5.0]))
    c = SeriesData("b_bucket", make_labels(le="1", server="y"), ts, np.array([0.0, 5.0]))
    with pytest.raises(ValueError, match="different histograms"):
        quantiles_by_histogram([0.5], [a, b], 0, 60)
    # two signals, but no histogram mixes them: answered, as window_quantiles answered
    assert deep_bits(quantiles_by_histogram([0.5], [a, c], 0, 60)) == deep_bits(
        ref_quantiles_by_histogram([0.5], [a, c], 0, 60))


#: counter_series feeds NaN timestamps on purpose (both paths must agree even there);
#: numpy warns when their milliseconds are cast to int64, which is expected here and
#: not worth an ``np.errstate`` on the daemon's hot path.
NAN_TIMESTAMPS_CAST = "ignore:invalid value encountered in cast:RuntimeWarning"


@st.composite
def counter_series(draw: st.DrawFn) -> SeriesData:
    n = draw(st.integers(0, 8))
    ts = draw(st.sampled_from([0.0, 0.2504, 5.0])) + draw(
        st.sampled_from([1.0, 0.0004, 3.3])) * np.arange(n, dtype=np.float64)
    if n > 1 and draw(st.integers(0, 14)) == 0:
        ts = ts[::-1].copy()  # unsorted: searchsorted's answer, whatever it is
    if n and draw(st.integers(0, 14)) == 0:
        ts[draw(st.integers(0, n - 1))] = math.nan
    values = np.cumsum(np.array(draw(st.lists(st.sampled_from(STEPS), min_size=n,
                                              max_size=n)), dtype=np.float64))
    values += draw(st.sampled_from([0.0, -50.0, 1e9]))
    if n and draw(st.integers(0, 9)) == 0:
        values[draw(st.integers(0, n - 1))] = draw(st.sampled_from([math.nan, math.inf]))
    if draw(st.integers(0, 19)) == 0 and np.isfinite(values).all():
        values = values.astype(np.int64)  # _window converts; so must the stacking
    return SeriesData("c_total", make_labels(server=str(draw(st.integers(0, 3)))), ts, values)


@pytest.mark.filterwarnings(NAN_TIMESTAMPS_CAST)
@settings(max_examples=400, deadline=None)
@given(st.lists(counter_series(), max_size=6), windows_st)
def test_increases_and_rates_equal_per_series(series: list[SeriesData],
                                              window: tuple[float, float]) -> None:
    start, length = window
    end = start + length
    assert outcome(increases, series, start, end) == outcome(
        lambda: [increase(s.timestamps, s.values, start, end) for s in series])
    assert outcome(rates, series, start, end) == outcome(
        lambda: [rate(s.timestamps, s.values, start, end) for s in series])


def test_a_reset_outside_the_window_keeps_a_negative_zero() -> None:
    """The reset sum of the stacked path adds -0.0 where a pair has no drop: +0.0 would
    turn the -0.0 that ``-0.0 - 0.0`` gives into +0.0."""
    ts = np.arange(5, dtype=np.float64)
    series = [SeriesData("c_total", make_labels(server=str(i)), ts,
                         np.array([5.0, 1.0, 0.0, 0.0, -0.0])) for i in range(2)]
    got = increases(series, 2.0, 4.0)
    assert deep_bits(got) == deep_bits([increase(ts, series[0].values, 2.0, 4.0)] * 2)
    assert got[0] is not None and got[0] == 0 and math.copysign(1, got[0]) == -1


@pytest.mark.filterwarnings(NAN_TIMESTAMPS_CAST)
@settings(max_examples=200, deadline=None)
@given(st.lists(counter_series(), max_size=5), st.lists(counter_series(), max_size=5),
       windows_st)
def test_rate_and_ratio_signals_equal_per_series(num: list[SeriesData], den: list[SeriesData],
                                                 window: tuple[float, float]) -> None:
    start, length = window
    end = start + length
    assert outcome(tokens_per_second, num, start, end) == outcome(
        ref_tokens_per_second, num, start, end)
    assert outcome(increase_ratio, num, den, start, end) == outcome(
        ref_increase_ratio, num, den, start, end)


# ------------------------------------------------------------------ on daemon-like data


def scraped_family(servers: int, resets: bool = False) -> list[SeriesData]:
    """Buckets as the store hands them out: per server one scrape a second (each server
    its own phase), cumulative counts, the same label tuples on every read."""
    rng = np.random.default_rng(servers)
    bounds = ["0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5", "+Inf"]
    out = []
    for server in range(servers):
        ts = 1_700_000_000.0 + server * 0.0137 + np.arange(61, dtype=np.float64)
        per_bucket = rng.integers(0, 4, size=(61, len(bounds))).cumsum(axis=1)
        counts = per_bucket.cumsum(axis=0).astype(np.float64)
        if resets and server % 2:
            counts[30:] -= counts[30]  # the server restarted: every bucket back to 0
        for le, column in zip(bounds, counts.T, strict=True):
            out.append(SeriesData("ttft_seconds_bucket",
                                  make_labels(le=le, model="m", server=f"vllm-{server}"),
                                  ts, column.copy()))
    return out


@pytest.mark.parametrize("resets", [False, True])
def test_daemon_like_family_takes_the_stacked_path(monkeypatch: pytest.MonkeyPatch,
                                                   resets: bool) -> None:
    """Regular data must not fall back to the scalar ports (which would be correct, just
    as slow as before): with them disabled, the answer is still the reference's."""
    family = scraped_family(16, resets)
    end = family[0].timestamps[-1] + 0.4
    expected = deep_bits(ref_quantiles_by_histogram(QUANTILES, family, end - 60, end))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("scalar path taken")

    monkeypatch.setattr(windows, "_extrapolated_rate", refuse)
    monkeypatch.setattr(quantile, "histogram_quantile", refuse)
    for _ in range(2):  # a new plan, then the remembered one
        assert deep_bits(quantiles_by_histogram(QUANTILES, family, end - 60, end)) == expected


class Source:
    def __init__(self, by_signal: dict[str, list[SeriesData]]) -> None:
        self.by_signal = by_signal

    def query(self, signal: str, matchers: None = None, start: float = -math.inf,
              end: float = math.inf) -> list[SeriesData]:
        return self.by_signal.get(signal, [])


def test_latency_quantiles_all_equals_one_histogram_family_at_a_time() -> None:
    family = scraped_family(4, resets=True)
    source = Source({f"{hist}_bucket": [SeriesData(f"{hist}_bucket", s.labels, s.timestamps,
                                                   s.values * (i + 1)) for s in family]
                     for i, hist in enumerate(LATENCY_HISTOGRAMS[:4])})
    now = family[0].timestamps[-1] + 0.3

    def before(hist: str) -> list[Sample]:
        start = now - 60
        out = []
        for labels, buckets in ref_by_histogram(source.query(f"{hist}_bucket")).items():
            for q, v in zip(QUANTILES, ref_window_quantiles(QUANTILES, buckets, start, now),
                            strict=True):
                if v is not None and not math.isnan(v):
                    out.append(Sample(hist, (*labels, ("quantile", str(q))), v, now))
        return out

    expected = [s for hist in LATENCY_HISTOGRAMS for s in before(hist)]
    assert len(expected) == 4 * 4 * 3
    assert deep_bits(latency_quantiles_all(source, now)) == deep_bits(expected)
    assert deep_bits([s for hist in LATENCY_HISTOGRAMS
                      for s in latency_quantiles(source, hist, now)]) == deep_bits(expected)
