"""Three ``gpuwarden run`` processes, one PostgreSQL: a fleet as an SRE runs it.

Each daemon has its node name, two simulated GPUs and one simulated vLLM serving the
same model on loopback; all write into one fresh database on the local PostgreSQL and
deliver to one loopback webhook. Node ``c``'s GPUs idle at a fifth of the others' load
(a straggler), and at a point every server's inter-token latency grows (a model-wide
regression). What is asserted is what the on-call would see:

* ``NodeStraggler`` (node c) and ``ModelLatencyP95High`` (the model) each reach the
  webhook once, from the one leader;
* the leader is SIGKILLed: another daemon leads within two intervals plus the pass
  that notices, ``NodeSilent`` fires for the killed node, and neither fleet alert is
  sent again (the new leader continued their state) nor lost;
* the killed node restarts, its samples are never duplicated, and ``NodeSilent``
  resolves, once.

Fleet rules get short windows here (10 s, ``for`` 2 s) so that the test takes about
a minute; the defaults' windows are minutes.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import create_engine

from gpuwarden.fleet.nodes import read_nodes
from gpuwarden.fleet.source import FleetSource
from gpuwarden.tools.demo import SimulatedVllmServer, SimulatedVllmState
from tests.alerts.conftest import Recorder
from tests.faults.daemon_proc import DaemonProc, wait_for
from tests.faults.pgcluster import free_port

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

INTERVAL = 0.5
MODEL = "fleet-model-8b"
FLEET_RULES = """
[[rules]]
name = "ModelLatencyP95High"
scope = "fleet"
signal = "itl_p95_seconds"
detector = "fleet:ModelQuantile"
op = ">"
threshold = 0.13
clear = 0.12
window = "10s"
for = "2s"
labels = { scope = "fleet" }
actions = ["notify"]

[[rules]]
name = "NodeStraggler"
scope = "fleet"
signal = "gpu_utilization_ratio"
detector = "fleet:NodeStraggler"
op = ">"
threshold = 0.15
clear = 0.10
window = "10s"
for = "2s"
labels = { scope = "fleet" }
actions = ["notify"]

