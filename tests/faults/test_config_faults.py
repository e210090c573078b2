"""What ``check-config`` accepts, ``run`` and SIGHUP accept (issue 11, fault 2).

Configs are generated, valid and invalid (each key: in range, out of range, huge,
negative, inf/nan, the wrong type, broken summary templates), and the test asserts
what an operator relies on:

* rejected: ``parse_config`` raises ``ConfigError`` (never anything else) whose lines
  name exactly the keys that were given a bad value, one line each; ``check-config``
  and ``run`` exit 2 saying so, without a traceback;
* accepted: the daemon starts, cycles, stores samples, and a reload to another
  generated config is applied (accepted) or refused (rejected) while the old one keeps
  running; it then stops cleanly (exit 0 on SIGTERM).

Starting processes is slow, so (a) the property runs in-process over ``Daemon`` with a
SQLite store (dozens of examples), and (b) real ``gpuwarden`` processes get the crash
configs of the issue and a few generated ones, with real SIGHUP and SIGTERM.
"""

from __future__ import annotations

import json
import math
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gpuwarden.config import ARRAYS, SECTIONS, TOP, Config, load_config, parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.errors import ConfigError
from gpuwarden.storage import open_store
from tests.daemon.test_daemon import Proc, free_port

NODE = "fault-node"
MS, S, M, H, D = 0.001, 1.0, 60.0, 3600.0, 86400.0
# "file:line: key.path: what is wrong" (the line when it can be found), one line each.
PROBLEM = re.compile(r"^(?P<file>[^\n:]+)(?::\d+)?: (?P<key>[\w.\[\]-]+): (?P<what>[^\n]+)$")


# --- generated configs ---------------------------------------------------------------------


@dataclass
class Generated:
    """A config text and the key paths it gives a bad value, by validation stage."""

    lines: list[str] = field(default_factory=list)
    bad: set[str] = field(default_factory=set)  # type, range: reported together
    bad_templates: set[str] = field(default_factory=set)  # checked once the rest is valid

    def text(self, db: Path, listen: str = "127.0.0.1:0") -> str:
        tables = next((i for i, ln in enumerate(self.lines) if ln.startswith("[")),
                      len(self.lines))
        head = [f'node = "{NODE}"', f'listen = "{listen}"', *self.lines[:tables],
                "[storage]", f'url = "sqlite:///{db}"']
        return "\n".join(head + self.lines[tables:]) + "\n"

    @property
    def valid(self) -> bool:
        return not self.bad and not self.bad_templates


@dataclass(frozen=True)
class Values:
    """TOML values for one key, as written: in its range, and every way to miss it."""

    good: st.SearchStrategy[str]
    bad: st.SearchStrategy[str]


def durations(low: float, high: float) -> Values:
    units = [(u, size) for u, size in (("ms", MS), ("s", S), ("m", M), ("h", H), ("d", D))
             if math.floor(high / size) >= math.ceil(low / size)]
    good = st.sampled_from(units).flatmap(lambda us: st.integers(
        math.ceil(low / us[1]), math.floor(high / us[1])).map(lambda n: f'"{n}{us[0]}"'))
    bad = [
        st.integers(math.floor(high) + 1, 10**30).map(lambda n: f'"{n}s"'),
        st.sampled_from(['"999999999999999999999d"', '"' + "9" * 400 + 's"', '"-5s"', '"5"',
                         "5", '"1e5s"', '"inf s"', "true", '""', "1.5"]),
    ]
    if low > 0:
        bad.append(st.integers(0, math.ceil(low / MS) - 1).map(lambda n: f'"{n}ms"'))
    return Values(good, st.one_of(bad))


def integers(low: int, high: int) -> Values:
    bad = st.one_of(st.integers(high + 1, 2**63 - 1), st.integers(-(2**63), low - 1)).map(str)
    wrong = st.sampled_from(["9223372036854775807", "1" + "0" * 40, "1.5", '"4"', "true", "inf"])
    return Values(st.integers(low, high).map(str), st.one_of(bad, wrong))


def numbers() -> Values:
    good = st.one_of(st.floats(allow_nan=False, allow_infinity=False).map(repr),
                     st.integers(-(10**6), 10**6).map(str))
    bad = st.sampled_from(["inf", "-inf", "nan", "+nan", "1e400", "-1e999", "1" + "0" * 400,
                           '"0.9"', "true"])
    return Values(good, bad)


GPU_TEMPLATES = ["GPU {gpu} ({uuid}) {value:.0%} on {node}", "{alertname}/{severity}: {value:g}",
                 "{rule} > {threshold:g} over {window:.0f} s", "{model} {value!r:>12}"]
