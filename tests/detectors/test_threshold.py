"""Threshold detector: ops, hysteresis band, aggregations, staleness, derived signals."""

from __future__ import annotations

import math

import pytest

from gpuwarden.detectors import Status, build_detector
from gpuwarden.detectors.latency import QuantileDetector
from gpuwarden.detectors.threshold import ThresholdDetector
from gpuwarden.model import SeriesData, make_labels

from .helpers import NOW, SRV, SRV2, const, detect, gpu, histogram, rule, sampled, series

KV = "kv_cache_usage_ratio"


@pytest.mark.parametrize(
    ("op", "value", "fires"),
    [(">", 0.91, True), (">", 0.90, False), (">=", 0.90, True), (">=", 0.89, False),
     ("<", 0.89, True), ("<", 0.90, False), ("<=", 0.90, True), ("<=", 0.91, False),
     ("==", 0.90, True), ("==", 0.91, False), ("!=", 0.91, True), ("!=", 0.90, False)],
)
def test_ops(op: str, value: float, fires: bool) -> None:
    found = detect(rule(op=op, threshold=0.90), const(KV, SRV, value))
    assert bool(found) is fires
    if fires:
        assert found[0].labels == SRV
        assert found[0].value == value
        assert found[0].status is Status.BREACH


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.95, Status.BREACH), (0.90, Status.HOLD), (0.87, Status.HOLD), (0.85, None),
     (0.80, None)],
)
def test_hysteresis_band_greater(value: float, expected: Status | None) -> None:
    found = detect(rule(op=">", threshold=0.90, clear=0.85), const(KV, SRV, value))
    assert [f.status for f in found] == ([] if expected is None else [expected])


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.90, Status.BREACH), (0.92, Status.HOLD), (0.939, Status.HOLD), (0.94, None),
     (0.99, None)],
)
def test_hysteresis_band_less(value: float, expected: Status | None) -> None:
    r = rule(signal="quality_similarity", op="<", threshold=0.92, clear=0.94)
    found = detect(r, const("quality_similarity", SRV, value))
    assert [f.status for f in found] == ([] if expected is None else [expected])


def test_aggregations() -> None:
    # the last 60 s: values 0.0 .. 1.0 rising linearly; the latest is 1.0
    s = sampled(KV, SRV, lambda t: 1.0 + t / 60.0, start=NOW - 60)
    assert detect(rule(threshold=0.99, aggregation="last"), s)[0].value == pytest.approx(1.0)
    assert detect(rule(threshold=0.49, aggregation="mean"), s)[0].value == pytest.approx(0.5)
    assert not detect(rule(threshold=0.51, aggregation="mean"), s)
    assert detect(rule(threshold=0.99, aggregation="max", window=10.0), s)
    low = detect(rule(op="<", threshold=0.9, aggregation="min", window=10.0), s)
    assert low[0].value == pytest.approx(50 / 60)
    # min over 10 s does not see the early low values; min over 60 s does
    assert not detect(rule(op="<", threshold=0.8, aggregation="min", window=10.0), s)
    assert detect(rule(op="<", threshold=0.8, aggregation="min", window=60.0), s)


def test_nan_samples_are_skipped() -> None:
    s = series(KV, SRV, [NOW - 2, NOW - 1, NOW], [0.95, 0.96, math.nan])
    assert detect(rule(threshold=0.9), s)[0].value == 0.96
    assert detect(rule(threshold=0.9, aggregation="mean", window=5.0), s)[0].value == 0.955


def test_stale_series_is_absent() -> None:
    dead = const(KV, SRV, 0.99, end=NOW - 10)  # a dead server's last KV value
    live = const(KV, SRV2, 0.99)
    found = detect(rule(threshold=0.9), dead, live)
    assert [f.labels for f in found] == [SRV2]
    # 4 s old is within max(3 * 1 s, 5 s); with a 10 s interval 25 s old is still live
    assert detect(rule(threshold=0.9), const(KV, SRV, 0.99, end=NOW - 4))
    assert detect(rule(threshold=0.9), const(KV, SRV, 0.99, end=NOW - 25, step=10),
                  interval=10.0)
    assert not detect(rule(threshold=0.9), const(KV, SRV, 0.99, end=NOW - 31, step=10),
                      interval=10.0)


