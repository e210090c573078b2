"""``gpuwarden fleet status`` on a real PostgreSQL: what an operator checks about a fleet.

Three nodes' rows written as their daemons write them (``NodeBeat``): one writing, one
silent for 12 of its intervals, one stopped cleanly; node alerts and fleet alerts as the
daemons persist them; node-b holding the leader lock. The text and the JSON must say
which node is which, what fires where, and who leads; a SQLite store, a database that
cannot be reached and one no daemon ever wrote are each one line and a non-zero exit.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from gpuwarden.alerts.alert import Alert, AlertState
from gpuwarden.alerts.state import AlertStateStore
from gpuwarden.cli.main import main
from gpuwarden.fleet.leader import Leadership
from gpuwarden.fleet.nodes import NodeBeat
from gpuwarden.storage import open_store, schema
from tests.faults.pgcluster import free_port

pytestmark = pytest.mark.postgres


def _config(tmp_path: Path, url: str) -> str:
    path = tmp_path / "ops.toml"
    path.write_text(f'node = "ops-laptop"\n[storage]\nurl = "{url}"\n')
    return str(path)


def _alert(name: str, state: AlertState, now: float, **labels: str) -> Alert:
    full = {"alertname": name, "severity": "critical", **labels}
    return Alert(name, tuple(sorted(full.items())), {"summary": f"{name} summary"}, state,
                 1.0, active_at=now - 30,
                 fired_at=now - 20 if state is AlertState.FIRING else None)


def _at(t: float) -> Callable[[], float]:
    return lambda: t


@pytest.fixture
def fleet(fleet_url: str) -> Iterator[Engine]:
    """The shared store as three nodes and a leader left it."""
    store = open_store(fleet_url, node="node-a")  # creates the tables, as a daemon does
    engine = store.engine
    now = time.time()
    beats = {}
    for node, interval, last, gpus, servers in (("node-a", 1.0, now, 8, 2),
                                                ("node-b", 5.0, now - 60, 4, 1),
                                                ("node-c", 1.0, now - 3600, 2, 0)):
        beat = NodeBeat(engine, node, f"0.9.{gpus}", interval, clock=_at(last))
        beat.gpus, beat.servers = gpus, servers
        beat.beat()
        beats[node] = beat
    beats["node-c"].stopped()
    AlertStateStore(engine, None).save([
        _alert("GPULost", AlertState.FIRING, now, node="node-a", gpu="3"),
        _alert("KVCacheNearFull", AlertState.PENDING, now, node="node-a", server="s"),
        _alert("TTFTP95High", AlertState.FIRING, now, node="node-b", server="s"),
    ], [], now)
    AlertStateStore(engine, None, schema.fleet_alerts).save([
        _alert("NodeSilent", AlertState.FIRING, now, node="node-b", scope="fleet"),
        _alert("NodeStraggler", AlertState.PENDING, now, node="node-a", model="m",
               scope="fleet"),
    ], [], now)
    leader = Leadership(engine, "node-b")
    assert leader.refresh()
    try:
        yield engine
    finally:
        leader.step_down()
        store.close()


def test_text_names_each_nodes_state_alerts_and_the_leader(
        fleet: Engine, fleet_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fleet", "status", "--config", _config(tmp_path, fleet_url)]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines()[2:5]}
    assert "leader: node-b" in out.splitlines()[0]
    a, b, c = lines["node-a"], lines["node-b"], lines["node-c"]
    assert a.split()[1:2] == ["writing"] and "0.9.8" in a and "GPULost" in a
    assert "KVCacheNearFull" not in a  # pending, not firing
    assert b.split()[1:3] == ["*", "silent"] and "12." in b and "TTFTP95High" in b
    assert c.split()[1] == "stopped" and b.split()[-1] != "-" and c.split()[-1] == "-"
    assert "firing   NodeSilent node=node-b [critical]" in out
    assert "pending  NodeStraggler model=m node=node-a" in out


def test_json_has_every_node_the_leader_and_the_fleet_alerts(
        fleet: Engine, fleet_url: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # With a password in the URL (trust auth ignores it): never printed.
    secret = make_url(fleet_url).set(password="s3cret").render_as_string(hide_password=False)
    assert main(["fleet", "status", "--json", "--config", _config(tmp_path, secret)]) == 0
    out = capsys.readouterr().out
    assert "s3cret" not in out
    doc = json.loads(out)
    assert set(doc) == {"store", "now", "leader", "silent_after_intervals", "nodes",
                        "fleet_alerts"}
    assert doc["leader"] == "node-b" and doc["silent_after_intervals"] == 3.0
    assert doc["store"].endswith(make_url(fleet_url).database)
    nodes = {n["node"]: n for n in doc["nodes"]}
    assert {n: v["state"] for n, v in nodes.items()} == {
        "node-a": "writing", "node-b": "silent", "node-c": "stopped"}
    assert {n: v["leader"] for n, v in nodes.items()} == {
        "node-a": False, "node-b": True, "node-c": False}
    b = nodes["node-b"]
    assert 60 <= b["last_write_age_seconds"] < 90
    assert 12 <= b["last_write_age_intervals"] < 18 and b["interval_seconds"] == 5.0
    assert (b["gpus"], b["servers"], b["version"]) == (4, 1, "0.9.4")
    assert nodes["node-c"]["stopped_at"] is not None and nodes["node-a"]["stopped_at"] is None
    assert [a["alertname"] for a in nodes["node-a"]["firing_alerts"]] == ["GPULost"]
    assert nodes["node-a"]["firing_alerts"][0]["labels"]["gpu"] == "3"
    assert [a["alertname"] for a in b["firing_alerts"]] == ["TTFTP95High"]
    assert nodes["node-c"]["firing_alerts"] == []
    fleet_alerts = {(a["alertname"], a["state"], a["labels"]["node"])
                    for a in doc["fleet_alerts"]}
    assert fleet_alerts == {("NodeSilent", "firing", "node-b"),
                            ("NodeStraggler", "pending", "node-a")}


def test_no_leader_is_said(fleet_url: str, tmp_path: Path,
                           capsys: pytest.CaptureFixture[str]) -> None:
    store = open_store(fleet_url, node="node-a")
    try:
        NodeBeat(store.engine, "node-a", "0.9", 1.0).beat()
        assert main(["fleet", "status", "--config", _config(tmp_path, fleet_url)]) == 0
    finally:
        store.close()
    out = capsys.readouterr().out
    assert "leader: none" in out and "fleet alerts: none firing or pending" in out


def test_sqlite_store_is_a_usage_error(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    assert main(["fleet", "status", "--config", _config(tmp_path, url)]) == 2
    err = capsys.readouterr().err
    assert "fleet mode needs a shared PostgreSQL store" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "gw.db").exists()


def test_unreachable_database_and_missing_tables_are_one_line_each(
        fleet_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A database no daemon ever wrote: the tables are not there.
    assert main(["fleet", "status", "--config", _config(tmp_path, fleet_url)]) == 1
    err = capsys.readouterr().err
    assert "no gpuwarden daemon has run on this store yet" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    # Nothing listens on this port: refused at once.
    away = make_url(fleet_url).set(port=free_port()).render_as_string(hide_password=False)
    assert main(["fleet", "status", "--config", _config(tmp_path, away)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("fleet status: cannot read the fleet from ")
    assert len(err.splitlines()) == 1 and "Traceback" not in err