BAD_TEMPLATES = ["KV {value:.2f on {server", "{nope}", "{value:d}", "{0}", "{", "}",
                 "{value:%Q}", "{value:99999999999}", "{server} is full", "{value.nope}"]


@st.composite
def configs(draw: st.DrawFn, *, short_interval: bool = False) -> Generated:
    gen = Generated()
    # Half the configs are valid throughout (they start daemons); in the others each
    # key gets a bad value half the time, usually several at once.
    all_good = draw(st.booleans())

    def value(values: Values) -> tuple[str, bool]:
        ok = all_good or draw(st.booleans())
        return draw(values.good if ok else values.bad), ok

    def put(table: str, key: str, values: Values, optional: bool = True) -> tuple[str, bool]:
        if optional and not draw(st.booleans()):
            return "", True
        token, ok = value(values)
        gen.lines.append(f"{key} = {token}")
        if not ok:
            gen.bad.add(f"{table}.{key}" if table else key)
        return token, ok

    if short_interval:  # a real process must cycle within the test's patience
        gen.lines.append(f'interval = "{draw(st.integers(100, 300))}ms"')
    else:
        put("", "interval", durations(0.1, H))
    gen.lines += ["[gpu]", 'source = "sim"']
    put("gpu", "sim_gpus", integers(1, 64))
    put("gpu", "timeout", durations(0.1, 5 * M))
    gen.lines.append("[quality]")
    put("quality", "every", durations(1, D))
    put("quality", "timeout", durations(0.1, 5 * M))

    has_action = draw(st.booleans())
    if has_action:  # dry_run: audited, never sent
        gen.lines += ["[[actions]]", 'name = "hook"', 'type = "webhook"',
                      'url = "http://127.0.0.1:9/hook"', "dry_run = true"]
        put("actions[0]", "timeout", durations(0.1, H))
        for key in ("cooldown", "verify", "group_wait", "retry_for"):
            put("actions[0]", key, durations(0, 7 * D))
        put("actions[0]", "max_per_hour", integers(0, 100_000))

    for i in range(draw(st.integers(0, 2))):
        table = f"rules[{i}]"
        trend = draw(st.booleans())
        signal_name = draw(st.sampled_from(
            ["gpu_utilization_ratio", "gpu_temperature_celsius", "gpu_up"]))
        gen.lines += ["[[rules]]", f'name = "Generated{i}"', f'signal = "{signal_name}"']
        if has_action:
            gen.lines.append('actions = ["hook"]')
        if trend:
            gen.lines.append('detector = "trend"')
            put(table, "limit", numbers(), optional=False)
            put(table, "horizon", durations(1, 7 * D))
            # 2 is in the key's range but too few for a trend (a rule-level problem)
            points = integers(3, 100_000)
            put(table, "min_points", Values(points.good, points.bad.filter(lambda v: v != "2")))
        else:
            threshold, ok = put(table, "threshold", numbers(), optional=False)
            if ok and draw(st.booleans()):
                gen.lines.append(f"clear = {threshold}")  # hysteresis may equal the threshold
        put(table, "for", durations(0, 7 * D))
        put(table, "keep_firing_for", durations(0, 7 * D))
        put(table, "window", durations(1, 7 * D))
        put(table, "every", durations(0, D))
        if draw(st.booleans()):
            good = [t for t in GPU_TEMPLATES if not (trend and "threshold" in t)]
            template, ok = value(Values(st.sampled_from(good), st.sampled_from(BAD_TEMPLATES)))
            gen.lines.append(f"summary = '{template}'")
            if not ok:
                gen.bad_templates.add(f"{table}.summary")
    return gen


def named_keys(problems: list[str], path: Path) -> set[str]:
    keys = set()
    for line in problems:
        m = PROBLEM.match(line)
        assert m is not None, f"not one 'file:line: key: what' line: {line!r}"
        assert m["file"] == str(path), line
        keys.add(m["key"])
    return keys


