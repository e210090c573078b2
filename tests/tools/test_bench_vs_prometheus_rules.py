"""The Prometheus side of ``python -m bench vs-prometheus``: its rules must be valid, and
must read series that the recorded payload has, or the comparison would time a
Prometheus that evaluates nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bench.bench_daemon import PAYLOAD
from bench.bench_vs_prometheus import RULES, prometheus_rules, window_signal_rules
from tests.tools.test_rules_export import needs_promtool, promtool

#: What the recorded vLLM 0.32 CPU server does not export: it runs without a draft model.
NOT_IN_PAYLOAD = {"vllm:spec_decode_num_accepted_tokens_total",
                  "vllm:spec_decode_num_draft_tokens_total"}


def read_metrics(rules: str) -> set[str]:
    """The vLLM metric names the rules' expressions select."""
    exprs = re.findall(r"expr: (.*(?:\n {6}.*)*)", rules)
    return {name for expr in exprs for name in re.findall(r"vllm:[a-z0-9_]+", expr)}


def payload_metrics() -> set[str]:
    return {line.split("{")[0].split(" ")[0]
            for line in PAYLOAD.read_text().splitlines() if line.startswith("vllm:")}


@pytest.mark.prometheus
@needs_promtool
@pytest.mark.parametrize("window_signals", [False, True])
def test_the_rules_pass_promtool(tmp_path: Path, window_signals: bool) -> None:
    path = tmp_path / "rules.yml"
    path.write_text(prometheus_rules(window_signals))
    result = promtool("check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    count = 8 + (23 if window_signals else 0)  # the alert rules, then the recording rules
    assert f"SUCCESS: {count} rules found" in result.stdout


def test_the_rules_read_what_the_payload_has() -> None:
    alert = read_metrics(RULES)
    recording = read_metrics(window_signal_rules())
    # Six latency histograms (their quantiles) and two length histograms (the p95s).
    assert len({m for m in recording if m.endswith("_bucket")}) == 8
    assert alert - payload_metrics() == set()
    assert recording - payload_metrics() == NOT_IN_PAYLOAD