def test_slow_series_live_for_three_of_its_spacings() -> None:
    canary = series("quality_similarity", SRV, [NOW - 150, NOW - 90], [0.97, 0.90])
    r = rule(signal="quality_similarity", op="<", threshold=0.92, window=300.0)
    assert detect(r, canary)[0].value == 0.90
    late = series("quality_similarity", SRV, [NOW - 250, NOW - 190], [0.97, 0.90])
    assert not detect(r, late)


def test_each_series_its_own_finding() -> None:
    found = detect(rule(signal="gpu_temperature_celsius", threshold=80.0),
                   *(const("gpu_temperature_celsius", gpu(i), 70.0 + 5 * i) for i in range(4)))
    assert [f.labels for f in found] == [gpu(3)]  # 85 > 80; 80 is not > 80


def test_derived_tokens_per_second() -> None:
    tokens = sampled("generation_tokens_total", SRV, lambda t: 1000.0 + 50.0 * t,
                     start=NOW - 120)
    r = rule(signal="generation_tokens_per_second", op="<", threshold=60.0)
    det = build_detector(r)
    assert set(det.inputs) == {"generation_tokens_total"}
    found = detect(r, tokens)
    assert found[0].value == pytest.approx(50.0)
    assert not detect(rule(signal="generation_tokens_per_second", op="<", threshold=40.0),
                      tokens)


def test_derived_prefix_hit_ratio() -> None:
    q = sampled("prefix_cache_queries_total", SRV, lambda t: 1e5 + 100 * t, start=NOW - 120)
    h = sampled("prefix_cache_hits_total", SRV, lambda t: 1e4 + 30 * t, start=NOW - 120)
    found = detect(rule(signal="prefix_cache_hit_ratio", op="<", threshold=0.5), q, h)
    assert found[0].value == pytest.approx(0.3)


def test_derived_spread_signal() -> None:
    gpus = [const("gpu_utilization_ratio", gpu(i), 0.9 - 0.1 * (i == 2)) for i in range(4)]
    found = detect(rule(signal="gpu_utilization_spread_ratio", threshold=0.05), *gpus)
    assert found[0].labels == make_labels(node="n1")
    assert found[0].value == pytest.approx(0.1)


def test_derived_spec_decode_acceptance_and_offload_hit_ratios() -> None:
    draft = sampled("spec_decode_draft_tokens_total", SRV, lambda t: 5e5 + 300 * t,
                    start=NOW - 120)
    accepted = sampled("spec_decode_accepted_tokens_total", SRV, lambda t: 3e5 + 105 * t,
                       start=NOW - 120)
    r = rule(signal="spec_decode_acceptance_ratio", op="<", threshold=0.5)
    assert set(build_detector(r).inputs) == {"spec_decode_accepted_tokens_total",
                                             "spec_decode_draft_tokens_total"}
    (found,) = detect(r, draft, accepted)
    assert (found.labels, found.value) == (SRV, pytest.approx(0.35))
    idle = sampled("spec_decode_draft_tokens_total", SRV, lambda t: 5e5, start=NOW - 120)
    assert detect(r, idle, accepted) == []  # nothing drafted: no ratio, no alert
    stopped = sampled("spec_decode_accepted_tokens_total", SRV, lambda t: 3e5 + 105 * t,
                      start=NOW - 120, end=NOW - 30)
    assert detect(r, draft, stopped) == []  # a server that stopped reporting
    q = sampled("kv_offload_queries_total", SRV, lambda t: 1e6 + 400 * t, start=NOW - 120)
    h = sampled("kv_offload_hits_total", SRV, lambda t: 1e5 + 100 * t, start=NOW - 120)
    (offload,) = detect(rule(signal="kv_offload_hit_ratio", op="<", threshold=0.3), q, h)
    assert offload.value == pytest.approx(0.25)


