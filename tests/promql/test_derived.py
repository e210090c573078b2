"""Derived window signals: tokens/s, the hit and acceptance ratios, GPU utilisation spread,
and ``derive`` exporting them with the latency quantiles."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from gpuwarden.model import Labels, SeriesData, make_labels
from gpuwarden.promql.derived import (
    DERIVATIONS,
    LATENCY_HISTOGRAMS,
    LONG_LOOKBACK,
    capacity_sequences,
    derive,
    increase_ratio,
    input_lookbacks,
    tokens_per_second,
    utilization_spread,
    utilization_spread_ratio,
)
from gpuwarden.signals import DERIVED_INPUTS, SIGNALS, Kind, resolve_rule_signal

NOW = 1_000_000.0
U = "gpu_utilization_ratio"
SRV = make_labels(node="n1", server="vllm-0", model="m")
SRV2 = make_labels(node="n1", server="vllm-1", model="m")


def sampled(signal: str, labels: Labels, fn: Callable[[float], float], *, start: float,
            end: float = NOW, step: float = 1.0) -> SeriesData:
    """Samples fn(t - end) every ``step`` seconds over ``[start, end]``."""
    ts = np.arange(start, end + step / 2, step)
    return SeriesData(signal, labels, ts, np.array([fn(t - end) for t in ts]))


def node(means: list[float], name: str = "n1", *, end: float = NOW) -> list[SeriesData]:
    return [sampled(U, make_labels(node=name, gpu=str(i)), lambda _t, m=m: m,
                    start=end - 300, end=end) for i, m in enumerate(means)]


class Source:
    def __init__(self, data: Sequence[SeriesData]) -> None:
        self.data = data

    def query(self, signal: str, matchers: None = None, start: float = 0.0,
              end: float = 0.0) -> list[SeriesData]:
        return [s for s in self.data if s.signal == signal]


def test_tokens_per_second_is_the_counter_rate() -> None:
    tokens = sampled("generation_tokens_total", SRV, lambda t: 1000.0 + 50.0 * t,
                     start=NOW - 120)
    one_sample = sampled("generation_tokens_total", SRV2, lambda t: 7.0, start=NOW)
    ((labels, rate),) = tokens_per_second([tokens, one_sample], NOW - 60, NOW)
    assert labels == SRV and rate == pytest.approx(50.0)


def test_hit_ratio_matches_hits_and_queries_by_labels() -> None:
    q = sampled("prefix_cache_queries_total", SRV, lambda t: 1e5 + 100 * t, start=NOW - 120)
    h = sampled("prefix_cache_hits_total", SRV, lambda t: 1e4 + 30 * t, start=NOW - 120)
    unmatched = sampled("prefix_cache_hits_total", SRV2, lambda t: 30 * t, start=NOW - 120)
    ((labels, ratio),) = increase_ratio([h, unmatched], [q], NOW - 60, NOW)
    assert labels == SRV and ratio == pytest.approx(0.3)
    idle = sampled("prefix_cache_queries_total", SRV, lambda t: 5.0, start=NOW - 120)
    assert increase_ratio([h], [idle], NOW - 60, NOW) == []  # no queries: no ratio


def test_utilization_spread_function() -> None:
    data = node([0.9, 0.5, 0.8]) + node([0.4, 0.4], "b") + node([0.7], "c")
    out = utilization_spread(data, NOW - 60, NOW)
    assert [s.node for s in out] == ["b", "n1"]
    n1 = out[1]
    assert n1.spread == pytest.approx(0.4)
    assert n1.straggler == "1"
    assert n1.stdev == pytest.approx(float(np.std([0.9, 0.5, 0.8])))
    assert out[0].spread == 0.0
    stale = utilization_spread(node([0.9, 0.5], end=NOW - 60), NOW - 120, NOW, interval=1.0)
    assert stale == []


def test_spread_ratio_is_per_node() -> None:
    out = utilization_spread_ratio(node([0.9, 0.7]) + node([0.5, 0.5], "b"), NOW - 60, NOW,
                                   interval=1.0)
    assert [(labels, round(v, 6)) for labels, v in out] == [
        (make_labels(node="b"), 0.0), (make_labels(node="n1"), 0.2)]


def test_derive_exports_spread() -> None:
    stopped = sampled(U, make_labels(node="n1", gpu="3"), lambda _t: 0.1, start=NOW - 330,
                      end=NOW - 30)
    out = [s for s in derive(Source([*node([0.9, 0.7, 0.85]), stopped]), NOW)
           if s.signal == "gpu_utilization_spread_ratio"]
    assert [(s.labels, round(s.value, 6)) for s in out] == [(make_labels(node="n1"), 0.2)]


def test_derive_exports_rate_ratio_and_quantiles() -> None:
    edges = ("0.1", "0.25", "+Inf")
    per_second = (9.0, 0.7, 0.3)  # requests per second landing in each bucket
    buckets = [sampled("ttft_seconds_bucket", (*SRV, ("le", le)),
                       lambda t, k=k: 1000 + sum(per_second[:k + 1]) * (t + 120),
                       start=NOW - 120) for k, le in enumerate(edges)]
    data = [
        sampled("generation_tokens_total", SRV, lambda t: 1000.0 + 50.0 * t, start=NOW - 120),
        sampled("prefix_cache_queries_total", SRV, lambda t: 1e5 + 100 * t, start=NOW - 120),
        sampled("prefix_cache_hits_total", SRV, lambda t: 1e4 + 30 * t, start=NOW - 120),
        *buckets,
    ]
    got = {(s.signal, dict(s.labels).get("quantile")): s.value for s in derive(Source(data), NOW)}
    assert got[("generation_tokens_per_second", None)] == pytest.approx(50.0)
    assert got[("prefix_cache_hit_ratio", None)] == pytest.approx(0.3)
    # 10 requests/s, 9 under 0.1 s: p50 = 0.1 * 5/9; p95 = 0.1 + 0.15 * 0.5/0.7
    assert got[("ttft_seconds", "0.5")] == pytest.approx(0.1 * 5 / 9)
    assert got[("ttft_seconds", "0.95")] == pytest.approx(0.1 + 0.15 * 0.5 / 0.7)
    assert got[("ttft_seconds", "0.99")] == pytest.approx(0.25)  # in +Inf: the top edge


def test_every_derived_signal_of_the_catalogue_has_its_derivation() -> None:
    """derive() and the threshold detector look derivations up by the catalogue's names."""
    assert set(DERIVATIONS) == set(DERIVED_INPUTS)
    for signal, inputs in DERIVED_INPUTS.items():
        assert SIGNALS[signal].kind is Kind.GAUGE, signal
        for name in inputs:  # a stored signal, or a histogram's buckets
            base = name.removesuffix("_bucket")
            assert SIGNALS[base].kind is (Kind.HISTOGRAM if base != name else
                                          SIGNALS[name].kind), name


