"""``gpuwarden backtest --fleet`` on a real PostgreSQL: the fleet rules replayed over two
nodes' stored samples, as the leader would have evaluated them.

Two nodes serve one model and write through their own stores (``open_store(url,
node=...)``), one cut into chunks and one still in the head log; node-b's GPUs drop to
a third of node-a's load halfway through. With a one-minute ``NodeStraggler`` window,
the replay must fire it once, for node-b, after the drop; ``NodeSilent`` is named as not
replayable; the node backtest (no ``--fleet``) keeps to the node's rules and points to
``--fleet`` when asked for a fleet rule.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path

import pytest

from gpuwarden.cli.main import main
from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import open_store

pytestmark = pytest.mark.postgres

INTERVAL = 5.0
CYCLES = 40  # 200 s of history at 5 s
DROP_AT = 20  # node-b straggles from this cycle on
STRAGGLER = """
[[rules]]
name = "NodeStraggler"
scope = "fleet"
signal = "gpu_utilization_ratio"
detector = "fleet:NodeStraggler"
op = ">"
threshold = 0.15
clear = 0.10
window = "60s"
for = "20s"
labels = { scope = "fleet" }
"""


def _write(url: str, node: str, start: float, *, straggles: bool, cut: bool) -> None:
    store = open_store(url, node=node)
    try:
        for i in range(CYCLES):
            util = 0.3 if straggles and i >= DROP_AT else 0.9
            ts = start + i * INTERVAL
            store.write([
                Sample("gpu_utilization_ratio",
                       make_labels(node=node, gpu=str(g), uuid=f"{node}-{g}"), util, ts)
                for g in range(2)
            ] + [Sample("kv_cache_usage_ratio", make_labels(node=node, server="s", model="m"),
                        0.5, ts)])
        if cut:
            store.flush()
    finally:
        store.close()


def _config(tmp_path: Path, url: str) -> str:
    path = tmp_path / "fleet.toml"
    path.write_text(f'node = "ops"\ninterval = "{INTERVAL:g}s"\n[storage]\nurl = "{url}"\n'
                    + STRAGGLER)
    return str(path)


def _ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def test_fleet_rules_replayed_over_every_nodes_samples(
        fleet_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    start = time.time() - CYCLES * INTERVAL
    _write(fleet_url, "node-a", start, straggles=False, cut=True)
    _write(fleet_url, "node-b", start, straggles=True, cut=False)
    config = _config(tmp_path, fleet_url)

    assert main(["backtest", "--fleet", "--since", "5m", "--json", "--config", config]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["scope"] == "fleet"
    rules = {r["rule"]: r for r in doc["rules"]}
    assert set(rules) == {"ModelLatencyP95High", "NodeStraggler", "FleetKVHeadroomLow"}
    straggler = rules["NodeStraggler"]
    assert straggler["fired"] == 1 and straggler["still_firing"] == 1
    assert straggler["errors"] == 0
    # Not before node-b's GPUs dropped, and within the window plus `for` after it.
    dropped = start + DROP_AT * INTERVAL
    assert dropped + 20 <= _ts(straggler["first_fired"][0]) <= dropped + 60 + 20 + INTERVAL
    assert rules["FleetKVHeadroomLow"]["fired"] == 0  # 50 % in use
    assert "NodeSilent" in doc["skipped"]

    assert main(["backtest", "--fleet", "--since", "5m", "--config", config]) == 0
    text = capsys.readouterr().out
    assert text.splitlines()[0].startswith("backtest fleet rules over every node's samples")
    row = next(line for line in text.splitlines() if line.startswith("NodeStraggler"))
    assert row.split()[1:3] == ["warning", "1"] and "still firing" in row
    assert "NodeSilent: not replayed" in text


def test_which_node_the_straggler_names(fleet_url: str, tmp_path: Path) -> None:
    from gpuwarden.config import load_config
    from gpuwarden.tools.backtest import run_fleet_backtest

    now = time.time()
    start = now - CYCLES * INTERVAL
    _write(fleet_url, "node-a", start, straggles=False, cut=False)
    _write(fleet_url, "node-b", start, straggles=True, cut=True)
    result = run_fleet_backtest(load_config(_config(tmp_path, fleet_url)), 300.0, now=now,
                                rule="NodeStraggler")
    fired = [e.alert.label_map for e in result.events if e.kind.value == "firing"]
    assert [(a["alertname"], a["node"], a["model"]) for a in fired] == [
        ("NodeStraggler", "node-b", "m")]


def test_node_backtest_points_to_fleet_and_sqlite_refuses_it(
        fleet_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = _config(tmp_path, fleet_url)
    assert main(["backtest", "--rule", "NodeStraggler", "--config", config]) == 2
    assert "NodeStraggler is a fleet rule: add --fleet" in capsys.readouterr().err
    sqlite = tmp_path / "one.toml"
    sqlite.write_text(f'node = "n"\n[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n')
    assert main(["backtest", "--fleet", "--config", str(sqlite)]) == 2
    err = capsys.readouterr().err
    assert "fleet mode needs a shared PostgreSQL store" in err and len(err.splitlines()) == 1