def test_derived_signals_agree_with_the_exposition() -> None:
    """A rule on a derived signal compares the number /metrics shows for the same data."""
    from gpuwarden.promql.derived import derive
    from gpuwarden.signals import DERIVED_INPUTS

    data = [
        sampled("generation_tokens_total", SRV, lambda t: 1000.0 + 47.0 * t, start=NOW - 120),
        sampled("prefix_cache_queries_total", SRV, lambda t: 1e5 + 90 * t, start=NOW - 120),
        sampled("prefix_cache_hits_total", SRV, lambda t: 1e4 + 31 * t, start=NOW - 120),
        sampled("kv_offload_queries_total", SRV, lambda t: 1e5 + 70 * t, start=NOW - 120),
        sampled("kv_offload_hits_total", SRV, lambda t: 1e4 + 13 * t, start=NOW - 120),
        sampled("spec_decode_draft_tokens_total", SRV, lambda t: 1e5 + 300 * t,
                start=NOW - 120),
        sampled("spec_decode_accepted_tokens_total", SRV, lambda t: 1e4 + 211 * t,
                start=NOW - 120),
        *(const("gpu_utilization_ratio", gpu(i), 0.9 - 0.07 * i) for i in range(3)),
        const("kv_cache_capacity_tokens", SRV, 335_000.0),
        *histogram("prompt_length_tokens", SRV, (1000.0, 5000.0),
                   lambda t: [7.0 * (t + 3600), 3.0 * (t + 3600), 0.0], start=NOW - 3600),
        *histogram("generation_length_tokens", SRV, (1000.0, 5000.0),
                   lambda t: [10.0 * (t + 3600), 0.0, 0.0], start=NOW - 3600),
        # the efficiency and cost signals: vllm-0 on one priced H100
        sampled("estimated_flops_total", SRV, lambda t: 1e15 + 2e14 * t, start=NOW - 120),
        sampled("estimated_memory_read_bytes_total", SRV, lambda t: 1e15 + 2e12 * t,
                start=NOW - 120),
        sampled("estimated_memory_write_bytes_total", SRV, lambda t: 1e14 + 5e11 * t,
                start=NOW - 120),
        const("server_gpu_info", make_labels(node="n1", server="vllm-0", gpu="0"), 1.0),
        *(const(name, make_labels(node="n1", gpu="0", uuid="GPU-0",
                                  model="NVIDIA H100 80GB HBM3"), value)
          for name, value in (("gpu_memory_bandwidth_peak_bytes_per_second", 3.35e12),
                              ("gpu_memory_total_bytes", 80e9),
                              ("gpu_cost_per_hour_usd", 3.6))),
    ]

    class Source:
        def query(self, signal: str, matchers: None = None, start: float = 0.0,
                  end: float = 0.0) -> list[SeriesData]:
            return [s for s in data if s.signal == signal]

    exported = {(s.signal, s.labels): s.value for s in derive(Source(), NOW)}
    for signal in DERIVED_INPUTS:
        (found,) = detect(rule(signal=signal, op=">", threshold=0.0), *data)
        assert exported[(signal, found.labels)] == found.value, signal


def test_a_rule_on_the_prefill_p95() -> None:
    """The latency decomposition's quantiles are rule signals like ``ttft_p95_seconds``."""
    edges = (0.3, 0.5, 0.8, 1.0, 1.5)  # vLLM's request-latency buckets, the first five

    def prefills(slow: float) -> list[SeriesData]:  # 10 prefills/s, `slow` of them in (1, 1.5]
        return histogram("prefill_time_seconds", SRV, edges,
                         lambda t: [(10 - slow) * (t + 120), 0, 0, 0, slow * (t + 120), 0],
                         start=NOW - 120)

    r = rule(signal="prefill_time_p95_seconds", op=">", threshold=1.0, window=60.0)
    det = build_detector(r)
    assert isinstance(det, QuantileDetector)
    assert det.inputs == {"prefill_time_seconds_bucket": 60.0}
    (found,) = detect(r, *prefills(2.0))  # rank 9.5 of 10: 1.5 into the 2 in (1, 1.5]
    assert found.value == pytest.approx(1.0 + 0.5 * 1.5 / 2.0)
    assert "(1, 1.5] s bucket" in dict(found.annotations)["interpolation"]
    assert detect(r, *prefills(0.4)) == []  # p95 under 0.3 s


def test_quantile_signal_dispatches_to_quantile_detector() -> None:
    assert isinstance(build_detector(rule(signal="itl_p95_seconds", threshold=0.1)),
                      QuantileDetector)
    assert isinstance(build_detector(rule(threshold=0.1)), ThresholdDetector)


def test_inputs_cover_staleness_lookback() -> None:
    det = build_detector(rule(threshold=0.9, window=10.0))
    assert det.inputs == {KV: 60.0}
    assert build_detector(rule(threshold=0.9, window=600.0)).inputs == {KV: 600.0}


def test_build_errors_name_the_rule() -> None:
    with pytest.raises(ValueError, match="rule Bad: unknown detector 'nope'"):
        build_detector(rule("Bad", detector="nope", threshold=1.0))
    with pytest.raises(ValueError, match=r"rule NoT: .*needs a threshold"):
        build_detector(rule("NoT"))
