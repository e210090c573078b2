"""Hand-worked and property tests for gpuwarden.promql.quantile (histogram_quantile).

Every expected number is derived in a comment from Prometheus' algorithm (2.49 and
later: counts within a relative 1e-12 of each other are one count); the cases where it
differs from 2.42 to 2.48 say so. The bucket sets with float noise are those of
Prometheus' own unit test of forced monotonicity (``promql/quantile_test.go``), with its
expected values. The end-to-end comparison with a live Prometheus (Debian's 2.42, on
data without such noise) is in test_windows_prometheus.py; the same binary's answers on
these sets, noisy ones included, in test_quantile_prometheus.py.
"""

from __future__ import annotations

import math
import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.model import SeriesData, make_labels
from gpuwarden.promql.quantile import almost_equal, histogram_quantile, window_quantile


def arr(*xs: float) -> np.ndarray:
    return np.array(xs, dtype=np.float64)



# --------------------------------------------------------------------------- histogram_quantile

TTFT = [(0.1, 90.0), (0.25, 97.0), (math.inf, 100.0)]


def test_interpolates_linearly_inside_the_bucket() -> None:
    # rank = 0.95 * 100 = 95 -> first bucket with count >= 95 is le=0.25 (97).
    # 0.1 + (0.25 - 0.1) * (95 - 90) / (97 - 90) = 0.1 + 0.15 * 5/7
    assert histogram_quantile(0.95, TTFT) == pytest.approx(0.1 + 0.15 * 5 / 7, rel=1e-15)


def test_first_bucket_has_natural_lower_bound_zero() -> None:
    # rank 45 lies in le=0.1 (90): 0 + 0.1 * 45/90 = 0.05
    assert histogram_quantile(0.45, TTFT) == pytest.approx(0.05)


def test_quantile_in_inf_bucket_returns_last_finite_bound() -> None:
    # rank 99 > 97: only the +Inf bucket holds it -> upper bound of le=0.25
    assert histogram_quantile(0.99, TTFT) == 0.25
    assert histogram_quantile(1.0, TTFT) == 0.25


def test_q_one_with_empty_inf_bucket_is_top_finite_bound() -> None:
    # rank 2 reached at le=1 (count 2): 0 + 1 * 2/2 = 1
    assert histogram_quantile(1.0, [(1.0, 2.0), (math.inf, 2.0)]) == 1.0


def test_input_order_does_not_matter_and_equal_bounds_coalesce() -> None:
    # le=1 appears twice (e.g. "1" and "1.0"): counts add up to 8; total 9; rank 4.5
    # -> 0 + 1 * 4.5/8 = 0.5625 (Prometheus 2.42 answers 0.5625 too)
    assert histogram_quantile(0.5, [(math.inf, 9.0), (1.0, 4.0), (1.0, 4.0)]) == 0.5625


def test_non_monotonic_counts_are_flattened_to_their_envelope() -> None:
    # counts 1, 5, 3, 10 -> 1, 5, 5, 10; rank 4.5 in le=0.2: 0.1 + 0.1 * 3.5/4 = 0.1875
    b = [(0.1, 1.0), (0.2, 5.0), (0.3, 3.0), (math.inf, 10.0)]
    assert histogram_quantile(0.45, b) == pytest.approx(0.1875)
    # +Inf below its predecessor is raised too: 10, 10; rank 5 -> 0.1 * 5/10 = 0.05
    assert histogram_quantile(0.5, [(0.1, 10.0), (math.inf, 3.0)]) == pytest.approx(0.05)


def test_small_deltas_are_float_noise_not_a_bucket() -> None:
    # le=0.2 count 1+1e-13: relative to the sum 2, 5e-14 < 1e-12, so it is taken as 1.
    # rank 1+0.6e-13 then lies above every finite bucket -> the +Inf bucket -> 0.2.
    # (2.42 to 2.48 kept the tiny bucket: 0.1 + 0.1 * 0.6e-13/1e-13 ~ 0.16.)
    b = [(0.1, 1.0), (0.2, 1.0000000000001), (math.inf, 2.0)]
    assert histogram_quantile(0.50000000000003, b) == 0.2