def assert_rejected_for_the_right_keys(gen: Generated, path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    named = named_keys(info.value.problems, path)
    # Type and range problems are all reported at once; the templates are rendered once
    # everything else is valid (they need the rule as it will run).
    assert named == (gen.bad or gen.bad_templates), info.value.problems


def toml_value(value: object) -> str:
    """``value`` as a TOML literal (inline tables and arrays nest)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's, but for DEL (TOML wants it escaped) and astral
        # characters (JSON's surrogate pairs are not Unicode scalars: left unescaped).
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    assert isinstance(value, dict)
    return "{" + ", ".join(f"{toml_value(k)} = {toml_value(v)}" for k, v in value.items()) + "}"


ANY_VALUE = st.recursive(
    st.one_of(st.booleans(), st.integers(), st.floats(), st.text(max_size=20),
              st.sampled_from(["30s", "0s", "1e400s", "http://127.0.0.1:1/x", "sim", "{value"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)
KEYS = [("", key) for key in TOP] + [
    (f"[{name}]", key) for name, schema in SECTIONS.items() for key in schema
] + [(f"[[{name}]]", key) for name, schema in ARRAYS.items() for key in schema]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), ANY_VALUE), min_size=1, max_size=6))
def test_any_value_at_any_key_is_parsed_or_a_config_error(
    entries: list[tuple[tuple[str, str], object]],
) -> None:
    """Whatever a key is given (any type, any size, nested), the parser answers with the
    config or with ConfigError lines; never another exception (a traceback)."""
    tables: dict[str, dict[str, object]] = {}
    for (table, key), value in entries:  # one header per table, one line per key: valid TOML
        tables.setdefault(table, {})[key] = value
    text = "".join(
        (f"{table}\n" if table else "") + "".join(f"{k} = {toml_value(v)}\n" for k, v in kv.items())
        for table, kv in sorted(tables.items())  # "" (the top level) first
    )
    try:
        parse_config(text, "cfg.toml")
    except ConfigError as exc:
        assert exc.problems
        assert all("\n" not in p and p.startswith("cfg.toml") for p in exc.problems)
        event("not valid TOML" if "not valid TOML" in exc.problems[0] else "config error")
    else:
        event("accepted")


# --- (a) in-process: parse, start, cycle, reload, stop ------------------------------------


def samples_stored(db: Path) -> int:
    store = open_store(f"sqlite:///{db}", node=NODE)
    try:
        return sum(len(s) for s in store.query("gpu_up", None, 0, time.time() + 60))
    finally:
        store.close()


def same_except_kept(running: Config, loaded: Config) -> bool:
    """The reloaded config is the file's, except listen and storage (restart only)."""
    for name in Config.__dataclass_fields__:
        if name not in ("listen", "storage") and getattr(running, name) != getattr(loaded, name):
            return False
    return True


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=configs(), second=configs())
def test_accepted_configs_run_and_reload_in_process(first: Generated, second: Generated) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db, path = Path(tmp) / "gw.db", Path(tmp) / "gw.toml"
        path.write_text(first.text(db))
        event(f"first {'accepted' if first.valid else 'rejected'}")
        if not first.valid:
            assert_rejected_for_the_right_keys(first, path)
            return
        event(f"reload {'applied' if second.valid else 'refused'}")
        config = load_config(path)
        daemon = Daemon(config)
        try:
            daemon.start()  # runs the first cycle
            daemon.run_cycle()
            assert daemon.cycles_total >= 2
            assert daemon.cycle_errors_total == 0

            path.write_text(second.text(db))
            assert daemon.reload() is second.valid
            if second.valid:
                assert same_except_kept(daemon.config, load_config(path))
            else:
                assert daemon.config is config
            before = daemon.cycles_total
            daemon.run_cycle()
            daemon.run_cycle()
            assert daemon.cycles_total >= before + 2
            assert daemon.cycle_errors_total == 0
        finally:
            daemon.shutdown()
        gpus = min(config.gpu.sim_gpus, daemon.config.gpu.sim_gpus)
        assert samples_stored(db) >= 4 * gpus


# --- (b) real processes, real signals --------------------------------------------------------


def base_config(db: Path, port: int, *, gpus: str = "2", interval: str = "200ms") -> str:
    return (f'node = "{NODE}"\ninterval = "{interval}"\nlisten = "127.0.0.1:{port}"\n'
            f'[storage]\nurl = "sqlite:///{db}"\n[gpu]\nsource = "sim"\nsim_gpus = {gpus}\n')


# The values of issue 11 that passed check-config and then crashed or wedged `run`:
# key -> the config around them.
CRASH_CASES: dict[str, Callable[[Path, int], str]] = {
    "interval": lambda db, port: base_config(db, port, interval="999999999999999999999d"),
    "gpu.sim_gpus": lambda db, port: base_config(db, port, gpus="9223372036854775807"),
    "rules[0].threshold": lambda db, port: base_config(db, port) + (
        '[[rules]]\nname = "X"\nsignal = "gpu_up"\nthreshold = inf\n'),
    "rules[1].threshold": lambda db, port: base_config(db, port) + (
        '[[rules]]\nname = "X"\nsignal = "gpu_up"\nthreshold = 1\n'
        '[[rules]]\nname = "Y"\nsignal = "gpu_up"\nthreshold = 1e400\n'),
    "rules[0].summary": lambda db, port: base_config(db, port) + (
        '[[rules]]\nname = "KVCacheNearFull"\nsignal = "kv_cache_usage_ratio"\n'
        'threshold = 0.9\nsummary = "KV {value:.2f on {server"\n'),
}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gpuwarden.cli.main", *args], capture_output=True,
                          text=True, timeout=60, check=False)


