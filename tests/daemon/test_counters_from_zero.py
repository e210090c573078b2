"""Every counter whose label sets are known from the config is on /metrics at 0 from the
daemon's first answer: each configured server with each scrape-error reason, each
collector's errors, each rule's errors, each kind of alert transition, each configured
action with each result it can count (and ``no_action`` for an action a rule names but
the config lacks). A Grafana ``increase(...)`` panel then shows 0, not "No data", and
the first failure is an increase from 0 rather than a series appearing at 1. A reload
that adds or removes a server, an action or a rule changes the set.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.collector.sim import SimulatedGpuCollector
from gpuwarden.config import load_config, parse_config
from gpuwarden.daemon import wiring
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.detectors.defaults import effective_rules
from gpuwarden.storage.store import Store
from gpuwarden.tools.dashboards import FLEET_SELF_METRICS, PREFIX, SELF_METRICS
from gpuwarden.tools.demo import SimulatedVllmServer, SimulatedVllmState
from tests.alerts.conftest import Recorder
from tests.daemon.test_daemon import free_port

#: The reasons the README lists for ``gpuwarden_scrape_errors_total`` of a server.
SERVER_REASONS = {"refused", "timeout", "connection", "truncated", "http_status", "oversize",
                  "parse", "parse_timeout", "bad_url"}
#: What a webhook action can be counted with (README, "Self-metrics").
WEBHOOK_RESULTS = {"sent", "failed", "dead_letter", "suppressed", "superseded", "disabled"}
DRY_RUN_RESULTS = {"dry_run", "failed", "suppressed", "superseded"}
ALERTMANAGER_RESULTS = WEBHOOK_RESULTS | {"resent", "resend_failed"}
#: The actions the default rules name (``notify`` ...), none configured here.
DEFAULT_ACTIONS = {"notify", "warm-restart", "checkpoint-rollback"}

Series = dict[tuple[tuple[str, str], ...], float]


def parse(text: str) -> dict[str, Series]:
    """Sample name -> {sorted label pairs: value}."""
    out: dict[str, Series] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def get(port: int) -> dict[str, Series]:
    return parse(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)


def by(series: Series, *names: str) -> dict[tuple[str, ...], float]:
    """The series keyed by the values of ``names`` (each series has exactly these labels)."""
    out = {}
    for labels, value in series.items():
        have = dict(labels)
        assert set(have) == set(names), labels
        out[tuple(have[n] for n in names)] = value
    return out


def wait_for(port: int, check: Callable[[dict[str, Series]], bool],
             timeout: float = 10.0) -> dict[str, Series]:
    deadline = time.monotonic() + timeout
    metrics = get(port)
    while not check(metrics):
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)
        metrics = get(port)
    return metrics


def server_tables(servers: dict[str, str]) -> str:
    return "".join(f'[[servers]]\nname = "{name}"\nkind = "vllm"\nmetrics_url = "{url}"\n'
                   'timeout = "300ms"\n' for name, url in servers.items())


def action_tables(recorder_url: str) -> str:
    return ('[[actions]]\nname = "oncall"\ntype = "webhook"\n'
            f'url = "{recorder_url}/hook"\n'
            '[[actions]]\nname = "rehearsal"\ntype = "webhook"\ndry_run = true\n'
            f'url = "{recorder_url}/dry"\n'
            '[[actions]]\nname = "am"\ntype = "alertmanager"\n'
            f'url = "{recorder_url}/am"\n')


@pytest.fixture
def vllm() -> Iterator[list[SimulatedVllmServer]]:
    servers = [SimulatedVllmServer(SimulatedVllmState(f"llama-{i}", random.Random(i)))
               for i in range(2)]
    for server in servers:
        server.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()


@pytest.fixture
def hook() -> Iterator[Recorder]:
    recorder = Recorder()
    try:
        yield recorder
    finally:
        recorder.close()


def test_first_answer_has_every_known_counter_at_zero_and_a_failed_scrape_rises_from_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, vllm: list[SimulatedVllmServer],
        hook: Recorder) -> None:
    port = free_port()
    head = (f'node = "n1"\ninterval = "200ms"\nlisten = "127.0.0.1:{port}"\n'
            f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
            '[gpu]\nsource = "sim"\nsim_gpus = 1\n'
            '[[rules]]\nname = "GPUHot"\nsignal = "gpu_temperature_celsius"\nop = ">"\n'
            'threshold = 200\nactions = ["oncall", "rehearsal", "am"]\n')
    urls = {f"vllm-{i}": f"{s.url}/metrics" for i, s in enumerate(vllm)}
    path = tmp_path / "gw.toml"
    path.write_text(head + server_tables(urls) + action_tables(hook.url))
    config = load_config(path)
    rules = {r.name for r in effective_rules(config.rules)}
    assert "GPUHot" in rules and len(rules) > 10

    # The very first answer: served while the store opens, before the rules and
    # delivery are up (tests/daemon/test_early_metrics.py).
    early: list[str] = []
    real_open = wiring.open_store

    def open_store(cfg: object) -> Store:
        early.append(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        return real_open(config)

    monkeypatch.setattr(wiring, "open_store", open_store)
    daemon = Daemon(config)
    daemon.start()
    try:
        started = get(port)
        assert len(early) == 1
        for answer in (parse(early[0]), started):
            errors = by(answer["gpuwarden_scrape_errors_total"], "collector", "reason")
            assert errors == {(f"server:{name}", reason): 0.0
                              for name in urls for reason in SERVER_REASONS}
            assert by(answer["gpuwarden_collector_errors_total"], "collector") == {
                ("sim",): 0.0, ("server:vllm-0",): 0.0, ("server:vllm-1",): 0.0}
            assert by(answer["gpuwarden_rule_errors_total"], "rule") == {
                (name,): 0.0 for name in rules}
            assert by(answer["gpuwarden_alert_events_total"], "kind") == {
                ("firing",): 0.0, ("resolved",): 0.0}
            actions = by(answer["gpuwarden_actions_total"], "action", "result")
            assert actions == {
                **{("oncall", r): 0.0 for r in WEBHOOK_RESULTS},
                **{("rehearsal", r): 0.0 for r in DRY_RUN_RESULTS},
                **{("am", r): 0.0 for r in ALERTMANAGER_RESULTS},
                **{(a, "no_action"): 0.0 for a in DEFAULT_ACTIONS}}

        # A scrape fails: vllm-1 now points at a loopback port nobody listens on.
        urls["vllm-1"] = f"http://127.0.0.1:{free_port()}/metrics"
        path.write_text(head + server_tables(urls) + action_tables(hook.url))
        assert daemon.reload()
        after = wait_for(port, lambda m: m["gpuwarden_scrape_errors_total"][
            (("collector", "server:vllm-1"), ("reason", "refused"))] >= 1)
        errors = by(after["gpuwarden_scrape_errors_total"], "collector", "reason")
        assert set(errors) == {(f"server:{n}", r) for n in urls for r in SERVER_REASONS}
        assert errors[("server:vllm-1", "refused")] >= 1
        assert sum(errors.values()) == errors[("server:vllm-1", "refused")]
        assert by(after["gpuwarden_collector_errors_total"], "collector")[
            ("server:vllm-1",)] >= 1
    finally:
        daemon.shutdown()


def test_an_alert_counts_up_from_the_zeros_and_every_dashboard_self_metric_exists(
        tmp_path: Path, hook: Recorder) -> None:
    port = free_port()
    config = parse_config(
        f'node = "n1"\ninterval = "200ms"\nlisten = "127.0.0.1:{port}"\n'
        f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
        '[[rules]]\nname = "GPULost"\nsignal = "gpu_up"\nop = "=="\nthreshold = 0\n'
        'severity = "critical"\nactions = ["oncall"]\n'
        f'[[actions]]\nname = "oncall"\ntype = "webhook"\nurl = "{hook.url}/hook"\n',
        "<test>")
    gpus = SimulatedGpuCollector("n1", 2, seed=1)
    daemon = Daemon(config, collectors=[gpus])
    daemon.start()
    try:
        first = get(port)
        actions = by(first["gpuwarden_actions_total"], "action", "result")
        assert {r for (a, r) in actions if a == "oncall"} == WEBHOOK_RESULTS
        assert set(actions.values()) == {0.0}
        assert by(first["gpuwarden_alert_events_total"], "kind") == {
            ("firing",): 0.0, ("resolved",): 0.0}
        assert by(first["gpuwarden_rule_errors_total"], "rule")[("GPULost",)] == 0.0

        gpus.set_lost(1)
        hook.wait(1, timeout=5)
        after = wait_for(port, lambda m: m["gpuwarden_actions_total"][
            (("action", "oncall"), ("result", "sent"))] == 1)
        assert by(after["gpuwarden_alert_events_total"], "kind")[("firing",)] == 1.0
        actions = by(after["gpuwarden_actions_total"], "action", "result")
        assert set(actions) == {("oncall", r) for r in WEBHOOK_RESULTS} | {
            (a, "no_action") for a in DEFAULT_ACTIONS}
        assert actions[("oncall", "failed")] == 0.0
        # Every self-metric the dashboards query is declared (scrape_errors_total has
        # no series here: no server is configured), but fleet mode's: a SQLite store has
        # no fleet (tests/fleet/test_fleet_metrics.py checks those on PostgreSQL).
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        missing = {name for name in SELF_METRICS - FLEET_SELF_METRICS
                   if f"\n# TYPE {PREFIX}{name} " not in text}
        assert not missing, f"dashboards query self-metrics /metrics lacks: {missing}"
    finally:
        daemon.shutdown()


def test_a_reload_adds_and_removes_known_label_sets(tmp_path: Path,
                                                    vllm: list[SimulatedVllmServer],
                                                    hook: Recorder) -> None:
    port = free_port()
    head = (f'node = "n1"\ninterval = "200ms"\nlisten = "127.0.0.1:{port}"\n'
            f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
            '[gpu]\nsource = "sim"\nsim_gpus = 1\n')
    rule = ('[[rules]]\nname = "{}"\nsignal = "gpu_temperature_celsius"\nop = ">"\n'
            'threshold = 200\nactions = ["oncall"]\n')
    both = {f"vllm-{i}": f"{s.url}/metrics" for i, s in enumerate(vllm)}
    path = tmp_path / "gw.toml"
    path.write_text(head + rule.format("HotA") + server_tables(both)
                    + action_tables(hook.url))
    daemon = Daemon(load_config(path))
    daemon.start()
    try:
        before = get(port)
        assert ("HotA",) in by(before["gpuwarden_rule_errors_total"], "rule")
        # Reload: vllm-1, HotA and the dry-run and Alertmanager actions go, HotB comes.
        path.write_text(head + rule.format("HotB") + server_tables({"vllm-0": both["vllm-0"]})
                        + '[[actions]]\nname = "oncall"\ntype = "webhook"\n'
                        f'url = "{hook.url}/hook"\n')
        assert daemon.reload()
        after = wait_for(port, lambda m: (("rule", "HotB"),) in m["gpuwarden_rule_errors_total"]
                         and len(by(m["gpuwarden_actions_total"], "action", "result"))
                         == len(WEBHOOK_RESULTS) + len(DEFAULT_ACTIONS))
        errors = by(after["gpuwarden_scrape_errors_total"], "collector", "reason")
        assert errors == {("server:vllm-0", r): 0.0 for r in SERVER_REASONS}
        assert set(by(after["gpuwarden_collector_errors_total"], "collector")) == {
            ("sim",), ("server:vllm-0",)}
        rules = by(after["gpuwarden_rule_errors_total"], "rule")
        assert rules[("HotB",)] == 0.0 and ("HotA",) not in rules
        assert {a for a, _ in by(after["gpuwarden_actions_total"], "action", "result")} == {
            "oncall", *DEFAULT_ACTIONS}
    finally:
        daemon.shutdown()