def spec_decode(draft_per_s: float, accepted_per_s: float, labels: Labels = SRV,
                ) -> list[SeriesData]:
    return [sampled("spec_decode_draft_tokens_total", labels,
                    lambda t: 5e5 + draft_per_s * t, start=NOW - 120),
            sampled("spec_decode_accepted_tokens_total", labels,
                    lambda t: 3e5 + accepted_per_s * t, start=NOW - 120)]


def test_derive_exports_offload_hit_and_spec_decode_acceptance_ratios() -> None:
    data = [
        # 3 speculative tokens per step, 65 % of them accepted
        *spec_decode(300.0, 195.0),
        # the offload tier (LMCache, a CPU/disk connector) finds 40 % of what it is asked
        sampled("kv_offload_queries_total", SRV, lambda t: 2e6 + 500.0 * t, start=NOW - 120),
        sampled("kv_offload_hits_total", SRV, lambda t: 8e5 + 200.0 * t, start=NOW - 120),
        # vllm-1: speculative decoding idle, the offload tier never asked: no ratios at all
        *spec_decode(0.0, 0.0, SRV2),
        sampled("kv_offload_queries_total", SRV2, lambda t: 7.0, start=NOW - 120),
        sampled("kv_offload_hits_total", SRV2, lambda t: 3.0, start=NOW - 120),
    ]
    got = [(s.signal, s.labels, round(s.value, 9)) for s in derive(Source(data), NOW)]
    assert got == [("kv_offload_hit_ratio", SRV, 0.4),
                   ("spec_decode_acceptance_ratio", SRV, 0.65)]


