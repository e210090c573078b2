"""Every query of every generated dashboard returns data from a real Prometheus.

Why: a dashboard whose query names a metric or label the daemon does not export shows
"No data" and nothing fails, until someone needs it in an incident. Here gpuwarden runs
in-process on simulated GPUs with two simulated vLLM servers (and one dead server, so
scrape errors exist), the real Prometheus 2.42 scrapes its /metrics every second with
the recording rules and the exported alerting rules loaded, and then every panel,
variable and annotation query runs through Prometheus' HTTP API with the template
variables replaced by real values. Queries that cannot have data in this setup are
listed in :func:`expected_empty` with the reason; that list is checked both ways.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.tools import dashboards as d
from gpuwarden.tools import grafana
from gpuwarden.tools.demo import SimulatedVllmServer, SimulatedVllmState
from gpuwarden.tools.rules_export import render
from tests.daemon.test_daemon import free_port
from tests.promserver import PromServer, prometheus_binary, static_job
from tests.tools.test_rules_export import default_rules

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.slow,
    pytest.mark.skipif(prometheus_binary() is None,
                       reason="prometheus binary not installed (Debian package prometheus)"),
]

REPO = Path(__file__).resolve().parent.parent.parent
MIN_SCRAPES = 10
GRAFANA_MACROS = {"$__rate_interval": "30s", "$__interval": "5s", "$__range": "5m"}
LABEL_VALUES = re.compile(r"^label_values\((?P<expr>.+), (?P<label>\w+)\)$")


@dataclass
class Node:
    daemon: Daemon
    prom: PromServer


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    states = [SimulatedVllmState(f"llama-{i}", random.Random(i)) for i in range(2)]
    servers = [SimulatedVllmServer(s) for s in states]
    stop = threading.Event()

    def advance() -> None:  # the servers' histograms and counters keep moving
        while not stop.wait(0.25):
            for state in states:
                state.advance(0.25)

    mover = threading.Thread(target=advance, name="sim-advance", daemon=True)
    daemon: Daemon | None = None
    prom: PromServer | None = None
    try:
        for server in servers:
            server.start()
        mover.start()
        port = free_port()
        tables = "".join(f'[[servers]]\nname = "vllm-{i}"\nkind = "vllm"\n'
                         f'metrics_url = "{s.url}/metrics"\ngpus = [{i}]\n'
                         for i, s in enumerate(servers))
        config = parse_config(
            f'node = "e2e-node"\ninterval = "500ms"\nlisten = "127.0.0.1:{port}"\n'
            f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
            '[gpu]\nsource = "sim"\nsim_gpus = 2\n[cost]\ngpu_hour_usd = 2.5\n' + tables
            + '[[servers]]\nname = "dead"\nkind = "sglang"\n'
            f'metrics_url = "http://127.0.0.1:{free_port()}/metrics"\ntimeout = "100ms"\n'
            # A rule that fires at once, with an action that succeeds: alerts and actions.
            '[[rules]]\nname = "E2EKVCacheInUse"\nsignal = "kv_cache_usage_ratio"\n'
            'threshold = 0.05\nseverity = "info"\nactions = ["e2e-true"]\n'
            '[[actions]]\nname = "e2e-true"\ntype = "exec"\ncommand = ["true"]\n'
        )
        daemon = Daemon(config)
        daemon.start()
        # Quality scores as an application would push them (POST /api/v1/quality):
        # the quality panel then has data without a canary-capable server.
        for i, state in enumerate(states):
            pushed = requests.post(f"http://127.0.0.1:{port}/api/v1/quality", timeout=5,
                                   json={"server": f"vllm-{i}", "model": state.model,
                                         "score": 0.96})
            assert pushed.status_code == 202, pushed.text
        rules = tmp_path / "gpuwarden-alerts.yml"
        rules.write_text(render(default_rules()))
        prom = PromServer(
            tmp_path / "prom",
            scrape_configs=[static_job("gpuwarden", f"127.0.0.1:{port}")],
            extra_config={"rule_files": [
                str(REPO / "dashboards" / "prometheus" / "recording-rules.yml"), str(rules)]},
        ).start()
        yield Node(daemon, prom)
    finally:
        stop.set()
        if prom is not None:
            prom.stop()
        if daemon is not None:
            daemon.shutdown()
        for server in servers:
            server.stop()
        mover.join(timeout=5)


def expected_empty(body: str) -> dict[tuple[str, str], str]:
    """(dashboard uid, query) -> why it has no data in this setup.

    Decided from what the daemon exports (its own /metrics text), never from what
    Prometheus returned, so the check cannot excuse a broken query.
    """
    out: dict[tuple[str, str], str] = {}
    if "gpuwarden_quality_similarity{" not in body:
        out["gpuwarden-inference", "panel 'Answer quality (canary similarity)' A"] = (
            "no quality scores were pushed or measured")
    if "gpuwarden_gpu_utilization_spread_ratio{" not in body:
        out["gpuwarden-node", "panel \"Utilisation spread across the node's GPUs\" B"] = (
            "this daemon build does not export gpuwarden_gpu_utilization_spread_ratio yet")
    if "gpuwarden_alerts{" not in body:
        out["gpuwarden-fleet", "panel 'Firing alerts' A"] = (
            "no rule could be built (no detector registry in this build)")
        out["recording", "gpuwarden:alerts_firing:sum_by_node"] = "same reason"
    if "gpuwarden_delivery_queue_length" not in body:
        reason = "alert delivery is not wired into the daemon's /metrics in this build"
        out["gpuwarden-self", "panel 'Delivery queue' A"] = reason
        out["gpuwarden-self", "panel 'Dead letters' A"] = reason
    if "gpuwarden_fleet_leader" not in body:
        reason = "a SQLite store has no fleet mode (fleet metrics: tests/fleet/)"
        for title in ("Fleet leader", "Fleet alerts", "Silent nodes (NodeSilent firing)"):
            out["gpuwarden-fleet", f"panel {title!r} A"] = reason
    if "gpuwarden_actions_total{" not in body:
        out["gpuwarden-fleet", "panel 'Actions taken' A"] = "no action was called"
    return out


def wait_for_scrapes(prom: PromServer, deadline: float) -> None:
    while time.monotonic() < deadline:
        got = prom.query("count_over_time(gpuwarden_cycles_total[1m])")
        if got and float(got[0]["value"][1]) >= MIN_SCRAPES:
            return
        time.sleep(1.0)
    pytest.fail(f"fewer than {MIN_SCRAPES} scrapes in time: {prom.log_tail()}")


def substitute(expr: str, values: dict[str, str]) -> str:
    for macro, value in GRAFANA_MACROS.items():
        expr = expr.replace(macro, value)
    for name, value in sorted(values.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace(f"${name}", value)
    return expr


def label_values(prom: PromServer, query: str, values: dict[str, str]) -> list[str]:
    """Grafana's ``label_values(expr, label)``, run as PromQL."""
    m = LABEL_VALUES.match(query)
    assert m, query
    result = prom.query(f"group by ({m['label']}) ({substitute(m['expr'], values)})")
    return sorted(r["metric"][m["label"]] for r in result if m["label"] in r["metric"])


