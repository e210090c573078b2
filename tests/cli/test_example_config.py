"""examples/gpuwarden.toml: valid as shipped, and its default-rules comments are the code's.

The starter config lists the default rules as comments so a newcomer reads the
thresholds next to the keys that change them. Comments drift from code silently, so
the list is parsed here (name, severity, actions, then the numbers in the condition
line) and compared with ``gpuwarden.detectors.defaults``: a default changed without
the example fails this test.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from gpuwarden.cli.rule_lines import condition, timing
from gpuwarden.detectors.defaults import DEFAULT_RULES, effective_rules
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.durations import parse_duration

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "gpuwarden.toml"

HEADER = re.compile(r"^#   (?P<name>\w+) \((?P<severity>\w+) -> (?P<actions>[^)]+)\)$")
DETAIL = re.compile(r"^#       (?P<text>\S.*)$")
NUMBER = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
DURATION = r"(\d+(?:\.\d+)?(?:ms|s|m|h|d))"
COMPARISON = re.compile(rf"(?<![<>=!])(>=|<=|==|!=|>|<) {NUMBER}(?![\w%])")


@dataclass(frozen=True)
class Listed:
    """One rule as the example's comments list it."""

    name: str
    severity: str
    actions: tuple[str, ...]
    condition: str


def listed_rules() -> list[Listed]:
    lines = EXAMPLE.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("# --- Default rules"))
    end = next(i for i, ln in enumerate(lines) if ln.startswith("# --- end of default rules"))
    out = []
    for i in range(start, end):
        header = HEADER.match(lines[i])
        if header is None:
            continue
        detail = DETAIL.match(lines[i + 1])
        assert detail is not None, f"no condition line under {lines[i]!r}"
        out.append(Listed(header["name"], header["severity"],
                          tuple(a.strip() for a in header["actions"].split(",")),
                          detail["text"]))
    return out


@pytest.fixture(scope="module")
def listed() -> dict[str, Listed]:
    rules = listed_rules()
    return {r.name: r for r in rules}


def test_check_config_accepts_the_example() -> None:
    proc = subprocess.run([sys.executable, "-m", "gpuwarden.cli.main", "check-config",
                           str(EXAMPLE)], capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    active = effective_rules(())
    assert f"{len(active)} rules active ({len(active)} default, 0 replaced, 0 added" \
        in proc.stdout
    assert "1 server, 1 action" in proc.stdout


def test_listed_rules_are_the_effective_defaults_in_order(listed: dict[str, Listed]) -> None:
    # The example's own [[rules]] are all commented out: its rule set is the defaults.
    assert [r.name for r in listed_rules()] == [r.name for r in effective_rules(())]


@pytest.mark.parametrize("rule", DEFAULT_RULES, ids=lambda r: r.name)
def test_listed_numbers_match_the_code(rule: RuleConfig, listed: dict[str, Listed]) -> None:
    entry = listed[rule.name]
    text = entry.condition
    assert entry.severity == rule.severity
    assert entry.actions == rule.actions

    comparisons = COMPARISON.findall(text)
    if rule.threshold is not None and rule.detector != "trend":  # a trend has a limit
        op, number = comparisons[0]
        assert float(number) == rule.threshold, text
        if rule.detector != "cusum":  # CUSUM breaches above h whatever the op (drift.py)
            assert op == rule.op, text
    resolves = re.search(rf"resolves at (?:>=|<=|>|<) {NUMBER}", text)
    assert (None if resolves is None else float(resolves[1])) == rule.clear, text
    held = re.search(rf", for {DURATION}", text)
    assert (0.0 if held is None else parse_duration(held[1])) == rule.for_, text
    kept = re.search(rf"keeps firing {DURATION}", text)
    assert (0.0 if kept is None else parse_duration(kept[1])) == rule.keep_firing_for, text
    for window in re.findall(rf"over (?:the )?{DURATION}", text):
        assert parse_duration(window) == rule.window, text
    if rule.detector == "trend":
        reach = re.search(rf"to {NUMBER} within {DURATION} .*>= (\d+) points", text)
        assert reach is not None, text
        assert (float(reach[1]), parse_duration(reach[2]), int(reach[3])) == (
            rule.limit, rule.horizon, rule.min_points)
    if rule.detector == "cusum":
        shift = re.search(rf"drop of {NUMBER}", text)
        assert shift is not None and float(shift[1]) == rule.limit, text


@pytest.mark.parametrize("rule", DEFAULT_RULES, ids=lambda r: r.name)
def test_listed_condition_is_what_check_config_prints(rule: RuleConfig,
                                                       listed: dict[str, Listed]) -> None:
    # Word for word, so the comments and `gpuwarden check-config` never disagree: after
    # changing a default, copy its line from `gpuwarden check-config examples/gpuwarden.toml`.
    assert listed[rule.name].condition == condition(rule) + timing(rule)