def test_one_real_observation_is_not_noise() -> None:
    # 1e6 -> 1e6+1 is a relative 5e-7: a real observation in (1, 2], kept.
    # q=1: rank 1e6+1 reached at le=2: 1 + 1 * (1/1) = 2 (flattened it would be 1).
    b = [(1.0, 1e6), (2.0, 1e6 + 1), (math.inf, 1e6 + 1)]
    assert histogram_quantile(1.0, b) == 2.0


def test_noise_is_measured_against_the_count_kept() -> None:
    # 10, 5, 10+1e-11: 5 is a real decrease, raised to 10; the third count is compared
    # with the 10 kept (not with the 5 seen), is noise, and becomes 10 as well. So
    # nothing lies above le=2 and q=1 answers le=1's bound... the rank 10 is reached
    # at le=1: 0 + 1 * 10/10 = 1. Without the tolerance le=3 would hold 1e-11 of an
    # observation and q=1 would answer 3.
    b = [(1.0, 10.0), (2.0, 5.0), (3.0, 10.00000000001), (math.inf, 10.00000000001)]
    assert histogram_quantile(1.0, b) == 1.0


# Prometheus' unit test of histogram_quantile's monotonicity fixes: three bucket sets,
# each once as recorded and once with float noise (a count a relative ~1e-13 above or
# below its neighbours, as summing sharded or scaled buckets leaves). The noisy set
# must give exactly the clean set's quantiles (relative 1e-12, as upstream checks).
# The values in the comments are what Prometheus 2.42 to 2.48 answer for q=1 on the
# noisy sets instead: the far edge of a bucket that holds only noise.
INF = math.inf
_STEP_BOUNDS = (10.0, 15.0, 20.0, 30.0, INF)
_STEP_EXPECTED = {1.0: 15.0, 0.99: 14.85, 0.9: 13.5, 0.5: 7.5}
_REAL_BOUNDS = (1.0, 5.0, 10.0, 25.0, 50.0, 64.0, 80.0, 100.0, 250.0, 1000.0, INF)
_REAL_EXPECTED = {1.0: 64.0, 0.99: 49.64475715376406, 0.9: 46.39671690938454,
                  0.5: 31.96098248992002}
_SMALL_BOUNDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0,
                 50.0, 100.0, INF)
_SMALL_EXPECTED = {1.0: 0.1, 0.99: 0.03468750000281261, 0.9: 0.00463541666671875,
                   0.5: 0.0025752314815104174}
_SMALL_TOP = 9.888888889
UPSTREAM_CASES = {
    # 10 observations up to 10, 5 more in (10, 15], none above.
    "step, clean": (_STEP_BOUNDS, (10.0, 15.0, 15.0, 15.0, 15.0), _STEP_EXPECTED),
    # le=20 reads 15.00000000001 (2.42: q=1 -> 20).
    "step, noisy": (_STEP_BOUNDS, (10.0, 15.0, 15.00000000001, 15.0, 15.0), _STEP_EXPECTED),
    # A production histogram of ~46 million observations, the top one in (50, 64].
    "46M, clean": (_REAL_BOUNDS, (
        6454661.3014166197, 8339611.2001912938, 14118319.2444762159, 14130031.5272856522,
        46001270.3030008152, 46008473.8585563600, 46008473.8585563600, 46008473.8585563600,
        46008473.8585563600, 46008473.8585563600, 46008473.8585563600), _REAL_EXPECTED),
    # The same after a sharded sum: every count off in its last digits, le=80 and
    # le=1000 a hair above the +Inf count (2.42: q=1 -> 80).
    "46M, noisy": (_REAL_BOUNDS, (
        6454661.3014166225, 8339611.2001912957, 14118319.2444762159, 14130031.5272856504,
        46001270.3030008227, 46008473.8585563824, 46008473.8585563898, 46008473.8585563824,
        46008473.8585563824, 46008473.8585563898, 46008473.8585563824), _REAL_EXPECTED),
    # A rate of ~9.9 per second, all of it below 0.1 s.
    "rate, clean": (_SMALL_BOUNDS, (9.6, 9.688888889, 9.755555556, 9.844444444, _SMALL_TOP,
                                    *([_SMALL_TOP] * 10)), _SMALL_EXPECTED),
    # le=10 reads 1e-12 above the rest, le=50 1e-12 below (2.42: q=1 -> 10).
    "rate, noisy": (_SMALL_BOUNDS, (9.6, 9.688888889, 9.755555556, 9.844444444, _SMALL_TOP,
                                    *([_SMALL_TOP] * 5), 9.888888889001, _SMALL_TOP,
                                    9.888888888999, _SMALL_TOP, _SMALL_TOP), _SMALL_EXPECTED),
}


