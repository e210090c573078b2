"""Default rules table, effective_rules merging, summaries."""

from __future__ import annotations

import dataclasses

import pytest

from gpuwarden.alerts.action import DEFAULT_ACTION_NAMES
from gpuwarden.config import parse_config
from gpuwarden.detectors import Finding, build_detector
from gpuwarden.detectors.defaults import DEFAULT_RULES, effective_rules, render_summary
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.detectors.validate import validate_rules

from .helpers import SRV

RULES = {r.name: r for r in DEFAULT_RULES}

# The README's default-rules table: (name, signal, op, threshold, for, action)
README_TABLE = [
    ("KVCacheNearFull", "kv_cache_usage_ratio", ">", 0.90, 30.0, "notify"),
    ("KVCacheSaturationSoon", "kv_cache_usage_ratio", None, None, 0.0, "notify"),
    ("TokenLatencyP95High", "itl_p95_seconds", ">", 0.130, 30.0, "warm-restart"),
    ("TTFTP95High", "ttft_p95_seconds", ">", 2.0, 60.0, "notify"),
    ("GPUUtilizationSpread", "gpu_utilization_ratio", ">", 0.15, 120.0, "notify"),
    ("QualityDrift", "quality_similarity", "<", 0.92, 0.0, "checkpoint-rollback"),
    ("GPULost", "gpu_up", "==", 0.0, 0.0, "notify"),
    ("XIDError", "gpu_xid_errors_total", ">", 0.0, 0.0, "notify"),
    ("ServerDown", "server_up", "==", 0.0, 30.0, "notify"),
    ("VRAMHeadroomLow", "gpu_memory_headroom_ratio", "<", 0.15, 300.0, "notify"),
    ("GPUMemoryUtilizationConfigHigh", "server_gpu_memory_utilization_config", ">", 0.85, 0.0,
     "notify"),
]
COMPOSITES = ["KVCacheBottleneck", "PreemptionsRising", "PrefixCacheHitFalling", "QueueGrowing"]
# The README's rows after the composites, in the same columns as README_TABLE.
CAPACITY_TABLE = [
    ("SpecDecodeAcceptanceFalling", "spec_decode_acceptance_ratio", ">", 0.2, 60.0, "notify"),
    ("KVCapacityTooSmall", "kv_cache_capacity_sequences", "<", 1.0, 60.0, "notify"),
]


@pytest.mark.parametrize("row", README_TABLE + CAPACITY_TABLE,
                         ids=[d[0] for d in README_TABLE + CAPACITY_TABLE])
def test_design_table(row: tuple[str, str, str | None, float | None, float, str]) -> None:
    name, signal, op, threshold, for_, action = row
    r = RULES[name]
    assert r.signal == signal
    if op is not None:
        assert (r.op, r.threshold) == (op, threshold)
    assert r.for_ == for_
    assert r.actions == (action,)
    assert r.summary


def test_every_rule_named_and_buildable() -> None:
    assert [r.name for r in DEFAULT_RULES] == (
        [d[0] for d in README_TABLE] + COMPOSITES + [d[0] for d in CAPACITY_TABLE]
        + ["QualityDriftCUSUM", "AnswerLengthShift"])
    assert validate_rules(DEFAULT_RULES) == []
    assert RULES["QualityDriftCUSUM"].every == RULES["AnswerLengthShift"].every == 60.0
    for r in DEFAULT_RULES:
        assert set(r.actions) <= set(DEFAULT_ACTION_NAMES)
        assert build_detector(r).inputs
    soon = RULES["KVCacheSaturationSoon"]
    assert (soon.detector, soon.limit, soon.horizon) == ("trend", 1.0, 300.0)
    assert RULES["KVCacheNearFull"].clear == 0.85


def test_capacity_rules_say_why() -> None:
    """The memory rules carry the practice they check, for whoever reads the alert."""
    headroom, config = RULES["VRAMHeadroomLow"], RULES["GPUMemoryUtilizationConfigHigh"]
    assert (headroom.severity, headroom.clear) == ("warning", 0.17)
    assert config.severity == "info"
    assert "15 %" in dict(headroom.annotations)["description"]
    why = dict(config.annotations)["description"]
    assert "0.85" in why and "long sequences" in why and "activation spikes" in why
    gpu_labels = {"node": "n1", "gpu": "5", "uuid": "GPU-5", "model": "H100"}
    assert render_summary(headroom, finding(0.09), gpu_labels) == (
        "VRAM headroom 9% on GPU 5 (n1) < 15%")
    assert render_summary(config, finding(0.95), dict(SRV)) == (
        "vllm-0 (m) is configured to take 95% of GPU memory > 85%")


def test_spec_decode_rule_compares_ten_minute_windows() -> None:
    spec = RULES["SpecDecodeAcceptanceFalling"]
    assert (spec.detector, spec.window, spec.severity) == ("falling", 600.0, "info")
    assert render_summary(spec, finding(0.35), dict(SRV)) == (
        "Speculative-decoding acceptance on vllm-0 (m) fell by 35% against the previous 600 s")


def test_effective_rules_replace_disable_add() -> None:
    mine = RuleConfig(name="KVCacheNearFull", signal="kv_cache_usage_ratio", threshold=0.95)
    off = RuleConfig(name="QualityDrift", signal="", enabled=False)
    new = RuleConfig(name="HotGPU", signal="gpu_temperature_celsius", threshold=85.0)
    out = effective_rules([mine, off, new])
    names = [r.name for r in out]
    assert names == [r.name for r in DEFAULT_RULES if r.name != "QualityDrift"] + ["HotGPU"]
    assert out[0] is mine
    assert effective_rules([]) == DEFAULT_RULES


def test_effective_rules_from_toml() -> None:
    cfg = parse_config('[[rules]]\nname = "GPULost"\nenabled = false\n'
                       '[[rules]]\nname = "TTFTP95High"\nsignal = "ttft_p99_seconds"\n'
                       'threshold = 3.0\n')
    out = {r.name: r for r in effective_rules(cfg.rules)}
    assert "GPULost" not in out
    assert out["TTFTP95High"].signal == "ttft_p99_seconds"
    assert validate_rules(tuple(out.values())) == []


def finding(value: float) -> Finding:
    return Finding(SRV, value)


def test_render_summary() -> None:
    labels = dict(SRV)
    text = render_summary(RULES["KVCacheNearFull"], finding(0.934), labels)
    assert text == "KV cache 93% on vllm-0 (m) > 90%"
    p95 = render_summary(RULES["TokenLatencyP95High"], finding(0.1463), labels)
    assert p95 == "p95 inter-token latency 0.146 s on vllm-0 (m) > 0.13 s"


@pytest.mark.parametrize("template", ["{nope} down", "{value:%Q}", "{0}", "{", "{threshold:.1f}"])
def test_bad_template_falls_back(template: str) -> None:
    r = RuleConfig(name="R", signal="gpu_up", op="==", threshold=None, summary=template)
    assert render_summary(r, finding(0.0), dict(SRV)) == "R: value 0"
    r2 = dataclasses.replace(r, threshold=1.0, summary="{nope}")
    assert render_summary(r2, finding(0.5), {}) == "R: value 0.5 == 1"
