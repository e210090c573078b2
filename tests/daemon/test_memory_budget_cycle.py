"""The memory budget in the daemon's cycle, on the demo's simulated node: every GPU's
``gpu_memory_budget_bytes`` is stored with parts summing to its total, each demo server
is joined to its GPUs (``server_gpu_info``), the demo incident's foreign process lands in
``other_processes``, and a failing budget costs only its own samples."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from gpuwarden.collector import server_collector
from gpuwarden.collector.memory_budget import MemoryBudget
from gpuwarden.collector.sim import SimulatedGpuCollector
from gpuwarden.config import CostConfig, parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.model import Sample
from gpuwarden.tools.demo import (
    DEMO_GPUS,
    SimulatedVllmServer,
    SimulatedVllmState,
    build_incident,
    demo_gpus,
)
from tests.daemon.test_daemon import free_port

Node = tuple[Daemon, SimulatedGpuCollector, list[SimulatedVllmState]]


@pytest.fixture
def demo_node(tmp_path: Path) -> Iterator[Node]:
    """The demo's node as ``run_demo`` builds it: 8 simulated GPUs, two simulated vLLMs
    with their ``gpus``, and ``[cost]`` for the GPUs' model."""
    states = [SimulatedVllmState(f"demo-llama-{i}", random.Random(i)) for i in range(2)]
    servers = [SimulatedVllmServer(state) for state in states]
    for server in servers:
        server.start()
    tables = "".join(f'[[servers]]\nname = "vllm-{i}"\nkind = "vllm"\n'
                     f'metrics_url = "{s.url}/metrics"\n'
                     f"gpus = {list(demo_gpus(i, 2, DEMO_GPUS))}\n"
                     for i, s in enumerate(servers))
    config = parse_config(
        f'node = "demo-node"\nlisten = "127.0.0.1:{free_port()}"\n[storage]\n'
        f'url = "sqlite:///{tmp_path / "gw.db"}"\n[gpu]\nsource = "sim"\n'
        f'[cost.gpu_hour_usd]\n"NVIDIA H100 80GB HBM3 (simulated)" = 3.5\n' + tables)
    gpus = SimulatedGpuCollector(config.node, DEMO_GPUS)
    session = requests.Session()
    collectors = [gpus, *(server_collector(s, node=config.node, session=session)
                          for s in config.servers)]
    daemon = Daemon(config, collectors=collectors)
    daemon.start()
    try:
        yield daemon, gpus, states
    finally:
        daemon.shutdown()
        session.close()
        for server in servers:
            server.stop()


def budgets(samples: list[Sample]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        labels = dict(s.labels)
        out.setdefault(labels["gpu"], {})[labels["part"]] = s.value
    return out


def test_a_cycle_stores_whole_budgets_and_the_servers_gpus(demo_node: Node) -> None:
    daemon, _, states = demo_node
    for state in states:
        state.advance(1.0)
    daemon.cycle.run()
    store = daemon.store
    assert store is not None
    table = budgets(store.latest("gpu_memory_budget_bytes"))
    totals = {dict(s.labels)["gpu"]: s.value for s in store.latest("gpu_memory_total_bytes")}
    assert set(table) == {str(i) for i in range(DEMO_GPUS)}
    for gpu, parts in table.items():
        assert set(parts) == {"kv_cache", "server_other", "other_processes", "free"}
        assert sum(parts.values()) == totals[gpu]
        # vLLM's KV size per GPU, from its cache_config_info (4096 blocks x 16 x 128 KiB).
        assert parts["kv_cache"] == 4096 * 16 * 131072
        assert parts["server_other"] > 40e9  # the rest of the server's process
        assert parts["other_processes"] == 536 * 1048576  # the driver's reserved memory
    joined = {(dict(s.labels)["server"], dict(s.labels)["gpu"])
              for s in store.latest("server_gpu_info")}
    assert joined == {("vllm-0", g) for g in "0123"} | {("vllm-1", g) for g in "4567"}
    cost = {dict(s.labels)["gpu"]: s.value for s in store.latest("gpu_cost_per_hour_usd")}
    assert cost == {str(i): 3.5 for i in range(DEMO_GPUS)}
    body = daemon.metrics_body().decode()
    assert 'gpuwarden_gpu_memory_budget_bytes{' in body and 'part="kv_cache"' in body
    assert 'gpuwarden_server_gpu_info{gpu="0",node="demo-node",server="vllm-0"} 1' in body
    assert daemon.cycle_errors_total == 0


def test_the_demo_incidents_foreign_process_is_other_processes(demo_node: Node) -> None:
    daemon, gpus, states = demo_node
    incident = build_incident(gpus, states)
    incident.play(25.0)  # t=20 s: a foreign process takes memory on GPU 0
    for _ in range(30):
        daemon.cycle.run()
    assert daemon.store is not None
    table = budgets(daemon.store.latest("gpu_memory_budget_bytes"))
    reserved = 536 * 1048576
    assert table["0"]["other_processes"] > reserved + 5e9  # the foreign process
    assert table["1"]["other_processes"] == reserved
    assert table["0"]["free"] / sum(table["0"].values()) < 0.06  # headroom 4 %


def test_a_failing_budget_costs_its_samples_not_the_cycle(
        demo_node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    daemon, _, _ = demo_node

    def broken(self: MemoryBudget, samples: list[Sample]) -> list[Sample]:
        raise RuntimeError("boom")

    monkeypatch.setattr(MemoryBudget, "samples", broken)
    before_cycles, before_errors = daemon.cycles_total, daemon.cycle_errors_total
    samples = daemon.cycle.run()
    assert daemon.cycles_total == before_cycles + 1
    assert daemon.cycle_errors_total == before_errors + 1
    assert any(s.signal == "gpu_up" for s in samples)
    assert not any(s.signal == "gpu_memory_budget_bytes" for s in samples)


def test_a_reload_that_changes_the_price_rebuilds_the_budget(demo_node: Node) -> None:
    """What ``Daemon.reload`` does to the cycle: a new config with another [cost]."""
    daemon, _, _ = demo_node
    daemon.cycle.config = dataclasses.replace(daemon.config, cost=CostConfig(gpu_hour_usd=1.25))
    samples = daemon.cycle.run()
    cost = {dict(s.labels)["gpu"]: s.value for s in samples
            if s.signal == "gpu_cost_per_hour_usd"}
    assert cost == {str(i): 1.25 for i in range(DEMO_GPUS)}
    daemon.cycle.config = dataclasses.replace(daemon.config, cost=CostConfig())
    assert not [s for s in daemon.cycle.run() if s.signal == "gpu_cost_per_hour_usd"]