def resolve(prom: PromServer, variables: tuple[grafana.Variable, ...],
            values: dict[str, str]) -> dict[str, str]:
    """Pick, in order, the first value of each variable under which the later ones have
    values too (as a user would: the dead server has no model to choose)."""
    if not variables:
        return values
    best = values
    for candidate in label_values(prom, variables[0].query, values):
        chosen = resolve(prom, variables[1:], {**values, variables[0].name: candidate})
        if len(chosen) == len(values) + len(variables):
            return chosen
        best = max(best, chosen, key=len)
    return best


def test_every_dashboard_query_returns_data(node: Node) -> None:
    started = time.monotonic()
    wait_for_scrapes(node.prom, started + 40)
    body = node.daemon.metrics_body().decode()
    expected = expected_empty(body)
    empty: dict[tuple[str, str], str] = {}
    for dash in d.all_dashboards().values():
        values = resolve(node.prom, dash.variables, {})
        for var in dash.variables:
            if var.name not in values:
                empty[dash.uid, f"variable {var.name}"] = substitute(var.query, values)
        for where, expr in dash.queries():
            if where.startswith("variable "):
                continue
            query = substitute(expr, values)
            assert "$" not in query, query
            if not node.prom.query(query):
                empty[dash.uid, where] = query
    for record in re.findall(r"record: (\S+)", (REPO / "dashboards" / "prometheus"
                                                / "recording-rules.yml").read_text()):
        if not node.prom.query(record):
            empty["recording", record] = record

    for (uid, where), why in expected.items():  # shown with -s: what this run could not check
        print(f"expected empty: {uid} {where}: {why}")
    unexpected = {k: q for k, q in empty.items() if k not in expected}
    assert not unexpected, "queries with no data:\n" + "\n".join(
        f"  {uid} {where}: {q}" for (uid, where), q in unexpected.items())
    now_has_data = [k for k in expected if k not in empty]
    assert not now_has_data, f"expected-empty but returned data (update the list): {now_has_data}"

    groups = node.prom.api("rules")["groups"]
    bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"]
           if r.get("health") != "ok"]
    assert not bad, f"rules failing on real data: {bad}"
    assert {g["name"] for g in groups} == {"gpuwarden", "gpuwarden-fleet"}
    assert time.monotonic() - started < 60