def assert_exit_2_naming(path: Path, keys: set[str]) -> None:
    """``check-config`` and ``run`` both refuse the file: exit 2, one line per key."""
    for args in (("check-config", str(path)), ("run", "--config", str(path))):
        proc = cli(*args)
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert named_keys(proc.stderr.strip().splitlines(), path) == keys, proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize("key", list(CRASH_CASES))
def test_crash_configs_exit_2_naming_the_key(key: str, tmp_path: Path) -> None:
    path, db = tmp_path / "gw.toml", tmp_path / "gw.db"
    path.write_text(CRASH_CASES[key](db, free_port()))
    assert_exit_2_naming(path, {key})
    assert not db.exists()  # refused before anything was stored


@pytest.fixture
def processes() -> Iterator[Callable[[Path, int, Path], Proc]]:
    started: list[Proc] = []

    def start(config: Path, port: int, log: Path) -> Proc:
        proc = Proc(config, port, log)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()  # by its own PID; a no-op for one that already exited


def cycles(proc: Proc) -> float:
    return proc.metrics().get("gpuwarden_cycles_total", [({}, 0.0)])[0][1]


def wait_cycles(proc: Proc, at_least: float, timeout: float = 20.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.popen.poll() is None, proc.log_path.read_text()
        got = cycles(proc)
        if got >= at_least:
            return got
        time.sleep(0.1)
    raise AssertionError(f"fewer than {at_least} cycles in {timeout} s:\n"
                         + proc.log_path.read_text())


def stop_within(proc: Proc, seconds: float) -> None:
    started = time.monotonic()
    assert proc.stop() == 0, proc.log_path.read_text()
    assert time.monotonic() - started < seconds


@pytest.mark.slow
def test_sighup_to_crash_configs_keeps_the_daemon_cycling(
    tmp_path: Path, processes: Callable[[Path, int, Path], Proc]
) -> None:
    port, db, path = free_port(), tmp_path / "gw.db", tmp_path / "gw.toml"
    path.write_text(base_config(db, port))
    proc = processes(path, port, tmp_path / "daemon.log")
    proc.wait_healthy()
    seen = wait_cycles(proc, 2)
    for key, crash_config in CRASH_CASES.items():
        path.write_text(crash_config(db, port))
        proc.popen.send_signal(signal.SIGHUP)
        wait_for_log(proc, key, "config reload rejected")
        seen = wait_cycles(proc, seen + 3)  # still cycling on the old config
        assert requests.get(proc.url("/healthz"), timeout=2).status_code == 200
    # ...and a valid reload after all that is still applied.
    path.write_text(base_config(db, port, gpus="3"))
    proc.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 20
    while {lab["gpu"] for lab, _ in proc.metrics().get("gpuwarden_gpu_up", [])} != {"0", "1", "2"}:
        assert time.monotonic() < deadline, proc.log_path.read_text()
        time.sleep(0.1)
    wait_cycles(proc, seen + 3)
    stop_within(proc, 10.0)
    assert "Traceback" not in proc.log_path.read_text()


def wait_for_log(proc: Proc, key: str, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = proc.log_path.read_text()
        if any(text in ln and f": {key}: " in ln for ln in log.splitlines()):
            return
        assert proc.popen.poll() is None, log
        time.sleep(0.1)
    raise AssertionError(f"no {text!r} naming {key} in the log:\n" + proc.log_path.read_text())


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=configs(short_interval=True), second=configs(short_interval=True))
def test_generated_configs_as_real_processes(first: Generated, second: Generated) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port, db, path = free_port(), Path(tmp) / "gw.db", Path(tmp) / "gw.toml"
        path.write_text(first.text(db, f"127.0.0.1:{port}"))
        event(f"first {'accepted' if first.valid else 'rejected'}")
        if not first.valid:
            assert_exit_2_naming(path, first.bad or first.bad_templates)
            return
        event(f"reload {'applied' if second.valid else 'refused'}")
        assert cli("check-config", str(path)).returncode == 0
        proc = Proc(path, port, Path(tmp) / "daemon.log")
        try:
            proc.wait_healthy()
            seen = wait_cycles(proc, 2)
            path.write_text(second.text(db, f"127.0.0.1:{port}"))
            proc.popen.send_signal(signal.SIGHUP)
            outcome = "config reloaded" if second.valid else "config reload rejected"
            deadline = time.monotonic() + 20
            while outcome not in proc.log_path.read_text():
                assert time.monotonic() < deadline and proc.popen.poll() is None, \
                    proc.log_path.read_text()
                time.sleep(0.1)
            wait_cycles(proc, seen + 3)
            stop_within(proc, 10.0)
        finally:
            proc.kill()
