"""A node with GPUs and inference servers: every canonical signal its sources provide
shows up on /metrics with the README's labels, including the window quantiles."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.tools.demo import SimulatedVllmServer, SimulatedVllmState
from tests.daemon.test_daemon import free_port

Scrape = dict[str, list[tuple[dict[str, str], float]]]


def scrape(port: int) -> Scrape:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


@pytest.fixture
def node(tmp_path: Path) -> Iterator[tuple[Daemon, list[SimulatedVllmState], int]]:
    states = [SimulatedVllmState(f"llama-{i}", random.Random(i)) for i in range(2)]
    servers = [SimulatedVllmServer(s) for s in states]
    for server in servers:
        server.start()
    port = free_port()
    tables = "".join(f'[[servers]]\nname = "vllm-{i}"\nkind = "vllm"\n'
                     f'metrics_url = "{s.url}/metrics"\n' for i, s in enumerate(servers))
    config = parse_config(
        f'node = "n1"\ninterval = "200ms"\nlisten = "127.0.0.1:{port}"\n[storage]\n'
        f'url = "sqlite:///{tmp_path / "gw.db"}"\n[gpu]\nsource = "sim"\nsim_gpus = 2\n'
        + tables + '[[servers]]\nname = "dead"\nkind = "sglang"\n'
        f'metrics_url = "http://127.0.0.1:{free_port()}/metrics"\ntimeout = "100ms"\n'
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        yield daemon, states, port
    finally:
        daemon.shutdown()
        for server in servers:
            server.stop()


def test_every_signal_with_design_labels(node: tuple[Daemon, list[SimulatedVllmState],
                                                     int]) -> None:
    _daemon, states, port = node
    deadline = time.monotonic() + 20
    m: Scrape = {}
    while time.monotonic() < deadline:
        for state in states:
            state.advance(0.2)
        m = scrape(port)
        if "gpuwarden_itl_seconds" in m and "gpuwarden_generation_tokens_per_second" in m:
            break
        time.sleep(0.2)

    server_labels = {"node", "server", "model"}
    for name in ("gpuwarden_kv_cache_usage_ratio", "gpuwarden_requests_running",
                 "gpuwarden_requests_waiting", "gpuwarden_preemptions_total",
                 "gpuwarden_generation_tokens_per_second", "gpuwarden_prefix_cache_hit_ratio"):
        assert name in m, f"{name} missing"
        assert {lab["server"] for lab, _ in m[name]} == {"vllm-0", "vllm-1"}
        assert all(set(lab) == server_labels and lab["node"] == "n1" for lab, _ in m[name])
    kv = {lab["server"]: v for lab, v in m["gpuwarden_kv_cache_usage_ratio"]}
    assert kv["vllm-0"] == pytest.approx(states[0].kv_usage, abs=0.05)
    models = {lab["model"] for lab, _ in m["gpuwarden_requests_running"]}
    assert models == {"llama-0", "llama-1"}

    for hist in ("gpuwarden_ttft_seconds", "gpuwarden_itl_seconds"):
        quantiles = {(lab["server"], lab["quantile"]): v for lab, v in m[hist]}
        assert {q for _, q in quantiles} == {"0.5", "0.95", "0.99"}
        p50, p95 = quantiles[("vllm-0", "0.5")], quantiles[("vllm-0", "0.95")]
        assert 0 < p50 <= p95
    itl_p50 = {lab["server"]: v for lab, v in m["gpuwarden_itl_seconds"]
               if lab["quantile"] == "0.5"}
    assert 0.02 < itl_p50["vllm-0"] < 0.06  # the simulation's ~35 ms per token

    hit = {lab["server"]: v for lab, v in m["gpuwarden_prefix_cache_hit_ratio"]}
    assert 0.4 < hit["vllm-0"] < 0.7  # the simulation hits ~60 % without KV pressure

    up = {lab["server"]: (lab["kind"], v) for lab, v in m["gpuwarden_server_up"]}
    assert up == {"vllm-0": ("vllm", 1.0), "vllm-1": ("vllm", 1.0), "dead": ("sglang", 0.0)}
    errors = {(lab["collector"], lab["reason"]): v for lab, v in m["gpuwarden_scrape_errors_total"]}
    assert errors[("server:dead", "refused")] >= 1
    invalid = {lab["collector"]: v for lab, v in m["gpuwarden_scrape_invalid_lines_total"]}
    assert invalid == {"server:vllm-0": 0.0, "server:vllm-1": 0.0, "server:dead": 0.0}
    success = {lab["collector"]: v for lab, v in m["gpuwarden_collector_success"]}
    assert success["sim"] == 1.0 and success["server:vllm-0"] == 1.0
    assert success["server:dead"] == 0.0  # a failing scrape is a failed collector run too
    assert {lab["gpu"] for lab, _ in m["gpuwarden_gpu_utilization_ratio"]} == {"0", "1"}


def test_hung_server_never_delays_the_cycle(tmp_path: Path) -> None:
    """A server that accepts and never answers: GPU sampling keeps its 200 ms beat."""
    import socket

    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)  # accepts connections (kernel backlog) but never answers
    try:
        config = parse_config(
            f'node = "n1"\ninterval = "200ms"\nlisten = "127.0.0.1:{free_port()}"\n'
            f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n[gpu]\nsource = "sim"\n'
            f'[[servers]]\nname = "hung"\nkind = "vllm"\n'
            f'metrics_url = "http://127.0.0.1:{hang.getsockname()[1]}/metrics"\n'
            'timeout = "5s"\n'
        )
        daemon = Daemon(config)
        daemon.start()
        try:
            time.sleep(2.0)
            cycles = daemon.cycles_total
            assert cycles >= 8  # ~10 expected at 200 ms; the 5 s scrape did not block them
            assert daemon.last_cycle_seconds < 0.25
            ok, _ = daemon.health()
            assert ok
        finally:
            daemon.shutdown()
    finally:
        hang.close()
