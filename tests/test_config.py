"""Config parsing and `gpuwarden check-config`: what an operator sees for each mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwarden.cli import main
from gpuwarden.config import load_config, parse_config
from gpuwarden.durations import format_duration, parse_duration
from gpuwarden.errors import ConfigError

FULL = """
node = "gpu-node-01"
interval = "1s"
listen = "127.0.0.1:9842"

[storage]
url = "sqlite:///var/lib/gpuwarden/gpuwarden.db"
retention = "7d"

[gpu]
source = "nvml"

[[servers]]
name = "vllm-0"
kind = "vllm"
metrics_url = "http://127.0.0.1:8000/metrics"
api_url = "http://127.0.0.1:8000"

[quality]
every = "1m"
canaries = "/etc/gpuwarden/canaries.jsonl"

[[rules]]
name = "KVCacheNearFull"
signal = "kv_cache_usage_ratio"
op = ">"
threshold = 0.90
clear = 0.85
for = "30s"
severity = "warning"
actions = ["oncall"]

[[rules]]
name = "TokenLatencyP95High"
signal = "itl_p95_seconds"
op = ">"
threshold = 0.130
window = "60s"
for = "30s"
actions = ["oncall"]

[[actions]]
name = "oncall"
type = "webhook"
url = "http://127.0.0.1:9000/hook"
secret_env = "GPUWARDEN_WEBHOOK_SECRET"
cooldown = "10m"
max_per_hour = 6
"""


def problems_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, "cfg.toml")
    return info.value.problems


def test_design_example_parses_with_typed_values() -> None:
    config = parse_config(FULL, "cfg.toml")
    assert config.node == "gpu-node-01"
    assert config.interval == 1.0
    assert config.storage.retention == 7 * 86400
    assert config.servers[0].kind == "vllm"
    assert config.servers[0].timeout == 2.0  # default below the interval's scale
    assert config.quality.every == 60.0
    kv, itl = config.rules
    assert (kv.threshold, kv.clear, kv.for_) == (0.90, 0.85, 30.0)
    assert itl.window == 60.0 and itl.signal == "itl_p95_seconds"
    assert config.actions[0].cooldown == 600.0 and config.actions[0].max_per_hour == 6


def test_config_is_frozen() -> None:
    config = parse_config(FULL)
    with pytest.raises(AttributeError):
        config.node = "other"  # type: ignore[misc]


def test_defaults_when_keys_absent(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    monkeypatch.chdir(tmp_path)
    config = parse_config("")
    assert config.interval == 1.0
    assert config.listen == "127.0.0.1:9842"
    assert config.gpu.source == "auto"
    assert config.storage.url == f"sqlite:///{tmp_path / 'gpuwarden.db'}"
    assert config.node  # the hostname


def test_state_directory_is_used_under_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/gpuwarden")
    assert parse_config("").storage.url == "sqlite:////var/lib/gpuwarden/gpuwarden.db"


def test_unknown_key_names_path_and_line() -> None:
    text = FULL.replace("threshold = 0.90", "treshold = 0.90")
    problems = problems_of(text)
    line = text.splitlines().index("treshold = 0.90") + 1
    assert any(p.startswith(f"cfg.toml:{line}: rules[0].treshold: unknown key") for p in problems)
    # the missing threshold is reported too, in the same run
    assert any("rules[0].threshold: required key is missing" in p for p in problems)


def test_unknown_top_level_table() -> None:
    assert any(p.endswith("storrage: unknown key (allowed: actions, api_token_env, gpu, "
                          "interval, listen, log_level, node, quality, rules, servers, storage)")
               for p in problems_of('[storrage]\nurl = "sqlite:///x.db"\n'))


@pytest.mark.parametrize("value", ['"1"', '"fast"', "1", '"10 parsecs"', '"-5s"'])
def test_bad_duration(value: str) -> None:
    problems = problems_of(f"interval = {value}\n")
    assert len(problems) == 1
    assert problems[0].startswith("cfg.toml:1: interval: ")


def test_wrong_types_name_key_path_of_array_item() -> None:
    text = FULL + '\n[[servers]]\nname = "sg"\nkind = "sglang"\nmetrics_url = 8000\n'
    problems = problems_of(text)
    assert any("servers[1].metrics_url: expected a string" in p for p in problems)
    line = text.splitlines().index("metrics_url = 8000") + 1
    assert any(p.startswith(f"cfg.toml:{line}:") for p in problems)


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[gpu]\nsource = "cuda"\n', "gpu.source: must be one of auto, nvml, dcgm, sim, off"),
        ('listen = "9842"\n', "listen: expected HOST:PORT"),
        ('[storage]\nurl = "mysql://root@localhost/x"\n', "unsupported database 'mysql'"),
        ('[storage]\nurl = "not a url"\n', "storage.url: not a database URL"),
        ('[storage]\nurl = "postgresql+psycopg2://u@h/db"\n', "must use the psycopg driver"),
        ('[[servers]]\nname = "a"\nkind = "vllm"\n', "servers[0].metrics_url: required key"),
        ('[[rules]]\nname = "X"\nsignal = "nope"\nthreshold = 1\n', "unknown signal 'nope'"),
        ('[[rules]]\nname = "X"\nsignal = "gpu_up"\nop = "=>"\nthreshold = 1\n',
         "rules[0].op: must be one of"),
        ('[[rules]]\nname = "X"\nsignal = "gpu_up"\nthreshold = 1\nactions = ["pager"]\n',
         "no action named 'pager'"),
        ('[[actions]]\nname = "x"\ntype = "exec"\n', "actions[0].command: required for type"),
        ('[[actions]]\nname = "x"\ntype = "webhook"\n', "actions[0].url: required"),
        ('interval = "1s"\ninterval = "2s"\n', "not valid TOML"),
    ],
)
def test_problem_messages(snippet: str, expected: str) -> None:
    assert any(expected in p for p in problems_of(snippet)), problems_of(snippet)


def test_disabling_a_default_rule_needs_only_its_name() -> None:
    config = parse_config('[[rules]]\nname = "GPUUtilizationSpread"\nenabled = false\n')
    assert config.rules[0].enabled is False


def test_check_config_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(FULL)
    assert main(["check-config", str(good)]) == 0
    assert "OK" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text('interval = "soon"\n[gpu]\nsource = 3\nbogus = 1\n')
    assert main(["check-config", str(bad)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 3  # one line per problem
    assert [ln.split(": ")[1] for ln in lines] == ["interval", "gpu.source", "gpu.bogus"]


def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "missing.toml")]) == 2
    assert "cannot read config file" in capsys.readouterr().err
    unreadable = tmp_path / "secret.toml"
    unreadable.write_text(FULL)
    unreadable.chmod(0)
    if os.access(unreadable, os.R_OK):  # root reads anything; use a directory instead
        unreadable = tmp_path
    assert main(["check-config", str(unreadable)]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_console_script_runs_check_config(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage]\nurl = "oracle://x"\n')
    proc = subprocess.run([sys.executable, "-m", "gpuwarden.cli", "check-config", str(bad)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2
    assert "storage.url" in proc.stderr


def test_load_config_none_gives_defaults() -> None:
    assert load_config(None).source_path is None


@given(st.integers(min_value=1, max_value=10**7))
def test_duration_format_round_trips(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


def test_duration_units() -> None:
    assert parse_duration("500ms") == 0.5
    assert parse_duration("1h30m") == 5400
    assert parse_duration("7d") == 604800


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[[rules]]\nname = "X"\nsignal = "kv_cache_usage_ratio"\ndetector = "magic"\n'
         'threshold = 1\n', "unknown detector 'magic'"),
        ('[[rules]]\nname = "X"\nsignal = "kv_cache_usage_ratio"\nthreshold = 0.9\n'
         'clear = 0.95\n', "clear"),
        ('[[rules]]\nname = "X"\nsignal = "kv_cache_usage_ratio"\ndetector = "trend"\n'
         'threshold = 1\nmin_points = 2\n', "min_points"),
    ],
)
def test_rule_semantics_are_config_errors(snippet: str, expected: str) -> None:
    problems = problems_of(snippet)
    assert any(p.startswith("cfg.toml") and "rules[0]" in p and expected in p
               for p in problems), problems


def test_rule_every_is_a_duration() -> None:
    config = parse_config('[[rules]]\nname = "X"\nsignal = "gpu_up"\nthreshold = 0\n'
                          'op = "=="\nevery = "1m"\n')
    assert config.rules[0].every == 60.0
