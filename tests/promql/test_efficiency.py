"""The efficiency and cost signals: memory-bandwidth and FLOP utilisation and cost per
million tokens, each formula on hand-built series, the server -> GPU join
(``server_gpu_info``), its fallback, staleness, and a threshold rule on the cost through
the rule engine."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pytest

from gpuwarden.alerts.engine import RuleEngine
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.detectors.validate import rule_problems
from gpuwarden.model import Labels, SeriesData, make_labels
from gpuwarden.promql.derived import derive
from gpuwarden.promql.efficiency import (
    bandwidth_utilization,
    cost_per_million_tokens,
    flops_utilization,
)

NOW = 1_000_000.0
START = NOW - 60
H100 = "NVIDIA H100 80GB HBM3"
H100_PEAK = 989.5e12
A100 = "NVIDIA A100-SXM4-80GB"
SRV0 = make_labels(node="n1", server="vllm-0", model="m")
SRV1 = make_labels(node="n1", server="vllm-1", model="m")


def sampled(signal: str, labels: Labels, fn: Callable[[float], float], *,
            start: float = NOW - 120, end: float = NOW, step: float = 1.0) -> SeriesData:
    """Samples fn(t - end) every ``step`` seconds over ``[start, end]``."""
    ts = np.arange(start, end + step / 2, step)
    return SeriesData(signal, labels, ts, np.array([fn(t - end) for t in ts]))


def counter(signal: str, labels: Labels, per_second: float, **kw: float) -> SeriesData:
    return sampled(signal, labels, lambda t: 1e15 + per_second * t, **kw)


def gpu(signal: str, index: int, value: float, model: str = H100,
        node: str = "n1") -> SeriesData:
    labels = make_labels(node=node, gpu=str(index), uuid=f"GPU-{node}-{index}", model=model)
    return sampled(signal, labels, lambda _t: value)


def info(server: str, *gpus: int, value: float = 1.0, start: float = NOW - 120,
         end: float = NOW) -> list[SeriesData]:
    return [sampled("server_gpu_info", make_labels(node="n1", server=server, gpu=str(g)),
                    lambda _t: value, start=start, end=end) for g in gpus]


def traffic(labels: Labels, read: float, write: float) -> tuple[SeriesData, SeriesData]:
    return (counter("estimated_memory_read_bytes_total", labels, read),
            counter("estimated_memory_write_bytes_total", labels, write))


def bandwidth(read: Sequence[SeriesData], write: Sequence[SeriesData],
              links: Sequence[SeriesData], peaks: Sequence[SeriesData]) -> dict[Labels, float]:
    return dict(bandwidth_utilization(read, write, links, peaks, start=START, end=NOW,
                                      interval=1.0))


def mfu(flops: Sequence[SeriesData], links: Sequence[SeriesData],
        totals: Sequence[SeriesData]) -> dict[Labels, float]:
    return dict(flops_utilization(flops, links, totals, start=START, end=NOW, interval=1.0))


def cost(tokens: Sequence[SeriesData], links: Sequence[SeriesData],
         prices: Sequence[SeriesData]) -> dict[Labels, float]:
    return dict(cost_per_million_tokens(tokens, links, prices, start=START, end=NOW,
                                        interval=1.0))


PEAK = "gpu_memory_bandwidth_peak_bytes_per_second"
TOTAL = "gpu_memory_total_bytes"
PRICE = "gpu_cost_per_hour_usd"


# ---------------------------------------------------------------- memory bandwidth


def test_bandwidth_is_read_plus_write_over_each_gpus_peak() -> None:
    read, write = traffic(SRV0, 1.2e12, 0.3e12)
    peaks = [gpu(PEAK, 0, 3.0e12), gpu(PEAK, 1, 2.0e12), gpu(PEAK, 2, 3.35e12)]
    got = bandwidth([read], [write], info("vllm-0", 0, 1), peaks)  # TP=2 on GPUs 0 and 1
    assert got == {make_labels(dict(SRV0), gpu="0"): pytest.approx(1.5e12 / 3.0e12),
                   make_labels(dict(SRV0), gpu="1"): pytest.approx(1.5e12 / 2.0e12)}


def test_bandwidth_needs_both_counters_and_the_gpus_peak() -> None:
    read, write = traffic(SRV0, 1.2e12, 0.3e12)
    peaks = [gpu(PEAK, 0, 3.0e12)]
    assert bandwidth([read], [], info("vllm-0", 0), peaks) == {}
    assert bandwidth([read], [write], info("vllm-0", 5), peaks) == {}  # GPU 5: no peak


def test_bandwidth_without_server_gpu_info_when_the_node_has_one_peak() -> None:
    read, write = traffic(SRV0, 1.2e12, 0.3e12)
    same = [gpu(PEAK, i, 3.0e12) for i in range(4)]
    assert bandwidth([read], [write], [], same) == {SRV0: pytest.approx(0.5)}  # no gpu label
    mixed = [*same, gpu(PEAK, 4, 2.0e12, model=A100)]
    assert bandwidth([read], [write], [], mixed) == {}  # which peak is unknown
    other_node = [gpu(PEAK, 0, 3.0e12, node="n2")]
    assert bandwidth([read], [write], [], other_node) == {}


# ---------------------------------------------------------------- MFU


def test_mfu_is_the_flop_rate_over_the_gpus_dense_bf16_peak() -> None:
    flops = counter("estimated_flops_total", SRV0, 0.1 * H100_PEAK)
    totals = [gpu(TOTAL, 0, 80e9), gpu(TOTAL, 1, 80e9)]
    assert mfu([flops], info("vllm-0", 0, 1), totals) == {SRV0: pytest.approx(0.1)}


def test_mfu_of_mixed_models_uses_the_mean_peak() -> None:
    flops = counter("estimated_flops_total", SRV0, 100e12)
    totals = [gpu(TOTAL, 0, 80e9), gpu(TOTAL, 1, 80e9, model=A100)]
    got = mfu([flops], info("vllm-0", 0, 1), totals)
    assert got == {SRV0: pytest.approx(100e12 / ((H100_PEAK + 312e12) / 2))}


def test_mfu_needs_every_gpu_in_the_table() -> None:
    flops = counter("estimated_flops_total", SRV0, 100e12)
    totals = [gpu(TOTAL, 0, 80e9), gpu(TOTAL, 1, 24e9, model="NVIDIA GeForce RTX 4090")]
    assert mfu([flops], info("vllm-0", 0, 1), totals) == {}
    assert mfu([flops], info("vllm-0", 0, 7), totals) == {}  # GPU 7 reports no model


def test_mfu_without_server_gpu_info_when_the_node_has_one_known_model() -> None:
    flops = counter("estimated_flops_total", SRV0, 0.2 * H100_PEAK)
    sim = [gpu(TOTAL, i, 80e9, model=f"{H100} (simulated)") for i in range(2)]
    assert mfu([flops], [], sim) == {SRV0: pytest.approx(0.2)}
    assert mfu([flops], [], [*sim, gpu(TOTAL, 2, 80e9, model=A100)]) == {}
    assert mfu([flops], [], [gpu(TOTAL, 0, 24e9, model="NVIDIA GeForce RTX 4090")]) == {}


# ---------------------------------------------------------------- cost


def test_cost_of_a_server_alone_on_its_gpu() -> None:
    tokens = counter("generation_tokens_total", SRV0, 100.0)
    got = cost([tokens], info("vllm-0", 0), [gpu(PRICE, 0, 3.6)])
    assert got == {SRV0: pytest.approx(3.6 / 3600 / 100 * 1e6)}  # $10 per million


def test_two_servers_on_one_gpu_split_its_price() -> None:
    tokens = [counter("generation_tokens_total", SRV0, 100.0),
              counter("generation_tokens_total", SRV1, 50.0)]
    got = cost(tokens, [*info("vllm-0", 0), *info("vllm-1", 0)], [gpu(PRICE, 0, 3.6)])
    assert got == {SRV0: pytest.approx(1.8 / 3600 / 100 * 1e6),
                   SRV1: pytest.approx(1.8 / 3600 / 50 * 1e6)}


def test_a_tp2_server_pays_for_both_gpus() -> None:
    tokens = counter("generation_tokens_total", SRV0, 100.0)
    prices = [gpu(PRICE, 0, 3.6), gpu(PRICE, 1, 3.6), gpu(PRICE, 2, 99.0)]
    got = cost([tokens], info("vllm-0", 0, 1), prices)
    assert got == {SRV0: pytest.approx(7.2 / 3600 / 100 * 1e6)}


def test_no_cost_when_idle_unpriced_or_unjoined() -> None:
    idle = counter("generation_tokens_total", SRV0, 0.0)
    assert cost([idle], info("vllm-0", 0), [gpu(PRICE, 0, 3.6)]) == {}
    tokens = counter("generation_tokens_total", SRV0, 100.0)
    assert cost([tokens], info("vllm-0", 0, 1), [gpu(PRICE, 0, 3.6)]) == {}  # GPU 1 unpriced
    assert cost([tokens], [], [gpu(PRICE, 0, 3.6)]) == {}  # which GPUs: unknown
    one_sample = counter("generation_tokens_total", SRV0, 100.0, start=NOW)
    assert cost([one_sample], info("vllm-0", 0), [gpu(PRICE, 0, 3.6)]) == {}


def test_stale_or_zero_server_gpu_info_is_not_joined() -> None:
    tokens = counter("generation_tokens_total", SRV0, 100.0)
    prices = [gpu(PRICE, 0, 3.6)]
    stale = info("vllm-0", 0, end=NOW - 30)  # the server left GPU 0 half a minute ago
    assert cost([tokens], stale, prices) == {}
    assert cost([tokens], info("vllm-0", 0, value=0.0), prices) == {}
    # a stale link does not count as a sharer of the GPU either
    both = [*info("vllm-0", 0), *info("vllm-1", 0, end=NOW - 30)]
    assert cost([tokens], both, prices) == {SRV0: pytest.approx(10.0)}
    # bandwidth: not joined to GPU 0, so the node-wide fallback applies (no gpu label)
    read, write = traffic(SRV0, 1.2e12, 0.3e12)
    got = bandwidth([read], [write], stale, [gpu(PEAK, 0, 3.0e12)])
    assert got == {SRV0: pytest.approx(0.5)}


# ---------------------------------------------------------------- derive and rules


class Source:
    """Series sliced to the asked range, as the store answers."""

    def __init__(self, data: Sequence[SeriesData]) -> None:
        self.data = data

    def query(self, signal: str, matchers: object = None, start: float = 0.0,
              end: float = 0.0) -> list[SeriesData]:
        out = []
        for s in self.data:
            keep = (s.timestamps >= start) & (s.timestamps <= end)
            if s.signal == signal and keep.any():
                out.append(SeriesData(s.signal, s.labels, s.timestamps[keep], s.values[keep]))
        return out


def node_data(start: float = NOW - 120) -> list[SeriesData]:
    """One H100 with a price, one vLLM on it generating 100 tokens/s."""
    def gauge(signal: str, value: float) -> SeriesData:
        return sampled(signal, make_labels(node="n1", gpu="0", uuid="GPU-0", model=H100),
                       lambda _t: value, start=start)

    return [
        counter("generation_tokens_total", SRV0, 100.0, start=start),
        counter("estimated_flops_total", SRV0, 0.25 * H100_PEAK, start=start),
        counter("estimated_memory_read_bytes_total", SRV0, 2.0e12, start=start),
        counter("estimated_memory_write_bytes_total", SRV0, 0.5e12, start=start),
        *info("vllm-0", 0, start=start),
        gauge(PEAK, 3.35e12), gauge(TOTAL, 80e9), gauge(PRICE, 3.6),
    ]


def test_derive_exports_the_three_signals() -> None:
    got = {(s.signal, s.labels): s.value for s in derive(Source(node_data()), NOW)}
    assert got[("memory_bandwidth_utilization_ratio", make_labels(dict(SRV0), gpu="0"))] == \
        pytest.approx(2.5e12 / 3.35e12)
    assert got[("model_flops_utilization_ratio", SRV0)] == pytest.approx(0.25)
    assert got[("cost_per_million_tokens_usd", SRV0)] == pytest.approx(10.0)


def test_a_cost_rule_fires_after_its_for_through_the_rule_engine() -> None:
    r = RuleConfig("CostPerTokenHigh", "cost_per_million_tokens_usd", ">", 5.0,
                   for_=600.0, window=60.0)
    assert rule_problems(r) == []
    source = Source(node_data(start=NOW - 900))
    eng = RuleEngine((r,), node="n1", interval=1.0)
    fired = []
    for t in range(-660, 1, 30):  # every 30 s over 11 minutes
        fired += [(NOW + t, str(e.kind)) for e in eng.evaluate(NOW + t, source)]
    assert fired == [(NOW - 60, "firing")]  # pending at -660, firing 600 s later
    (alert,) = eng.alerts()
    assert dict(alert.labels)["server"] == "vllm-0"
    assert alert.value == pytest.approx(10.0)
    cheap = RuleConfig("CostPerTokenHigh", "cost_per_million_tokens_usd", ">", 20.0)
    quiet = RuleEngine((cheap,), node="n1", interval=1.0)
    assert quiet.evaluate(NOW, source) == []
