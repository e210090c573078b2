"""Hand-worked and property tests for gpuwarden.promql.quantile (histogram_quantile).

Every expected number is derived in a comment from the Prometheus 2.42 algorithm; the
cases marked "2.42" distinguish it from later releases and were also checked against
the installed binary (``promtool test rules`` / instant queries) while writing them.
The end-to-end comparison with a live Prometheus is in test_windows_prometheus.py.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.model import SeriesData, make_labels
from gpuwarden.promql.quantile import histogram_quantile, window_quantile


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


def test_2_42_has_no_small_delta_tolerance() -> None:
    # 2.42: le=0.2 count 1+1e-13 is a real (tiny) bucket; rank 1+0.6e-13 lands in it:
    # 0.1 + 0.1 * 0.6e-13/1e-13 ~ 0.16. Later releases flatten deltas < 1e-12 and answer 0.2.
    b = [(0.1, 1.0), (0.2, 1.0000000000001), (math.inf, 2.0)]
    assert histogram_quantile(0.50000000000003, b) == pytest.approx(0.16, rel=0.05)


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
