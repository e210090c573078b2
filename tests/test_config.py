"""Config parsing and `gpuwarden check-config`: what an operator sees for each mistake."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpuwarden.cli.main import main
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
    assert any(p.endswith("storrage: unknown key (allowed: actions, api_token_env, cost, gpu, "
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
        ('[[actions]]\nname = "x"\ntype = "slack"\n', "actions[0].url: required for type 'slack'"),
        ('[[actions]]\nname = "x"\ntype = "pagerduty"\n',
         "actions[0].routing_key_env: required for type 'pagerduty'"),
        ('[[actions]]\nname = "x"\ntype = "exec"\ncommand = []\n',
         "actions[0].command: required for type 'exec' (an argv list)"),
        ('[[actions]]\nname = "x"\ntype = "sms"\n', "actions[0].type: must be one of webhook, "
                                                     "alertmanager, pagerduty, slack, exec; got"),
        ('[[servers]]\nname = "a"\nkind = "ollama"\nmetrics_url = "http://h/metrics"\n',
         "servers[0].kind: must be one of vllm, sglang, tgi, triton, llamacpp; got 'ollama'"),
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
    proc = subprocess.run([sys.executable, "-m", "gpuwarden.cli.main", "check-config", str(bad)],
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


# --- ranges: what check-config accepts, run and SIGHUP must accept too ---------------------

_RULE = '[[rules]]\nname = "X"\nsignal = "kv_cache_usage_ratio"\nthreshold = 0.9\n'
_TREND = '[[rules]]\nname = "X"\nsignal = "kv_cache_usage_ratio"\ndetector = "trend"\nlimit = 1\n'
_SERVER = '[[servers]]\nname = "a"\nkind = "vllm"\nmetrics_url = "http://127.0.0.1:1/metrics"\n'
_ACTION = '[[actions]]\nname = "a"\ntype = "webhook"\nurl = "http://127.0.0.1:1/hook"\n'
# (table header or array item, key, key path, lowest accepted, highest accepted,
#  just below, just above): the README's Configuration reference, row by row.
RANGES = [
    ("", "interval", "interval", '"100ms"', '"1h"', '"99ms"', '"1h1s"'),
    ("[storage]\n", "retention", "storage.retention", '"1m"', '"3650d"', '"59s"', '"3651d"'),
    ("[gpu]\n", "sim_gpus", "gpu.sim_gpus", "1", "64", "0", "65"),
    ("[gpu]\n", "timeout", "gpu.timeout", '"100ms"', '"5m"', '"99ms"', '"5m1s"'),
    (_SERVER, "timeout", "servers[0].timeout", '"100ms"', '"5m"', '"0s"', '"301s"'),
    ("[quality]\n", "every", "quality.every", '"1s"', '"1d"', '"999ms"', '"25h"'),
    ("[quality]\n", "timeout", "quality.timeout", '"100ms"', '"5m"', '"50ms"', '"6m"'),
    (_RULE, "for", "rules[0].for", '"0s"', '"7d"', None, '"7d1s"'),
    (_RULE, "keep_firing_for", "rules[0].keep_firing_for", '"0s"', '"7d"', None, '"8d"'),
    (_RULE, "window", "rules[0].window", '"1s"', '"7d"', '"999ms"', '"2w"'),
    (_RULE, "every", "rules[0].every", '"0s"', '"1d"', None, '"1d1s"'),
    (_TREND, "horizon", "rules[0].horizon", '"1s"', '"7d"', '"500ms"', '"7d1m"'),
    (_TREND, "min_points", "rules[0].min_points", "3", "100000", "-1", "100001"),
    (_ACTION, "timeout", "actions[0].timeout", '"100ms"', '"1h"', '"10ms"', '"61m"'),
    (_ACTION, "cooldown", "actions[0].cooldown", '"0s"', '"7d"', None, '"7d1s"'),
    (_ACTION, "verify", "actions[0].verify", '"0s"', '"7d"', None, '"1w1d"'),
    (_ACTION, "group_wait", "actions[0].group_wait", '"0s"', '"7d"', None, '"30d"'),
    (_ACTION, "retry_for", "actions[0].retry_for", '"0s"', '"7d"', None, '"8d"'),
    (_ACTION, "max_per_hour", "actions[0].max_per_hour", "0", "100000", "-1", "100001"),
]


@pytest.mark.parametrize("case", RANGES, ids=[r[2] for r in RANGES])
def test_documented_ranges(case: tuple[str, str, str, str, str, str | None, str]) -> None:
    table, key, path, low, high, below, above = case
    for ok in (low, high):
        parse_config(f"{table}{key} = {ok}\n", "cfg.toml")
    line = table.count("\n") + 1
    for bad in (below, above):
        if bad is None:
            continue
        found = problems_of(f"{table}{key} = {bad}\n")
        assert len(found) == 1, found
        assert found[0].startswith(f"cfg.toml:{line}: {path}: "), found
        assert "must be between" in found[0] or "bad duration" in found[0], found


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        # The SRE's crash cases: each once passed check-config and then killed `run`.
        ('interval = "999999999999999999999d"\n',
         "cfg.toml:1: interval: bad duration '999999999999999999999d': longer than 100 years"),
        ("[gpu]\nsim_gpus = 9223372036854775807\n",
         "cfg.toml:2: gpu.sim_gpus: must be between 1 and 64, got 9223372036854775807"),
        (_RULE.replace("0.9", "inf"), "cfg.toml:4: rules[0].threshold: must be a finite number, "
                                      "got inf"),
        (_RULE.replace("0.9", "1e400"), "cfg.toml:4: rules[0].threshold: must be a finite "
                                        "number, got inf"),
        (_RULE + "clear = nan\n", "cfg.toml:5: rules[0].clear: must be a finite number, got nan"),
        (_TREND.replace("limit = 1", "limit = -inf"), "rules[0].limit: must be a finite number"),
        (_RULE.replace("0.9", "1" + "0" * 400), "rules[0].threshold: must be a finite number, "
                                                "got 1000000000000000000000000000000000000000..."),
        (f'interval = "{"9" * 400}s"\n', "longer than 100 years"),
        ('listen = "127.0.0.1:99999999999999999999"\n', "listen: expected HOST:PORT"),
        ('listen = "127.0.0.1:65536"\n', "listen: port 65536 out of range"),
        (_RULE + 'labels = { "team-a" = "x" }\n', "rules[0].labels: label name 'team-a' is not"),
        (_ACTION + 'headers = { "X-A" = "1\\r\\nX-B: 2" }\n',
         "actions[0].headers: header 'X-A': the value has a line break"),
        (_ACTION + 'headers = { "X A" = "1" }\n', "actions[0].headers: header name 'X A'"),
    ],
)
def test_values_that_crashed_run_are_config_errors(snippet: str, expected: str) -> None:
    found = problems_of(snippet)
    assert len(found) == 1, found
    assert expected in found[0], found


def test_threshold_is_not_reported_missing_when_it_is_invalid() -> None:
    found = problems_of(_RULE.replace("0.9", "inf"))
    assert not any("required key is missing" in p for p in found), found


@pytest.mark.parametrize(
    "text",
    ["x = " + "9" * 5000 + "\n", "x = " + "[" * 5000 + "]" * 5000 + "\n"],
    ids=["5000-digit integer", "arrays nested 5000 deep"],
)
def test_toml_the_parser_cannot_hold_is_a_config_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    proc = subprocess.run([sys.executable, "-m", "gpuwarden.cli.main", "check-config", str(path)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"{path}: not valid TOML: "), proc.stderr


def test_durations_never_overflow() -> None:
    for text in ("999999999999999999999d", "9" * 400 + "s", "1" * 10_000 + "w", "36501d"):
        with pytest.raises(ValueError, match="longer than 100 years"):
            parse_duration(text)
    assert parse_duration("36500d") == 36500 * 86400


# --- summary templates: rendered at check time with the fields the alert will have ---------


@pytest.mark.parametrize(
    ("rule", "template", "expected"),
    [
        (_RULE, "KV {value:.2f on {server", "bad template 'KV {value:.2f on {server': unmatched"),
        (_RULE, "KV on {servr}", "{servr} is not a field of this rule's alerts (fields: "
                                 "alertname, model, node, server, severity, value, threshold"),
        (_RULE, "KV {value:%Q}", "bad template"),
        (_RULE, "KV {value:d}", "Unknown format code 'd'"),
        (_RULE, "KV {0}", "bad template"),
        (_RULE, "KV {}", "bad template"),
        (_RULE, "KV {server.upper.x}", "bad template"),
        (_RULE, "{value:99999999999}", "wider than 999"),
        (_RULE, "{gpu} is full", "{gpu} is not a field"),  # a server signal has no gpu
        (_TREND, "forecast {threshold:.0%}", "{threshold:.0%}: this rule sets no threshold"),
        ('[[rules]]\nname = "S"\nsignal = "gpu_utilization_ratio"\ndetector = "spread"\n'
         "threshold = 0.2\n", "straggler {gpu}", "{gpu} is not a field"),
    ],
)
def test_broken_summary_template_is_a_config_error(rule: str, template: str,
                                                   expected: str) -> None:
    found = problems_of(f"{rule}summary = '{template}'\n")
    line = rule.count("\n") + 1
    assert len(found) == 1, found
    assert found[0].startswith(f"cfg.toml:{line}: rules[0].summary: "), found
    assert expected in found[0], found


@pytest.mark.parametrize(
    ("rule", "template"),
    [
        (_RULE, "KV {value:.0%} on {server} ({model}) > {threshold:.0%} {clear} {window:g}"),
        (_RULE + 'labels = { team = "infra" }\n', "{team}: {alertname} {severity} on {node}"),
        (_TREND, "{rule}: full in {value:.0f} s (limit {limit:g}, horizon {horizon:.0f} s)"),
        (_RULE, "literal {{braces}} and {value!r:>10}"),
        ('[[rules]]\nname = "E"\nsignal = "gpu_ecc_errors_total"\ndetector = "increase"\n'
         "threshold = 0\n", "{type} ECC errors on GPU {gpu} ({uuid}, {model})"),
    ],
)
def test_good_summary_templates_pass_and_render_alike(rule: str, template: str) -> None:
    from gpuwarden.detectors import Finding
    from gpuwarden.detectors.defaults import render_summary
    from gpuwarden.detectors.validate import alert_label_names

    config = parse_config(f"{rule}summary = '{template}'\n", "cfg.toml")
    parsed = config.rules[0]
    labels = {name: name.upper() for name in alert_label_names(parsed)}
    text = render_summary(parsed, Finding(tuple(labels.items()), 0.25), labels)
    assert text == template.format_map({**labels, "value": 0.25, "threshold": parsed.threshold,
                                        "clear": parsed.clear, "limit": parsed.limit,
                                        "horizon": parsed.horizon, "window": parsed.window,
                                        "rule": parsed.name})


def test_default_rules_summaries_pass_the_check() -> None:
    from gpuwarden.detectors.defaults import DEFAULT_RULES
    from gpuwarden.detectors.validate import summary_problem

    assert {r.name: summary_problem(r) for r in DEFAULT_RULES if summary_problem(r)} == {}


def test_a_detector_name_is_checked_at_its_key() -> None:
    """Against the detector table, without importing a detector (as a server kind is)."""
    found = problems_of('[[rules]]\nname = "X"\nsignal = "gpu_up"\nthreshold = 0\n'
                        'detector = "composite:Nope"\n')
    assert found == ["cfg.toml:5: rules[0].detector: unknown composite 'Nope' (known: "
                     "KVCacheBottleneck, KVCapacityTooSmall, PreemptionsRising, "
                     "PrefixCacheHitFalling, QueueGrowing)"]


def test_the_readme_reference_names_every_key_and_the_registries_choices() -> None:
    """The README's Configuration reference: every key the parser takes, and the GPU
    sources, server kinds, action types and detectors the registries hold."""
    from gpuwarden.alerts.receivers.registry import RECEIVERS
    from gpuwarden.collector.registry import GPU_SOURCES, SERVER_KINDS
    from gpuwarden.config import ARRAYS, SECTIONS, TOP
    from gpuwarden.detectors.registry import DETECTORS

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    reference = readme.split("## Configuration reference", 1)[1].split("\n## ", 1)[0]
    keys = set(TOP) | {key for schema in (*SECTIONS.values(), *ARRAYS.values()) for key in schema}
    assert {key for key in keys if not re.search(rf"`{key}`|^{key} =", reference, re.M)} == set()

    def choices(key: str) -> list[str]:
        line = re.search(rf"^{key} = .*# (?:required: )?(.*)$", reference, re.M)
        assert line is not None, key
        return [word.split()[0] for word in line[1].split(" | ")]

    assert choices("source") == ["auto", *GPU_SOURCES.names(), "off"]
    assert choices("kind") == list(SERVER_KINDS.names())
    assert choices("type") == list(RECEIVERS.names())
    listed = re.findall(r"`([a-z]+)`", reference.split("`detector` (", 1)[1].split(")", 1)[0])
    assert listed and set(listed) <= set(DETECTORS.names())
    assert any(name.startswith("composite:") for name in DETECTORS.names())


# --- [cost] and the servers' gpus (the memory budget, collector/memory_budget.py) -----------

def test_cost_is_one_price_for_the_node_or_a_price_per_gpu_model() -> None:
    assert parse_config("").cost.gpu_hour_usd is None
    assert parse_config("[cost]\ngpu_hour_usd = 2\n").cost.gpu_hour_usd == 2.0
    table = parse_config('[cost.gpu_hour_usd]\n"NVIDIA H100 80GB HBM3" = 3.9\n'
                         '"NVIDIA L4" = 0\n').cost.gpu_hour_usd
    assert table == (("NVIDIA H100 80GB HBM3", 3.9), ("NVIDIA L4", 0.0))


@pytest.mark.parametrize(("snippet", "expected"), [
    ("[cost]\ngpu_hour_usd = -0.5\n",
     "cfg.toml:2: cost.gpu_hour_usd: must not be negative, got -0.5"),
    ("[cost]\ngpu_hour_usd = inf\n", "cfg.toml:2: cost.gpu_hour_usd: must be a finite number"),
    ('[cost]\ngpu_hour_usd = "3.9"\n',
     "cfg.toml:2: cost.gpu_hour_usd: expected a price per GPU hour (a number) or a table"),
    ('[cost.gpu_hour_usd]\n"NVIDIA A100-SXM4-80GB" = nan\n',
     "cost.gpu_hour_usd: 'NVIDIA A100-SXM4-80GB': must be a finite number, got nan"),
    ('[cost.gpu_hour_usd]\n"NVIDIA L4" = -1\n',
     "cost.gpu_hour_usd: 'NVIDIA L4': must not be negative, got -1"),
    ('[cost.gpu_hour_usd]\n"NVIDIA L4" = true\n',
     "cost.gpu_hour_usd: 'NVIDIA L4': expected a number, got a boolean"),
    ("[cost]\ngpu_hour = 2\n", "cfg.toml:2: cost.gpu_hour: unknown key (allowed: gpu_hour_usd)"),
])
def test_bad_cost_is_a_config_error_at_its_key(snippet: str, expected: str) -> None:
    found = problems_of(snippet)
    assert len(found) == 1, found
    assert expected in found[0], found


def test_a_servers_gpus_are_indexes_or_mig_instances_spelled_as_the_gpu_label() -> None:
    config = parse_config(_SERVER + 'gpus = [0, "1", "0/5", 12]\n')
    assert config.servers[0].gpus == ("0", "1", "0/5", "12")
    assert parse_config(_SERVER).servers[0].gpus == ()


@pytest.mark.parametrize(("gpus", "expected"), [
    ('"0"', "expected a list of GPU indexes, got a string"),
    ("[-1]", "-1 is not a GPU index"),
    ('["gpu0"]', "'gpu0' is not a GPU index"),
    ('["0/"]', "'0/' is not a GPU index"),
    ('["01"]', "'01' is not a GPU index"),
    ("[0.5]", "expected GPU indexes"),
    ("[true]", "expected GPU indexes"),
    ('[0, "0"]', "GPU '0' is listed twice"),
])
def test_bad_gpus_are_a_config_error_at_their_key(gpus: str, expected: str) -> None:
    found = problems_of(_SERVER + f"gpus = {gpus}\n")
    assert len(found) == 1, found
    assert found[0].startswith("cfg.toml:5: servers[0].gpus: "), found
    assert expected in found[0], found