def test_acceptance_ratio_is_over_the_window_and_survives_a_restart() -> None:
    """The last minute only, and a server restart (counters back to 0) is no drop."""
    def counter(rate_before: float, rate_after: float, signal: str) -> SeriesData:
        return sampled(signal, SRV, lambda t: rate_before * (t + 300) if t < -60
                       else rate_before * 240 + rate_after * (t + 60), start=NOW - 300)

    draft = counter(300.0, 300.0, "spec_decode_draft_tokens_total")
    accepted = counter(240.0, 120.0, "spec_decode_accepted_tokens_total")
    ((_, last_minute),) = increase_ratio([accepted], [draft], NOW - 60, NOW)
    assert last_minute == pytest.approx(0.4)
    restarted = [SeriesData(s.signal, s.labels, s.timestamps,
                            np.where(s.timestamps < NOW - 30, s.values,
                                     s.values - s.values[s.timestamps >= NOW - 30][0] + 1.0))
                 for s in (draft, accepted)]
    ((_, across_restart),) = increase_ratio([restarted[1]], [restarted[0]], NOW - 60, NOW)
    assert across_restart == pytest.approx(0.4, rel=0.02)


def test_derive_exports_the_latency_decomposition() -> None:
    """queue, prefill and decode time: p50/p95/p99 like TTFT, rules name them alike."""
    assert {"queue_time_seconds", "prefill_time_seconds",
            "decode_time_seconds"} <= set(LATENCY_HISTOGRAMS)
    # vLLM's request-latency buckets start at 0.3 s; 10 prefills/s, 7 under 0.3 s
    per_second = (7.0, 2.0, 1.0)
    buckets = [sampled("prefill_time_seconds_bucket", (*SRV, ("le", le)),
                       lambda t, k=k: sum(per_second[:k + 1]) * (t + 120), start=NOW - 120)
               for k, le in enumerate(("0.3", "0.5", "+Inf"))]
    got = {dict(s.labels)["quantile"]: s.value for s in derive(Source(buckets), NOW)
           if s.signal == "prefill_time_seconds"}
    assert got["0.5"] == pytest.approx(0.3 * 5 / 7)
    assert got["0.95"] == pytest.approx(0.5)  # rank 9.5 of 10 is in +Inf: the top finite edge
    assert resolve_rule_signal("prefill_time_p95_seconds") == ("prefill_time_seconds", 0.95)
    for base in ("queue_time", "prefill_time", "decode_time"):
        assert resolve_rule_signal(f"{base}_p99_seconds") == (f"{base}_seconds", 0.99)


def lengths(signal: str, labels: Labels, per_second: Sequence[float], edges: Sequence[str],
            *, start: float, end: float = NOW) -> list[SeriesData]:
    """A token-length histogram: ``per_second[k]`` requests a second land in bucket k."""
    return [sampled(f"{signal}_bucket", (*labels, ("le", le)),
                    lambda t, k=k: sum(per_second[:k + 1]) * (t - start + end), start=start,
                    end=end, step=10.0)
            for k, le in enumerate(edges)]


EDGES = ("500", "1000", "2000", "5000", "+Inf")  # vLLM's 1-2-5 edges, the top ones


