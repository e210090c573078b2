"""The Prometheus rules export: translation unit tests, then promtool on the real output.

The promtool unit tests (``*.promtest.yml``) run against the export of gpuwarden's
effective default rules. Where ``gpuwarden.detectors.defaults`` is not installed yet,
they run against :data:`README_DEFAULTS`, the README's default-rules table transcribed,
so the translation is still proven end to end.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.tools.rules_export import load_rules, render, translate

HERE = Path(__file__).parent
REPO = HERE.parent.parent
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed "
                                    "(Debian package prometheus)")

README_DEFAULTS = (
    RuleConfig("KVCacheNearFull", "kv_cache_usage_ratio", ">", 0.90, clear=0.85, for_=30.0,
               actions=("notify",)),
    RuleConfig("KVCacheSaturationSoon", "kv_cache_usage_ratio", detector="trend", limit=1.0,
               window=300.0, horizon=300.0, keep_firing_for=60.0, actions=("notify",)),
    RuleConfig("TokenLatencyP95High", "itl_p95_seconds", ">", 0.130, for_=30.0,
               actions=("warm-restart",)),
    RuleConfig("TTFTP95High", "ttft_p95_seconds", ">", 2.0, for_=60.0, actions=("notify",)),
    RuleConfig("GPUUtilizationSpread", "gpu_utilization_spread_ratio", ">", 0.15, for_=120.0,
               window=120.0, detector="variance", actions=("notify",)),
    RuleConfig("QualityDrift", "quality_similarity", "<", 0.92,
               actions=("checkpoint-rollback",)),
    RuleConfig("GPULost", "gpu_up", "==", 0.0, actions=("notify",)),
    RuleConfig("XIDError", "gpu_xid_errors_total", ">", 0.0, window=300.0, actions=("notify",)),
    RuleConfig("ServerDown", "server_up", "==", 0.0, for_=30.0, actions=("notify",)),
    RuleConfig("VRAMHeadroomLow", "gpu_memory_headroom_ratio", "<", 0.15, clear=0.17,
               for_=300.0, actions=("notify",)),
    RuleConfig("GPUMemoryUtilizationConfigHigh", "server_gpu_memory_utilization_config", ">",
               0.85, severity="info", actions=("notify",)),
    RuleConfig("SpecDecodeAcceptanceFalling", "spec_decode_acceptance_ratio", ">", 0.2,
               detector="falling", window=600.0, for_=60.0, severity="info",
               actions=("notify",)),
    RuleConfig("KVCapacityTooSmall", "kv_cache_capacity_sequences", "<", 1.0,
               detector="composite:KVCapacityTooSmall", window=600.0, for_=60.0,
               actions=("notify",)),
)


def default_rules() -> list[RuleConfig]:
    return load_rules(None) or list(README_DEFAULTS)


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, check=False)


# --- translation ------------------------------------------------------------------------


def by_name() -> dict[str, str | None]:
    return {r.name: translate(r).expr for r in README_DEFAULTS}


def test_threshold_with_hysteresis_keeps_only_a_firing_alert() -> None:
    expr = by_name()["KVCacheNearFull"]
    assert expr == (
        "gpuwarden_kv_cache_usage_ratio > 0.9 or (gpuwarden_kv_cache_usage_ratio > 0.85 and "
        'ignoring (alertname, alertstate, severity) ALERTS{alertname="KVCacheNearFull", '
        'alertstate="firing"})')


def test_quantile_trend_spread_and_counter_rules() -> None:
    exprs = by_name()
    assert exprs["TokenLatencyP95High"] == 'gpuwarden_itl_seconds{quantile="0.95"} > 0.13'
    assert exprs["TTFTP95High"] == 'gpuwarden_ttft_seconds{quantile="0.95"} > 2'
    assert exprs["KVCacheSaturationSoon"] == (
        "predict_linear(gpuwarden_kv_cache_usage_ratio[5m], 300) >= 1 and "
        "count_over_time(gpuwarden_kv_cache_usage_ratio[5m]) >= 10")
    assert exprs["GPUUtilizationSpread"] == (
        "(max by (node) (avg_over_time(gpuwarden_gpu_utilization_ratio[2m])) - "
        "min by (node) (avg_over_time(gpuwarden_gpu_utilization_ratio[2m]))) > 0.15")
    assert exprs["XIDError"] == "increase(gpuwarden_gpu_xid_errors_total[5m]) > 0"
    assert exprs["ServerDown"] == "gpuwarden_server_up == 0"
    assert exprs["GPUMemoryUtilizationConfigHigh"] == (
        "gpuwarden_server_gpu_memory_utilization_config > 0.85")
    assert exprs["VRAMHeadroomLow"] == (
        "gpuwarden_gpu_memory_headroom_ratio < 0.15 or (gpuwarden_gpu_memory_headroom_ratio "
        "< 0.17 and ignoring (alertname, alertstate, severity) "
        'ALERTS{alertname="VRAMHeadroomLow", alertstate="firing"})')


def test_falling_ratio_is_the_drop_against_the_window_before() -> None:
    accepted, draft = ("gpuwarden_spec_decode_accepted_tokens_total",
                       "gpuwarden_spec_decode_draft_tokens_total")
    assert by_name()["SpecDecodeAcceptanceFalling"] == (
        f"((increase({accepted}[10m] offset 10m) / increase({draft}[10m] offset 10m)) - "
        f"(increase({accepted}[10m]) / increase({draft}[10m])) and "
        f"increase({draft}[10m]) >= 1000 and increase({draft}[10m] offset 10m) >= 1000) > 0.2")
    prefix = translate(RuleConfig("P", "kv_cache_usage_ratio",
                                  detector="composite:PrefixCacheHitFalling", window=300.0))
    assert prefix.expr is not None and prefix.expr.endswith(
        "increase(gpuwarden_prefix_cache_queries_total[5m] offset 5m) >= 1000) > 0.2")
    odd = translate(RuleConfig("F", "gpu_up", detector="falling", threshold=0.1))
    assert odd.expr is None and "'gpu_up'" in (odd.note or "")


def test_kv_capacity_against_the_peak_of_running_and_waiting() -> None:
    assert by_name()["KVCapacityTooSmall"] == (
        "(gpuwarden_kv_cache_capacity_sequences / max_over_time((gpuwarden_requests_running + "
        "gpuwarden_requests_waiting)[10m:])) < 1")


def test_aggregation_and_unexportable_rules() -> None:
    mean = RuleConfig("Hot", "gpu_temperature_celsius", ">", 85.0, aggregation="mean",
                      window=120.0)
    assert translate(mean).expr == "avg_over_time(gpuwarden_gpu_temperature_celsius[2m]) > 85"
    p90 = translate(RuleConfig("P90", "itl_p90_seconds", ">", 0.1))
    assert p90.expr is None and "itl_p90_seconds" in (p90.note or "")
    composite = translate(RuleConfig("KVBottleneck", "gpu_utilization_ratio",
                                     detector="composite"))
    assert composite.expr is None and "composite" in (composite.note or "")
    other_window = translate(RuleConfig("Slow", "itl_p95_seconds", ">", 0.2, window=300.0))
    assert other_window.expr is not None and "1m window quantile" in (other_window.note or "")


def test_render_lists_omitted_rules_at_the_top_and_quotes_templates() -> None:
    rules = [*README_DEFAULTS, RuleConfig("KVBottleneck", "gpu_utilization_ratio",
                                          detector="composite"),
             RuleConfig("Quote's", "server_up", "==", 0.0, labels=(("team", "it's"),))]
    text = render(rules)
    header = text.split("groups:")[0]
    assert f"# Exported: {len(rules) - 1} of {len(rules)} rules." in header
    assert "#   KVBottleneck (composite): detector 'composite'" in header
    assert "KVBottleneck" not in text.split("groups:")[1]
    assert "      - alert: 'Quote''s'" in text and "team: 'it''s'" in text
    assert "{{ $value | humanize }}" in text and "for: 2m" in text
    assert "gpuwarden actions: warm-restart" in text
    assert render([]).rstrip().endswith("rules: []")


def left_out_at_the_top(text: str) -> dict[str, str]:
    """Rule name -> reason, from the export's header comments (before ``groups:``)."""
    header = text.split("\ngroups:\n", 1)[0]
    found = re.findall(r"^#   (\S+) \(([^)]+)\): (.+)\.$", header, re.M)
    return {name: reason for name, _detector, reason in found}


