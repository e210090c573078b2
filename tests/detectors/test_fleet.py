"""The fleet detectors on windows holding several nodes' series, each value checked
against the arithmetic a fleet-wide Grafana panel would do."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpuwarden.detectors import Status, Window, build_detector
from gpuwarden.detectors.fleet_rules import DEFAULT_FLEET_RULES, effective_fleet_rules
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.model import SeriesData, make_labels
from gpuwarden.promql.quantile import histogram_quantile

NOW = 1_700_000_100.0
EDGES = (0.05, 0.1, 0.25, 0.5, math.inf)


def _series(signal: str, values: list[float], **labels: str) -> SeriesData:
    ts = np.array([NOW - len(values) + 1 + i for i in range(len(values))], dtype=float)
    return SeriesData(signal, make_labels(**labels), ts, np.array(values, dtype=float))


def _histogram(per_second: dict[float, float], seconds: int, **labels: str) -> list[SeriesData]:
    """Cumulative ``itl_seconds_bucket`` series growing by ``per_second[le]`` a second."""
    out, cumulative = [], 0.0
    for le in EDGES:
        cumulative += per_second.get(le, 0.0)
        le_text = "+Inf" if math.isinf(le) else f"{le:g}"
        out.append(_series("itl_seconds_bucket", [cumulative * i for i in range(seconds)],
                           le=le_text, **labels))
    return out


def _rule(name: str, **changes: object) -> RuleConfig:
    rule = {r.name: r for r in DEFAULT_FLEET_RULES}[name]
    return RuleConfig(**{**{f: getattr(rule, f) for f in rule.__slots__}, **changes})


def test_model_p95_is_the_quantile_of_the_summed_buckets_of_all_its_servers() -> None:
    fast = {0.05: 90.0}  # 90 requests a second under 50 ms...
    slow = {0.25: 0.0, 0.5: 10.0}  # ...and 10 a second between 250 and 500 ms elsewhere
    series = [*_histogram(fast, 61, node="a", server="s0", model="m"),
              *_histogram(slow, 61, node="b", server="s0", model="m"),
              *_histogram(fast, 61, node="c", server="s0", model="other")]
    detector = build_detector(_rule("ModelLatencyP95High", window=60.0))
    findings = detector.evaluate(Window(NOW, 1.0, {"itl_seconds_bucket": series}))
    # histogram_quantile(0.95, sum by (le) (increase(...[60s]))): 5400 fast + 600 slow.
    expected = histogram_quantile(0.95, [(0.05, 5400.0), (0.1, 5400.0), (0.25, 5400.0),
                                         (0.5, 6000.0), (math.inf, 6000.0)])
    assert [dict(f.labels) for f in findings] == [{"model": "m"}]
    assert findings[0].value == pytest.approx(expected)
    assert expected > 0.25  # the slow server's tenth of the requests puts p95 there
    assert "2 servers on 2 nodes (a, b)" in dict(findings[0].annotations)["description"]


def test_an_idle_model_or_a_silent_server_is_not_slow() -> None:
    idle = _histogram({}, 61, node="a", server="s0", model="m")
    detector = build_detector(_rule("ModelLatencyP95High"))
    assert detector.evaluate(Window(NOW, 1.0, {"itl_seconds_bucket": idle})) == []
    stale = _histogram({0.5: 10.0}, 61, node="b", server="s0", model="m")
    later = NOW + 600  # its last scrape is 10 minutes old
    assert detector.evaluate(Window(later, 1.0, {"itl_seconds_bucket": stale})) == []


def test_straggler_is_the_node_far_below_its_models_mean() -> None:
    util = {"a": 0.9, "b": 0.9, "c": 0.5, "d": 0.1}
    models = {"a": "m", "b": "m", "c": "m", "d": "alone"}
    data = {
        "gpu_utilization_ratio": [_series("gpu_utilization_ratio", [u] * 10, node=n, gpu=g,
                                          uuid=f"{n}{g}", model="H100")
                                  for n, u in util.items() for g in "01"],
        "kv_cache_usage_ratio": [_series("kv_cache_usage_ratio", [0.5] * 10, node=n,
                                         server="s", model=m) for n, m in models.items()],
    }
    findings = build_detector(_rule("NodeStraggler")).evaluate(Window(NOW, 1.0, data))
    assert [dict(f.labels) for f in findings] == [{"model": "m", "node": "c"}]
    assert findings[0].value == pytest.approx((0.9 + 0.9 + 0.5) / 3 - 0.5)


@pytest.mark.parametrize("usage,status", [
    ((0.7, 0.6), None),  # 62.5 % of the tokens in use
    ((0.9, 0.8), Status.HOLD),  # 82.5 %: between clear (80 %) and threshold (85 %)
    ((0.95, 0.85), Status.BREACH),  # 87.5 %, where an unweighted mean would say 90 %
])
def test_kv_headroom_weights_each_server_by_its_capacity(usage: tuple[float, float],
                                                         status: Status | None) -> None:
    caps = (1000.0, 3000.0)
    data = {
        "kv_cache_usage_ratio": [_series("kv_cache_usage_ratio", [u] * 5, node=n, server="s",
                                         model="m") for n, u in zip("ab", usage, strict=True)],
        "kv_cache_capacity_tokens": [_series("kv_cache_capacity_tokens", [c] * 5, node=n,
                                             server="s", model="m")
                                     for n, c in zip("ab", caps, strict=True)],
    }
    findings = build_detector(_rule("FleetKVHeadroomLow")).evaluate(Window(NOW, 1.0, data))
    weighted = sum(u * c for u, c in zip(usage, caps, strict=True)) / sum(caps)
    assert [f.status for f in findings] == ([status] if status is not None else [])
    assert all(f.value == pytest.approx(weighted) for f in findings)


def test_fleet_rules_replace_and_extend_by_name_and_stay_out_of_the_node_set() -> None:
    from gpuwarden.detectors.defaults import effective_rules

    mine = RuleConfig(name="MyFleetRule", signal="kv_cache_usage_ratio", op=">",
                      threshold=0.5, scope="fleet")
    off = RuleConfig(name="NodeStraggler", signal="gpu_utilization_ratio", enabled=False)
    fleet = effective_fleet_rules([mine, off])
    names = [r.name for r in fleet]
    assert names == ["NodeSilent", "ModelLatencyP95High", "FleetKVHeadroomLow", "MyFleetRule"]
    assert all(r.scope == "fleet" for r in fleet)
    node_names = {r.name for r in effective_rules([mine, off])}
    assert node_names.isdisjoint(names) and "NodeStraggler" not in node_names
