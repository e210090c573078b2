"""Alert values in words and units (alerts/values.py): what the demo's alert lines say."""

from __future__ import annotations

import pytest

from gpuwarden.alerts.values import (
    DETECTOR_VALUES,
    FORMATTERS,
    describe_value,
    format_quantity,
    signal_label,
    signal_unit,
)
from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.signals import SIGNALS

RULES = {rule.name: rule for rule in DEFAULT_RULES}


@pytest.mark.parametrize(("value", "unit", "text"), [
    (0.93, "ratio", "93 %"),
    (0.034, "ratio", "3.4 %"),
    (1.0, "ratio", "100 %"),
    (0.0, "ratio", "0 %"),
    (0.187, "seconds", "187 ms"),
    (0.0125, "seconds", "12.5 ms"),
    (2.4, "seconds", "2.4 s"),
    (2.48, "seconds", "2.48 s"),
    (90.0, "seconds", "90 s"),
    (300.0, "seconds", "5 min"),
    (3 * 3600.0, "seconds", "3 h"),
    (80 * 2**30, "bytes", "80 GiB"),
    (512.0, "bytes", "512 B"),
    (1536.0, "bytes", "1.5 KiB"),
    (4.8e12, "bytes_per_second", "4.8 TB/s"),
    (1.98e9, "hertz", "1.98 GHz"),
    (350.0, "watts", "350 W"),
    (85.0, "celsius", "85 °C"),
    (0.35, "usd", "$0.35"),
    (8192.0, "tokens", "8,192 tokens"),
    (5120.0, "bits", "5,120 bits"),
    (17.0, "", "17"),
    (6.99, "", "6.99"),
    (1234567.0, "", "1,234,567"),
    (0.25, "per_second", "0.25/s"),
    (-0.05, "ratio", "-5 %"),
    (3.0, "furlongs", "3 furlongs"),  # a unit nobody formats: printed with its name
])
def test_format_quantity(value: float, unit: str, text: str) -> None:
    assert format_quantity(value, unit) == text


def test_not_finite_values_print_as_such() -> None:
    assert format_quantity(float("nan"), "seconds") == "nan seconds"
    assert format_quantity(float("inf"), "") == "inf"


def test_every_unit_of_the_catalogue_has_a_formatter() -> None:
    """A signal with a new unit would print it raw: add its formatter with it."""
    assert {s.unit for s in SIGNALS.values()} <= set(FORMATTERS)


@pytest.mark.parametrize(("name", "label", "unit"), [
    ("kv_cache_usage_ratio", "KV cache usage", "ratio"),
    ("itl_p95_seconds", "ITL p95", "seconds"),
    ("ttft_p99_seconds", "TTFT p99", "seconds"),
    ("gpu_xid_errors_total", "GPU XID errors", ""),
    ("gpu_memory_headroom_ratio", "GPU memory headroom", "ratio"),
    ("requests_waiting", "Requests waiting", ""),
    ("no_such_signal", "No such signal", ""),
])
def test_signal_label_and_unit(name: str, label: str, unit: str) -> None:
    assert (signal_label(name), signal_unit(name)) == (label, unit)


@pytest.mark.parametrize(("rule", "value", "text"), [
    ("KVCacheNearFull", 0.93, "KV cache usage 93 % (> 90 %)"),
    ("TokenLatencyP95High", 0.187, "ITL p95 187 ms (> 130 ms)"),
    ("TTFTP95High", 2.4, "TTFT p95 2.4 s (> 2 s)"),
    ("KVCacheSaturationSoon", 37.6, "KV cache usage reaches 100 % in 38s"),
    ("KVCacheSaturationSoon", 207.2, "KV cache usage reaches 100 % in 3m27s"),
    ("KVCacheSaturationSoon", 0.0, "KV cache usage at 100 %"),
    ("VRAMHeadroomLow", 0.04, "GPU memory headroom 4 % (< 15 %)"),
    ("GPUUtilizationSpread", 0.17, "GPU utilization spread 17 % (> 15 %)"),
    ("XIDError", 3.0, "3 new GPU XID errors in 5m (> 0)"),
    ("PreemptionsRising", 0.25, "preemptions 0.25/s (> 0.1/s)"),
    ("KVCacheBottleneck", 0.45, "tokens/s at 45 % of the previous 1m (< 50 %)"),
    ("PrefixCacheHitFalling", 0.3, "Prefix cache hit fell by 30 % (> 20 %)"),
    ("QueueGrowing", 12.0, "queue grew by 12 requests (> 5)"),
    ("QualityDriftCUSUM", 9.2, "CUSUM 9.2 sigma (> 8 sigma)"),
    ("AnswerLengthShift", 0.003, "KS p-value 0.003 (< 0.01)"),
])
def test_default_rules_values_in_words(rule: str, value: float, text: str) -> None:
    assert describe_value(RULES[rule], value) == text


def test_without_the_comparison() -> None:
    assert describe_value(RULES["TokenLatencyP95High"], 0.125, compare=False) == "ITL p95 125 ms"


def test_every_default_rules_detector_is_described() -> None:
    assert {rule.detector for rule in DEFAULT_RULES} <= set(DETECTOR_VALUES)


def test_an_unknown_detector_gives_the_bare_number() -> None:
    rule = RuleConfig(name="Custom", signal="gpu_up", detector="custom:thing", threshold=1.0)
    assert describe_value(rule, 6.99) == "Custom value 6.99"


def test_a_config_rule_on_bytes() -> None:
    rule = RuleConfig(name="BigProcess", signal="gpu_process_memory_used_bytes", op=">",
                      threshold=40 * 2**30)
    assert describe_value(rule, 42.5 * 2**30) == "GPU process memory used 42.5 GiB (> 40 GiB)"


def test_a_value_just_past_its_threshold_does_not_read_as_the_threshold() -> None:
    assert describe_value(RULES["KVCacheNearFull"], 0.9004) == "KV cache usage 90.04 % (> 90 %)"
    assert describe_value(RULES["PreemptionsRising"], 0.1001) == (
        "preemptions 0.1001/s (> 0.1/s)")
    assert describe_value(RULES["KVCacheNearFull"], 0.9 + 1e-12) == (
        "KV cache usage 90 % (> 90 %)")  # six digits at most