def test_capacity_in_sequences_at_the_hours_p95_lengths() -> None:
    """335k KV tokens (Llama-3.1-8B on an H100 at 0.8) at p95 prompt + p95 generation."""
    capacity = sampled("kv_cache_capacity_tokens", SRV, lambda _t: 335_000.0, start=NOW - 60)
    # prompts: 10/s, 9 of them <= 2000 tokens, 1 in (2000, 5000]; generations: <= 500
    prompt = lengths("prompt_length_tokens", SRV, (0, 4, 5, 1, 0), EDGES, start=NOW - 3600)
    generation = lengths("generation_length_tokens", SRV, (10, 0, 0, 0, 0), EDGES,
                         start=NOW - 3600)
    ((labels, fits),) = capacity_sequences([capacity], prompt, generation, NOW)
    p95_prompt = 2000 + 3000 * 0.5  # rank 9.5 of 10: half-way into (2000, 5000]
    p95_generation = 500 * 0.95
    assert labels == SRV and fits == pytest.approx(335_000 / (p95_prompt + p95_generation))
    idle = lengths("prompt_length_tokens", SRV, (0, 0, 0, 0, 0), EDGES, start=NOW - 3600)
    assert capacity_sequences([capacity], idle, generation, NOW) == []  # nothing finished


def test_capacity_counts_the_last_hour_only() -> None:
    """Long prompts 50 minutes ago still size the capacity; 70 minutes ago they no longer do."""
    capacity = sampled("kv_cache_capacity_tokens", SRV, lambda _t: 100_000.0, start=NOW - 60)
    short = lengths("generation_length_tokens", SRV, (10, 0, 0, 0, 0), EDGES,
                    start=NOW - 7200)

    def prompts(long_until: float) -> list[SeriesData]:
        """All prompts in (2000, 5000] until ``long_until`` seconds ago, <= 500 since."""
        return [sampled("prompt_length_tokens_bucket", (*SRV, ("le", le)),
                        lambda t, k=k: 10.0 * ((k >= 3) * min(t + 7200, 7200 - long_until)
                                               + max(0.0, t + long_until)),
                        start=NOW - 7200, step=10.0) for k, le in enumerate(EDGES)]

    ((_, recent_long),) = capacity_sequences([capacity], prompts(3000), short, NOW)
    ((_, old_long),) = capacity_sequences([capacity], prompts(4200), short, NOW)
    assert recent_long < 100_000 / 2000 < old_long
    assert input_lookbacks("kv_cache_capacity_sequences", 60.0) == {
        "kv_cache_capacity_tokens": 60.0, "prompt_length_tokens_bucket": 3600.0,
        "generation_length_tokens_bucket": 3600.0}
    assert input_lookbacks("prefix_cache_hit_ratio", 300.0) == {
        "prefix_cache_hits_total": 300.0, "prefix_cache_queries_total": 300.0}


def test_derive_can_leave_out_the_hour_long_signals() -> None:
    """The daemon refreshes the signals that read an hour of histograms once a minute: the
    window signals are derived without them, and they are what LONG_LOOKBACK names."""
    capacity = sampled("kv_cache_capacity_tokens", SRV, lambda _t: 335_000.0, start=NOW - 60)
    prompt = lengths("prompt_length_tokens", SRV, (0, 4, 5, 1, 0), EDGES, start=NOW - 3600)
    generation = lengths("generation_length_tokens", SRV, (10, 0, 0, 0, 0), EDGES,
                         start=NOW - 3600)
    tokens = sampled("generation_tokens_total", SRV, lambda t: 50.0 * (t + 60), start=NOW - 60)
    source = Source([capacity, *prompt, *generation, tokens])
    every = {s.signal for s in derive(source, NOW)}
    assert {"kv_cache_capacity_sequences", "generation_tokens_per_second"} <= every
    assert {"kv_cache_capacity_sequences"} == LONG_LOOKBACK
    without = {s.signal for s in derive(source, NOW, skip=LONG_LOOKBACK)}
    assert without == every - LONG_LOOKBACK
