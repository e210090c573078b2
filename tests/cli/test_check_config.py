"""``gpuwarden check-config FILE``: the effective rule set, as the daemon will run it.

What an operator checks before deploying: how many rules are active (the defaults
count too), which of them the file replaced, added or switched off, and for each one
the signal, condition, threshold and ``for`` it will fire on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpuwarden.cli.main import main
from gpuwarden.detectors.defaults import DEFAULT_RULES

DEFAULT_COUNT = len(DEFAULT_RULES)

CONFIG = """\
node = "n1"
[gpu]
source = "sim"
[[servers]]
name = "vllm-0"
kind = "vllm"
metrics_url = "http://127.0.0.1:8000/metrics"
[[actions]]
name = "oncall"
type = "webhook"
url = "http://127.0.0.1:9000/hook"
[[rules]]
name = "KVCacheNearFull"
signal = "kv_cache_usage_ratio"
op = ">"
threshold = 0.95
clear = 0.9
for = "1m"
severity = "critical"
actions = ["oncall"]
[[rules]]
name = "GPUUtilizationSpread"
enabled = false
[[rules]]
name = "HotGPU"
signal = "gpu_temperature_celsius"
op = ">"
threshold = 85
aggregation = "mean"
window = "2m"
for = "5m"
keep_firing_for = "10m"
"""


def check(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    path = tmp_path / "gpuwarden.toml"
    path.write_text(text)
    assert main(["check-config", str(path)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    return captured.out.splitlines()


def rule_line(lines: list[str], name: str) -> list[str]:
    """The words of the one line naming the rule (origin first)."""
    (found,) = [ln for ln in lines[2:] if ln.split()[1:2] == [name]]
    return found.split()


def test_counts_defaults_overrides_additions_and_disables(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = check(tmp_path, CONFIG, capsys)
    assert lines[0].endswith(": OK (node n1, 1 server, 1 action)")
    # 3 [[rules]] entries: one replaces a default, one switches one off, one is new.
    active = DEFAULT_COUNT - 1 + 1
    assert lines[1] == (f"{active} rules active ({DEFAULT_COUNT - 2} default, 1 replaced, "
                        "1 added; 1 off):")
    listed = [ln.split()[0] for ln in lines[2:]]
    assert listed.count("default") == DEFAULT_COUNT - 2
    assert listed.count("replaced") == listed.count("added") == listed.count("off") == 1
    assert len(lines) == 2 + active + 1  # one line per active rule, then the one off
    assert rule_line(lines, "GPUUtilizationSpread") == ["off", "GPUUtilizationSpread"]


def test_each_line_says_what_the_rule_does(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    lines = check(tmp_path, CONFIG, capsys)
    replaced = " ".join(rule_line(lines, "KVCacheNearFull"))
    assert replaced == ("replaced KVCacheNearFull critical kv_cache_usage_ratio > 0.95 "
                        "(resolves at <= 0.9), for 1m -> oncall")
    added = " ".join(rule_line(lines, "HotGPU"))
    assert added == ("added HotGPU warning mean of gpu_temperature_celsius over 2m > 85, "
                     "for 5m, keeps firing 10m -> no action (shown only)")
    # A default whose action the file does not define is shown, not acted on.
    latency = " ".join(rule_line(lines, "TokenLatencyP95High"))
    assert latency == ("default TokenLatencyP95High critical itl_p95_seconds over 1m > 0.13 "
                       "(resolves at <= 0.12), for 30s -> warm-restart (no such action: "
                       "shown only)")
    trend = " ".join(rule_line(lines, "KVCacheSaturationSoon"))
    assert "kv_cache_usage_ratio forecast to rise to 1 within 5m" in trend


def test_no_rules_in_the_file_lists_every_default(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    lines = check(tmp_path, '[gpu]\nsource = "off"\n', capsys)
    assert lines[0].endswith(", 0 servers, 0 actions)")  # node: the hostname
    assert lines[1] == f"{DEFAULT_COUNT} rules active ({DEFAULT_COUNT} default, 0 replaced, " \
                       "0 added; 0 off):"
    assert [ln.split()[1] for ln in lines[2:]] == [r.name for r in DEFAULT_RULES]


def test_every_default_switched_off(tmp_path: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    text = "".join(f'[[rules]]\nname = "{r.name}"\nenabled = false\n' for r in DEFAULT_RULES)
    lines = check(tmp_path, text, capsys)
    assert lines[1] == f"0 rules active (0 default, 0 replaced, 0 added; {DEFAULT_COUNT} off):"
    assert all(ln.split()[0] == "off" for ln in lines[2:])


def test_invalid_file_still_exits_2_with_one_line_per_problem(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[[rules]]\nname = "X"\nsignal = "nope"\nthreshold = 1\nfor = "soon"\n')
    assert main(["check-config", str(path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    problems = captured.err.strip().splitlines()
    assert [p.split(": ")[1] for p in problems] == ["rules[0].for", "rules[0].signal"]


def test_a_postgresql_store_lists_the_fleet_rules_its_leader_will_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = ('node = "n1"\n[storage]\nurl = "postgresql+psycopg://gw@db.example/gw"\n'
            '[[rules]]\nname = "NodeStraggler"\nenabled = false\n'
            '[[rules]]\nname = "MineFleetWide"\nscope = "fleet"\n'
            'signal = "kv_cache_usage_ratio"\nop = ">"\nthreshold = 0.5\n')
    lines = check(tmp_path, text, capsys)
    head = next(i for i, ln in enumerate(lines) if "fleet rules (evaluated once" in ln)
    assert "MineFleetWide" not in "\n".join(lines[:head])  # not in this node's own engine
    assert lines[head].startswith("4 fleet rules")
    assert [ln.split()[1] for ln in lines[head + 1:]] == [
        "NodeSilent", "ModelLatencyP95High", "FleetKVHeadroomLow", "MineFleetWide"]
    assert "node_silence_intervals > 3" in lines[head + 1]


def test_a_sqlite_store_lists_no_fleet_rules(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = check(tmp_path, 'node = "n1"\n[storage]\nurl = "sqlite:////tmp/gw.db"\n', capsys)
    assert not any("fleet rule" in ln for ln in lines)