@pytest.mark.parametrize("name", sorted(UPSTREAM_CASES))
def test_prometheus_monotonicity_cases(name: str) -> None:
    bounds, counts, expected = UPSTREAM_CASES[name]
    assert len(bounds) == len(counts)
    for q, want in expected.items():
        got = histogram_quantile(q, list(zip(bounds, counts, strict=True)))
        assert got == pytest.approx(want, rel=1e-12), f"q={q}"


def test_almost_equal_as_prometheus_defines_it() -> None:
    # relative to |a| + |b|: 15 vs 15.00000000001 is 1e-11 / 30 = 3.3e-13 -> equal
    assert almost_equal(15.0, 15.00000000001, 1e-12)
    assert not almost_equal(15.0, 15.0001, 1e-12)
    # against zero only a difference below epsilon smallest normals counts
    assert almost_equal(0.0, 1e-320, 1e-12)
    assert not almost_equal(0.0, 1e-300, 1e-12)
    assert almost_equal(math.nan, math.nan, 1e-12)
    assert not almost_equal(math.nan, 1.0, 1e-12)
    stale = struct.unpack("<d", struct.pack("<Q", 0x7FF0000000000002))[0]
    assert almost_equal(stale, stale, 1e-12)
    assert not almost_equal(stale, math.nan, 1e-12)


def test_non_positive_first_bound() -> None:
    b = [(-1.0, 1.0), (0.2, 3.0), (math.inf, 4.0)]
    # rank 0.4 in the first bucket whose bound <= 0 -> that bound
    assert histogram_quantile(0.1, b) == -1.0
    # rank 2 in le=0.2: -1 + 1.2 * (2-1)/(3-1) = -0.4
    assert histogram_quantile(0.5, b) == pytest.approx(-0.4)


@pytest.mark.parametrize(
    ("q", "buckets", "expected"),
    [
        (-0.1, TTFT, -math.inf),
        (1.1, TTFT, math.inf),
        (math.nan, TTFT, math.nan),
        (0.5, [(0.1, 1.0), (0.2, 2.0)], math.nan),  # no +Inf bucket
        (0.5, [(math.inf, 4.0)], math.nan),  # one bucket only
        (0.5, [(0.1, 0.0), (math.inf, 0.0)], math.nan),  # no observations
        (0.5, [(-1.0, 0.0), (math.inf, 0.0)], math.nan),  # idem, not -1
        (0.0, [(0.1, 0.0), (math.inf, 10.0)], math.nan),  # 0 * (0/0) as in Go
        (0.5, [], math.nan),
        (0.5, [(math.nan, 1.0), (math.inf, 2.0)], math.nan),
        # +Inf count NaN: no bucket satisfies count >= NaN -> "+Inf bucket" -> 1
        (0.5, [(1.0, 4.0), (math.inf, math.nan)], 1.0),
    ],
)
def test_edge_cases(q: float, buckets: list[tuple[float, float]], expected: float) -> None:
    got = histogram_quantile(q, buckets)
    assert (math.isnan(got) and math.isnan(expected)) or got == expected