def test_every_default_rule_is_exported_or_listed_with_its_reason() -> None:
    rules = load_rules(None)
    text = render(rules)
    body = text.split("\ngroups:\n", 1)[1]
    exported = re.findall(r"^      - alert: (\S+)$", body, re.M)
    left_out = left_out_at_the_top(text)
    # Each default exactly once: a Prometheus rule, or a line saying why not.
    assert sorted(exported + list(left_out)) == sorted(r.name for r in rules)
    assert f"# Exported: {len(exported)} of {len(rules)} rules." in text
    assert f"# Not exported ({len(left_out)};" in text
    # The reasons are the detector's, not a generic "cannot": these four have none in
    # PromQL (a Theil-Sen bound, CUSUM state, a KS test) or none written yet.
    assert set(left_out) == {"KVCacheBottleneck", "QueueGrowing", "QualityDriftCUSUM",
                             "AnswerLengthShift"}
    assert "Theil-Sen" in left_out["QueueGrowing"]
    assert "Kolmogorov-Smirnov" in left_out["AnswerLengthShift"]
    assert "not written as PromQL yet" in left_out["KVCacheBottleneck"]


def test_readme_lists_the_rules_the_export_leaves_out() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Rules and alerts", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^- \*\*(\w+)\*\*", section, re.M))
    rules = load_rules(None)
    left_out = left_out_at_the_top(render(rules))
    assert listed == set(left_out)
    counts = (f"Of the defaults, {len(rules) - len(left_out)} of {len(rules)} are exported; "
              f"these {len(left_out)} exist only")
    assert counts in " ".join(section.split())


