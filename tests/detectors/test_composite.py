"""Composite diagnostics: each one positive and negative."""

from __future__ import annotations

import pytest

from gpuwarden.detectors import build_detector
from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.detectors.rule import RuleConfig

from .helpers import NOW, SRV, SRV2, const, detect, gpu, histogram, sampled

RULES = {r.name: r for r in DEFAULT_RULES}


def by_name(name: str) -> RuleConfig:
    return RULES[name]


# --- KVCacheBottleneck -----------------------------------------------------------------


def tokens(before: float, after: float) -> object:
    """generation_tokens_total at `before` tokens/s until 60 s ago, `after` since."""
    return sampled("generation_tokens_total", SRV,
                   lambda t: 1e6 + (before * t if t < -60 else -60 * before + after * (t + 60)),
                   start=NOW - 180)


def bottleneck(util: float = 0.95, kv: float = 0.95, before: float = 1000.0,
               after: float = 300.0) -> list:
    gpus = [const("gpu_utilization_ratio", gpu(i), util) for i in range(4)]
    return detect(by_name("KVCacheBottleneck"), *gpus,
                  const("kv_cache_usage_ratio", SRV, kv), tokens(before, after))


def test_bottleneck_fires_on_busy_gpus_full_kv_and_falling_throughput() -> None:
    (found,) = bottleneck()
    assert found.labels == SRV
    assert found.value == pytest.approx(0.3, rel=1e-6)
    ann = dict(found.annotations)
    assert float(ann["tokens_per_second"]) == pytest.approx(300.0)
    assert float(ann["tokens_per_second_before"]) == pytest.approx(1000.0)


@pytest.mark.parametrize("kw", [{"util": 0.6}, {"kv": 0.7}, {"after": 900.0},
                                {"before": 0.0, "after": 0.0}])
def test_bottleneck_negative(kw: dict[str, float]) -> None:
    assert not bottleneck(**kw)


def test_bottleneck_ignores_gpus_of_other_nodes() -> None:
    other = [const("gpu_utilization_ratio", gpu(i, "n2"), 0.99) for i in range(2)]
    mine = [const("gpu_utilization_ratio", gpu(i), 0.3) for i in range(2)]
    assert not detect(by_name("KVCacheBottleneck"), *other, *mine,
                      const("kv_cache_usage_ratio", SRV, 0.95), tokens(1000.0, 100.0))


# --- PreemptionsRising -----------------------------------------------------------------


def preemptions(rate: float, reset_at: float | None = None) -> object:
    def f(t: float) -> float:
        if reset_at is not None and t >= reset_at:
            return rate * (t - reset_at)
        return 50.0 + rate * (t + 300)

    return sampled("preemptions_total", SRV, f, start=NOW - 300)


def test_preemptions_rising() -> None:
    (found,) = detect(by_name("PreemptionsRising"), preemptions(0.2))
    assert found.value == pytest.approx(0.2)
    assert not detect(by_name("PreemptionsRising"), preemptions(0.05))
    assert not detect(by_name("PreemptionsRising"), preemptions(0.0))
    # a server restart resets the counter: not a burst of negative preemptions
    assert detect(by_name("PreemptionsRising"), preemptions(0.2, reset_at=-60))[0].value == \
        pytest.approx(0.2, rel=0.02)


# --- PrefixCacheHitFalling ---------------------------------------------------------------


def prefix(q_rate: float, hit_before: float, hit_after: float) -> list:
    w = by_name("PrefixCacheHitFalling").window
    q = sampled("prefix_cache_queries_total", SRV, lambda t: q_rate * (t + 3 * w),
                start=NOW - 3 * w)
    h = sampled("prefix_cache_hits_total", SRV,
                lambda t: q_rate * (hit_before * (t + 3 * w) if t < -w else
                                    hit_before * 2 * w + hit_after * (t + w)),
                start=NOW - 3 * w)
    return [q, h]


def test_prefix_hit_falling() -> None:
    (found,) = detect(by_name("PrefixCacheHitFalling"), *prefix(100.0, 0.6, 0.2))
    assert found.value == pytest.approx(0.4)
    assert dict(found.annotations)["hit_ratio"] == "0.200"


@pytest.mark.parametrize("args", [(100.0, 0.6, 0.6), (100.0, 0.6, 0.5), (100.0, 0.2, 0.6),
                                  (0.1, 0.9, 0.0)])
def test_prefix_hit_negative(args: tuple[float, float, float]) -> None:
    assert not detect(by_name("PrefixCacheHitFalling"), *prefix(*args))


# --- QueueGrowing --------------------------------------------------------------------------


