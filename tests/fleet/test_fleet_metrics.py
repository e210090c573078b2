"""The fleet self-metrics the fleet dashboard reads, from a daemon on a real PostgreSQL.

``dashboards/gpuwarden-fleet.json`` reads ``gpuwarden_fleet_leader`` and
``gpuwarden_fleet_alerts``, which only a daemon in fleet mode exports (the SQLite daemon
of ``tests/daemon/test_counters_from_zero.py`` has none). Here one daemon on a fresh
database leads, exports every fleet rule's pending and firing count from 0, and counts a
node that went silent (a ``nodes`` row last written a minute ago) as NodeSilent firing.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine

from gpuwarden.collector.sim import SimulatedGpuCollector
from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.detectors.fleet_rules import DEFAULT_FLEET_RULE_NAMES
from gpuwarden.fleet.nodes import NodeBeat
from gpuwarden.tools.dashboards import FLEET_SELF_METRICS, PREFIX
from tests.daemon.test_counters_from_zero import by, wait_for
from tests.daemon.test_daemon import free_port

pytestmark = pytest.mark.postgres


def test_leader_and_fleet_alert_counts_are_exported(fleet_url: str, tmp_path: Path) -> None:
    port = free_port()
    config = parse_config(f'node = "n1"\ninterval = "200ms"\nlisten = "127.0.0.1:{port}"\n'
                          f'[storage]\nurl = "{fleet_url}"\n', "<test>")
    daemon = Daemon(config, collectors=[SimulatedGpuCollector("n1", 1, seed=1)])
    daemon.start()
    try:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        missing = {n for n in FLEET_SELF_METRICS if f"\n# TYPE {PREFIX}{n} " not in text}
        assert not missing, f"the fleet dashboard reads self-metrics /metrics lacks: {missing}"
        leading = wait_for(port, lambda m: m["gpuwarden_fleet_leader"][()] == 1.0)
        counts = by(leading["gpuwarden_fleet_alerts"], "alertname", "state")
        assert set(counts) == {(r, s) for r in DEFAULT_FLEET_RULE_NAMES
                               for s in ("pending", "firing")}
        assert set(counts.values()) == {0.0}

        engine = create_engine(fleet_url)
        try:  # a node whose last write is 60 of its intervals old
            NodeBeat(engine, "ghost", "0.1", 1.0, clock=lambda: time.time() - 60).beat()
        finally:
            engine.dispose()
        silent = wait_for(port, lambda m: m["gpuwarden_fleet_alerts"][
            (("alertname", "NodeSilent"), ("state", "firing"))] == 1.0)
        assert by(silent["gpuwarden_fleet_alerts"], "alertname", "state")[
            ("NodeStraggler", "firing")] == 0.0
    finally:
        daemon.shutdown()