def test_cli_export_to_stdout_names_the_left_out_on_stderr(
        capsys: pytest.CaptureFixture[str]) -> None:
    from gpuwarden.cli.main import main

    assert main(["rules", "export"]) == 0
    out, err = capsys.readouterr()
    left_out = left_out_at_the_top(out)
    assert len(left_out) == 4
    assert sorted(line.split()[2] for line in err.splitlines()) == sorted(left_out)


def test_preemptions_rising_is_the_rate_of_the_counter() -> None:
    rule = RuleConfig("PreemptionsRising", "preemptions_total", ">", 0.1, window=120.0,
                      for_=60.0, detector="composite:PreemptionsRising")
    assert translate(rule).expr == "rate(gpuwarden_preemptions_total[2m]) > 0.1"


# --- promtool -----------------------------------------------------------------------------


@pytest.mark.prometheus
@needs_promtool
def test_export_of_defaults_passes_promtool_check(tmp_path: Path) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(render(default_rules()))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
@needs_promtool
def test_promtool_unit_tests_of_default_rules(tmp_path: Path) -> None:
    (tmp_path / "rules.yml").write_text(render(default_rules()))
    tests = sorted(HERE.glob("*.promtest.yml"))
    assert tests
    for test in tests:
        shutil.copy(test, tmp_path / test.name)
    result = promtool("test", "rules", *(t.name for t in tests), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.prometheus
@needs_promtool
def test_recording_rules_and_scrape_config_pass_promtool() -> None:
    prom = REPO / "dashboards" / "prometheus"
    result = promtool("check", "rules", str(prom / "recording-rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    result = promtool("check", "config", str(prom / "scrape-config.example.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_spread_detector_over_utilisation_is_the_spread() -> None:
    rule = RuleConfig("Spread", "gpu_utilization_ratio", ">", 0.15, window=120.0,
                      detector="spread")
    assert translate(rule).expr == by_name()["GPUUtilizationSpread"]
    odd = translate(RuleConfig("S", "gpu_power_watts", ">", 50.0, detector="variance"))
    assert odd.expr is None and "only GPU utilisation spread" in (odd.note or "")


def test_summaries_become_prometheus_templates() -> None:
    from gpuwarden.detectors.defaults import DEFAULT_RULES

    rules = {r.name: r for r in DEFAULT_RULES}
    text = render([rules["KVCacheNearFull"], rules["XIDError"]])
    assert ("KV cache {{ $value | humanizePercentage }} on {{ $labels.server }} "
            "({{ $labels.model }}) > 90%") in text
    assert "{server}" not in text and "{value" not in text
    assert translate(rules["XIDError"]).expr == "increase(gpuwarden_gpu_xid_errors_total[5m]) > 0"