finite_bounds = st.lists(
    st.floats(min_value=1e-4, max_value=1e4, allow_nan=False), min_size=1, max_size=12, unique=True
)


@st.composite
def histograms(draw: st.DrawFn) -> list[tuple[float, float]]:
    bounds = sorted(draw(finite_bounds))
    per_bucket = draw(
        st.lists(st.integers(0, 1000), min_size=len(bounds) + 1, max_size=len(bounds) + 1)
    )
    if sum(per_bucket) == 0:
        per_bucket[-1] = 1
    cumulative = np.cumsum(per_bucket).astype(float)
    return [*zip(bounds, cumulative[:-1], strict=True), (math.inf, float(cumulative[-1]))]


qs = st.floats(min_value=1e-6, max_value=1.0)


@settings(max_examples=300, deadline=None)
@given(histograms(), qs, qs)
def test_monotone_in_q(buckets: list[tuple[float, float]], q1: float, q2: float) -> None:
    lo, hi = sorted((q1, q2))
    assert histogram_quantile(lo, buckets) <= histogram_quantile(hi, buckets)


@settings(max_examples=300, deadline=None)
@given(histograms(), qs, st.randoms(use_true_random=False))
def test_bounded_by_buckets_and_order_free(
    buckets: list[tuple[float, float]], q: float, rnd: random.Random
) -> None:
    got = histogram_quantile(q, buckets)
    top_finite = max(le for le, _ in buckets if le != math.inf)
    assert 0.0 <= got <= top_finite
    # the answer lies in the bucket that holds the rank
    rank = q * buckets[-1][1]
    lower = 0.0
    for le, count in buckets:
        if count >= rank:
            assert lower <= got <= (le if le != math.inf else lower)
            break
        lower = le
    shuffled = list(buckets)
    rnd.shuffle(shuffled)
    assert histogram_quantile(q, shuffled) == got


# ------------------------------------------------------------------ over a window of buckets


def bucket(le: str, ts: tuple[float, ...], vs: tuple[float, ...], model: str = "m") -> SeriesData:
    return SeriesData("itl_seconds_bucket", make_labels(le=le, model=model), arr(*ts), arr(*vs))


def test_window_quantile_of_bucket_increases() -> None:
    # increases over [0, 60] with samples on both edges (factor 1; the zero point lies
    # before 0 so no clamp): 90, 97, 100 -> the TTFT example, 0.1 + 0.15 * 5/7
    series = [
        bucket("0.1", (0, 60), (10, 100)),
        bucket("0.25", (0, 60), (12, 109)),
        bucket("+Inf", (0, 60), (15, 115)),
        bucket("bogus", (0, 60), (0, 1000)),  # unparsable le: ignored, as PromQL does
    ]
    got = window_quantile(0.95, series, 0, 60)
    assert got == pytest.approx(0.1 + 0.15 * 5 / 7)


def test_window_quantile_no_traffic_is_nan_and_no_data_is_none() -> None:
    idle = [bucket("0.1", (0, 60), (7, 7)), bucket("+Inf", (0, 60), (9, 9))]
    got = window_quantile(0.95, idle, 0, 60)
    assert got is not None and math.isnan(got)
    assert not got > 0.13  # a "p95 > SLO" detector does not fire on an idle server
    sparse = [bucket("0.1", (30,), (7,)), bucket("+Inf", (30,), (9,))]
    assert window_quantile(0.95, sparse, 0, 60) is None
    assert window_quantile(0.95, [], 0, 60) is None


def test_window_quantile_refuses_two_histograms() -> None:
    mixed = [bucket("0.1", (0, 60), (1, 2), model="a"), bucket("+Inf", (0, 60), (1, 2), "b")]
    with pytest.raises(ValueError, match="different histograms"):
        window_quantile(0.5, mixed, 0, 60)