[[rules]]
name = "TokenLatencyP95High"
enabled = false
"""


class Node:
    """One daemon process with its simulated server, restartable with the same config."""

    def __init__(self, workdir: Path, url: str, name: str, load: float, webhook: str) -> None:
        self.name = name
        self.state = SimulatedVllmState(model=MODEL, rng=random.Random(name))
        self.server = SimulatedVllmServer(self.state)
        self.server.start()
        self.port = free_port()
        self.config = workdir / f"{name}.toml"
        self.config.write_text(
            f'node = "{name}"\ninterval = "{INTERVAL}s"\nlisten = "127.0.0.1:{self.port}"\n'
            f'[storage]\nurl = "{url}"\n'
            f'[gpu]\nsource = "sim"\nsim_gpus = 2\nsim_load = {load}\n'
            f'[[servers]]\nname = "vllm-0"\nkind = "vllm"\n'
            f'metrics_url = "{self.server.url}/metrics"\ngpus = ["0", "1"]\n'
            f'[[actions]]\nname = "notify"\ntype = "webhook"\nurl = "{webhook}"\n'
            + FLEET_RULES)
        self.workdir = workdir
        self.proc: DaemonProc | None = None
        self.runs = 0

    def start(self) -> DaemonProc:
        self.runs += 1
        log = self.workdir / f"{self.name}-{self.runs}.log"
        self.proc = DaemonProc(self.config, self.port, log)
        return self.proc

    def leads(self) -> bool:
        if self.proc is None or not self.proc.alive():
            return False
        try:
            return self.proc.metric("gpuwarden_fleet_leader") == 1.0
        except Exception:  # not answering yet
            return False


@pytest.fixture
def fleet(tmp_path: Path, fleet_url: str) -> Iterator[tuple[list[Node], Recorder]]:
    webhook = Recorder()
    nodes = [Node(tmp_path, fleet_url, name, load, webhook.url)
             for name, load in (("node-a", 0.85), ("node-b", 0.85), ("node-c", 0.15))]
    stop = threading.Event()

    def drive() -> None:  # the servers' counters advance as a live vLLM's do
        while not stop.wait(0.25):
            for node in nodes:
                node.state.advance(0.25)

    driver = threading.Thread(target=drive, daemon=True)
    driver.start()
    try:
        yield nodes, webhook
    finally:
        stop.set()
        for node in nodes:
            if node.proc is not None:
                node.proc.kill()
            node.server.stop()
        webhook.close()
        driver.join(5)


def _fleet_notices(webhook: Recorder) -> list[tuple[str, str, dict[str, Any]]]:
    """(alertname, status, labels) of every fleet alert the webhook received."""
    out = []
    for request in webhook.delivered():
        for alert in request.json()["alerts"]:
            labels = alert["labels"]
            if labels.get("scope") == "fleet":
                out.append((labels["alertname"], alert["status"], labels))
    return out


def _count(webhook: Recorder, name: str, status: str, **labels: str) -> int:
    return sum(1 for n, s, lab in _fleet_notices(webhook)
               if n == name and s == status and all(lab.get(k) == v for k, v in labels.items()))


def test_fleet_rules_fire_once_fail_over_and_the_dead_node_is_noticed(
        fleet: tuple[list[Node], Recorder], fleet_url: str) -> None:
    nodes, webhook = fleet
    a, b, c = nodes
    a.start().wait_healthy(60)
    wait_for(a.leads, 30, "node-a leads, being the only daemon")
    b.start()
    c.start()
    for node in (b, c):
        assert node.proc is not None
        node.proc.wait_healthy(60)
    # The straggler is seen once the 10 s window holds all three nodes and `for` passed.
    wait_for(lambda: _count(webhook, "NodeStraggler", "firing", node="node-c") >= 1, 60,
             "NodeStraggler fires for node-c")
    assert not b.leads() and not c.leads()

    for node in nodes:  # a model-wide regression: every server's ITL to ~250 ms
        with node.state.lock:
            node.state.itl_base = 0.25
    wait_for(lambda: _count(webhook, "ModelLatencyP95High", "firing", model=MODEL) >= 1, 60,
             "ModelLatencyP95High fires for the model")

    # The leader dies without a word.
    assert a.proc is not None
    a.proc.popen.send_signal(signal.SIGKILL)
    a.proc.popen.wait(10)
    killed_at = time.monotonic()
    wait_for(lambda: b.leads() or c.leads(), 15, "another daemon leads")
    took_over = time.monotonic() - killed_at
    # Two intervals, plus the up-to-one-interval wait of the next pass and the /metrics
    # poll that sees it (SIGKILL closes the socket: the server frees the lock at once).
    assert took_over <= 2 * INTERVAL + INTERVAL + 1.5, took_over
    wait_for(lambda: _count(webhook, "NodeSilent", "firing", node="node-a") >= 1, 30,
             "NodeSilent fires for the killed node-a")

    # Both fleet alerts kept firing across the failover: not sent again, not resolved.
    time.sleep(4 * INTERVAL)
    counts = Counter((n, s, lab.get("node", lab.get("model")))
                     for n, s, lab in _fleet_notices(webhook))
    assert counts[("NodeStraggler", "firing", "node-c")] == 1, counts
    assert counts[("ModelLatencyP95High", "firing", MODEL)] == 1, counts
    assert counts[("NodeStraggler", "resolved", "node-c")] == 0, counts
    assert counts[("NodeSilent", "firing", "node-a")] == 1, counts

    # node-a comes back: it writes again, NodeSilent resolves once, nothing duplicated.
    a.start().wait_healthy(60)
    wait_for(lambda: _count(webhook, "NodeSilent", "resolved", node="node-a") >= 1, 30,
             "NodeSilent resolves for node-a")
    time.sleep(4 * INTERVAL)
    assert _count(webhook, "NodeSilent", "resolved", node="node-a") == 1
    assert _count(webhook, "NodeSilent", "firing", node="node-a") == 1
    assert not a.leads()  # the new leader stays leader

    engine = create_engine(fleet_url)
    try:
        series = FleetSource(engine, time.time).query("gpu_up", {"node": "node-a"})
    finally:
        engine.dispose()
    assert len(series) == 2
    for s in series:
        assert len(s) > 10
        assert np.unique(s.timestamps).size == s.timestamps.size  # no sample twice
    for node in nodes:
        assert node.proc is not None
        assert node.proc.alive(), node.proc.log_text()[-2000:]

    # A clean stop is not silence: the row says stopped, NodeSilent leaves it alone.
    assert c.proc is not None and c.proc.stop() == 0
    engine = create_engine(fleet_url)
    try:
        with engine.connect() as conn:
            rows = {row.node: row for row in read_nodes(conn)}
    finally:
        engine.dispose()
    stopped = rows["node-c"]
    assert stopped.stopped_at is not None and stopped.stopped_at >= stopped.last_write_at
    time.sleep(6 * INTERVAL)
    assert _count(webhook, "NodeSilent", "firing", node="node-c") == 0