def queue(waiting_per_s: float, running_per_s: float) -> list:
    w = sampled("requests_waiting", SRV, lambda t: max(0.0, 20.0 + round(waiting_per_s * t)),
                start=NOW - 120)
    r = sampled("requests_running", SRV, lambda t: 16.0 + round(running_per_s * t) + (t % 2),
                start=NOW - 120)
    return [w, r]


def test_queue_growing() -> None:
    (found,) = detect(by_name("QueueGrowing"), *queue(0.33, 0.0))
    assert found.value == pytest.approx(20.0, abs=1.5)


@pytest.mark.parametrize("rates", [(0.0, 0.0), (0.05, 0.0), (0.33, 0.33), (-0.3, 0.0)])
def test_queue_negative(rates: tuple[float, float]) -> None:
    assert not detect(by_name("QueueGrowing"), *queue(*rates))


# --- KVCapacityTooSmall ----------------------------------------------------------------

TOKEN_EDGES = (500.0, 1000.0, 2000.0, 5000.0)


def capacity(kv_tokens: float, long_share: float, running: float, waiting_peak: float,
             labels: tuple[tuple[str, str], ...] = SRV) -> list:
    """An hour of requests: prompts <= 1000 tokens, ``long_share`` of them in (2000, 5000];
    generations <= 500; running steady, waiting reaching ``waiting_peak`` 5 minutes ago."""
    rate = 10.0
    prompts = histogram("prompt_length_tokens", labels, TOKEN_EDGES,
                        lambda t: [0.0, rate * (1 - long_share) * (t + 3600), 0.0,
                                   rate * long_share * (t + 3600), 0.0],
                        start=NOW - 3600, step=10.0)
    generations = histogram("generation_length_tokens", labels, TOKEN_EDGES,
                            lambda t: [rate * (t + 3600), 0.0, 0.0, 0.0, 0.0],
                            start=NOW - 3600, step=10.0)
    return [const("kv_cache_capacity_tokens", labels, kv_tokens),
            *prompts, *generations, const("requests_running", labels, running, span=900),
            sampled("requests_waiting", labels,
                    lambda t: waiting_peak if -310 <= t <= -290 else 0.0, start=NOW - 900)]


def test_kv_capacity_too_small_fires_before_the_preemptions() -> None:
    # 20 % long prompts: p95 prompt 2000 + 3000 x 0.75 = 4250, p95 generation 475;
    # 120k tokens hold 25.4 sequences; 24 running + 8 waiting at the peak
    (found,) = detect(by_name("KVCapacityTooSmall"), *capacity(120_000.0, 0.2, 24.0, 8.0))
    fits = 120_000 / (4250 + 475)
    assert found.labels == SRV and found.value == pytest.approx(fits / 32)
    notes = dict(found.annotations)
    assert (notes["capacity_sequences"], notes["peak_requests"]) == (f"{fits:.4g}", "32")
    assert "preempt" in notes["description"]


@pytest.mark.parametrize("args", [
    (120_000.0, 0.2, 24.0, 0.0),  # 25.4 fit, 24 at most: tight, but they fit
    (335_000.0, 0.2, 24.0, 8.0),  # a larger cache
    (120_000.0, 0.02, 24.0, 8.0),  # long prompts too rare to move the p95 (under 1000)
])
def test_kv_capacity_negative(args: tuple[float, float, float, float]) -> None:
    assert detect(by_name("KVCapacityTooSmall"), *capacity(*args)) == []


def test_kv_capacity_needs_a_live_server_with_finished_requests() -> None:
    data = capacity(120_000.0, 0.2, 24.0, 8.0)
    no_capacity = [s for s in data if s.signal != "kv_cache_capacity_tokens"]
    assert detect(by_name("KVCapacityTooSmall"), *no_capacity) == []  # e.g. llama.cpp
    other = capacity(120_000.0, 0.2, 24.0, 8.0, labels=SRV2)
    assert [f.labels for f in detect(by_name("KVCapacityTooSmall"), *data, *other)] == [
        SRV, SRV2]
    det = build_detector(by_name("KVCapacityTooSmall"))
    assert det.inputs == {"kv_cache_capacity_tokens": 600.0,
                          "prompt_length_tokens_bucket": 3600.0,
                          "generation_length_tokens_bucket": 3600.0,
                          "requests_running": 600.0, "requests_waiting": 600.0}


def test_inputs_cover_previous_window() -> None:
    assert build_detector(by_name("KVCacheBottleneck")).inputs["generation_tokens_total"] == 120
    det = build_detector(by_name("PrefixCacheHitFalling"))
    assert det.inputs == {"prefix_cache_hits_total": 600.0, "prefix_cache_queries_total": 600.0}
