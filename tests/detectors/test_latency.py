"""Quantile detector: hand-computed histogram_quantile, the interpolation note, NaN, resets."""

from __future__ import annotations

import pytest

from gpuwarden.detectors import Status
from gpuwarden.detectors.latency import bucket_note

from .helpers import NOW, SRV, SRV2, detect, histogram, rule

EDGES = (0.05, 0.1, 0.15, 0.2)
# Requests per second into (0, .05], (.05, .1], (.1, .15], (.15, .2], (.2, +Inf).
RATES = (2.0, 5.0, 2.7, 0.1, 0.2)
# Over 60 s: cumulative 120, 420, 582, 588, 600; rank 0.95 * 600 = 570 falls in
# (0.1, 0.15]: 0.1 + 0.05 * (570 - 420) / (582 - 420).
P95 = 0.1 + 0.05 * 150 / 162


def itl(labels=SRV, rates=RATES, *, end=NOW, start=NOW - 120.0, reset_at=None):
    def counts(t: float) -> list[float]:
        since = t + (NOW - start) if reset_at is None or t < reset_at else t - reset_at
        return [r * since for r in rates]

    return histogram("itl_seconds", labels, EDGES, counts, start=start, end=end)


P95_RULE = rule("TokenLatencyP95High", signal="itl_p95_seconds", threshold=0.130, window=60.0)


def test_value_is_promql_histogram_quantile() -> None:
    (found,) = detect(P95_RULE, *itl())
    assert found.value == pytest.approx(P95, rel=1e-12)
    assert found.labels == SRV  # every label but le
    assert found.status is Status.BREACH


def test_annotation_names_the_bucket_edges() -> None:
    (found,) = detect(P95_RULE, *itl())
    note = dict(found.annotations)["interpolation"]
    assert "interpolated inside the (0.1, 0.15] s bucket" in note
    assert "no edge at 0.13 s" in note
    assert "0.1463" in dict(found.annotations)["description"]


def test_other_quantiles_and_ops() -> None:
    # p50: rank 300 in (0.05, 0.1]: 0.05 + 0.05 * 180 / 300
    p50 = rule(signal="itl_p50_seconds", op="<", threshold=0.5)
    assert detect(p50, *itl())[0].value == pytest.approx(0.05 + 0.05 * 180 / 300)
    assert not detect(rule(signal="itl_p95_seconds", threshold=0.15), *itl())


def test_hysteresis_hold() -> None:
    r = rule(signal="itl_p95_seconds", threshold=0.15, clear=0.12)
    (found,) = detect(r, *itl())
    assert found.status is Status.HOLD


def test_no_requests_in_window_is_no_finding() -> None:
    # Traffic stopped 70 s ago: the buckets did not move in the last 60 s -> NaN.
    def counts(t: float) -> list[float]:
        return [r * min(t + 120, 50.0) for r in RATES]

    assert not detect(P95_RULE, *histogram("itl_seconds", SRV, EDGES, counts,
                                           start=NOW - 120))


def test_quantile_in_inf_bucket_reports_largest_finite_edge() -> None:
    slow = (0.1, 0.1, 0.1, 0.1, 9.6)
    (found,) = detect(P95_RULE, *itl(rates=slow))
    assert found.value == 0.2
    assert "+Inf bucket" in dict(found.annotations)["interpolation"]


def test_counter_reset_is_handled() -> None:
    # the server restarted 30 s ago: counters restarted from zero
    (found,) = detect(P95_RULE, *itl(reset_at=-30.0))
    assert found.value == pytest.approx(P95, rel=1e-9)


def test_stale_histogram_is_absent() -> None:
    assert not detect(P95_RULE, *itl(end=NOW - 30.0))


def test_one_finding_per_server() -> None:
    fast = (5.0, 5.0, 0.0, 0.0, 0.0)
    found = detect(P95_RULE, *itl(), *itl(SRV2, fast))
    assert [f.labels for f in found] == [SRV]


def test_bucket_note() -> None:
    edges = [0.01, 0.025, 0.05]
    assert bucket_note(0.005, edges, 0.02).startswith("interpolated inside the (0, 0.01] s")
    assert "threshold 0.025 s is a bucket edge" in bucket_note(0.02, edges, 0.025)
    assert "(0.01, 0.025]" in bucket_note(0.025, edges, None)
    assert "+Inf" in bucket_note(0.05, edges, 0.04)


def test_inputs() -> None:
    from gpuwarden.detectors import build_detector

    inputs = build_detector(P95_RULE).inputs
    assert inputs["itl_seconds_bucket"] == 60.0
    # and the request phases' sums and counts, for the breakdown (test_breakdown.py)
    assert set(inputs) - {"itl_seconds_bucket"} == {
        f"{p}_time_seconds_{s}" for p in ("queue", "prefill", "decode") for s in ("sum", "count")}
