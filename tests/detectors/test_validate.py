"""Rule checks (detectors/validate.py): what keeps a rule from running, one line per problem."""

from __future__ import annotations

import pytest

from gpuwarden.detectors.registry import DETECTORS
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.detectors.validate import rule_problems, signal_problem, validate_rules


def problems(**kw: object) -> list[str]:
    kw.setdefault("signal", "kv_cache_usage_ratio")
    kw.setdefault("threshold", 0.9)
    return validate_rules([RuleConfig(name="X", **kw)])  # type: ignore[arg-type]


@pytest.mark.parametrize(("kw", "expected"), [
    ({"detector": "magic"}, "unknown detector 'magic'"),
    ({"detector": "composite:Nope"}, "unknown composite 'Nope'"),
    ({"detector": "trend", "threshold": None}, "needs `limit`"),
    ({"signal": "itl_p95_seconds", "aggregation": "max"}, "aggregation does not apply"),
    ({"signal": "itl_p95_seconds", "detector": "trend", "limit": 1.0}, "quantile signal needs"),
    ({"signal": "ttft_seconds"}, "is a histogram: name a quantile, e.g. ttft_p95_seconds"),
    ({"signal": "decode_time_seconds"}, "e.g. decode_time_p95_seconds"),
    ({"signal": "prompt_length_tokens"}, "quantiles of the latency histograms only"),
    ({"signal": "nope"}, "unknown signal"),
    ({"threshold": None}, "threshold is required"),
    ({"clear": 0.95}, "clear 0.95 must not be above threshold 0.9"),
    ({"op": "<", "clear": 0.8}, "must not be below"),
    ({"op": "==", "clear": 0.8}, "no meaning"),
    ({"signal": "prefix_cache_hit_ratio", "aggregation": "mean"}, "already a window figure"),
    ({"signal": "kv_cache_usage_ratio", "detector": "falling"},
     "'kv_cache_usage_ratio' is not one (prefix_cache_hit_ratio, kv_offload_hit_ratio, "
     "spec_decode_acceptance_ratio)"),
])
def test_validate_rules(kw: dict[str, object], expected: str) -> None:
    got = problems(**kw)
    assert any(expected in p for p in got), got
    assert all(p.startswith("rule 'X': ") for p in got)


def test_validate_skips_disabled() -> None:
    assert validate_rules([RuleConfig(name="X", signal="", enabled=False)]) == []


def test_problems_are_listed_together_for_a_rule_with_an_unknown_detector() -> None:
    """The registry answers the name check, so the rule's other problems come with it."""
    got = problems(detector="magic", signal="itl_p95_seconds", aggregation="max")
    assert got == ["rule 'X': aggregation does not apply to a quantile signal: the quantile "
                   "is computed over `window` from the histogram",
                   "rule 'X': a quantile signal needs the threshold detector, not 'magic'",
                   f"rule 'X': {DETECTORS.unknown('magic')}"]
    composite = rule_problems(RuleConfig(name="X", signal="requests_waiting", threshold=1.0,
                                         detector="composite:Nope"))
    assert composite == ["unknown composite 'Nope' (known: KVCacheBottleneck, "
                         "KVCapacityTooSmall, PreemptionsRising, PrefixCacheHitFalling, "
                         "QueueGrowing)"]


def test_signal_problem() -> None:
    assert signal_problem("kv_cache_usage_ratio") is None
    assert signal_problem("itl_p99_seconds") is None  # a quantile of a histogram
    assert signal_problem("queue_time_p95_seconds") is None  # the latency decomposition
    assert signal_problem("spec_decode_acceptance_ratio") is None  # derived
    assert signal_problem("nope") == "unknown signal 'nope'"


def test_a_rule_name_with_a_colon_keeps_its_problem_whole() -> None:
    assert rule_problems(RuleConfig(name="a: b", signal="gpu_up")) == ["threshold is required"]
