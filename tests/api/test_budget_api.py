"""``GET /api/v1/budget`` and ``gpuwarden budget --url`` against a real daemon in-process,
on loopback, whose collector stores the cycles of the scripted node
(``tests/capacity/node.py``)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
import requests

from gpuwarden.collector.base import Collector
from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.errors import StoreUnavailable
from gpuwarden.model import Sample
from tests.capacity import node as scripted
from tests.daemon.test_daemon import free_port


class ScriptedNode(Collector):
    """The scripted node's cycle, stamped now, its histograms growing each cycle; without
    the memory budget's parts, which the daemon computes itself from the GPUs' total and
    headroom (``collector/memory_budget.py``)."""

    name = "scripted-node"

    def __init__(self) -> None:
        self.cycles = 0

    def collect(self) -> Iterable[Sample]:
        self.cycles += 1
        return [s for s in scripted.cycle(time.time(), 0.0, self.cycles)
                if s.signal != "gpu_memory_budget_bytes"]


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    config = parse_config(f'node = "{scripted.NODE}"\ninterval = "100ms"\n'
                          f'listen = "127.0.0.1:{free_port()}"\n[storage]\n'
                          f'url = "sqlite:///{tmp_path / "gw.db"}"\n', "<test>")
    started = Daemon(config, collectors=[ScriptedNode()])
    started.start()
    try:
        deadline = time.monotonic() + 10
        while started.cycles_total < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield started
    finally:
        started.shutdown()


def test_the_endpoint_serves_the_budget_of_what_the_daemon_stored(daemon: Daemon) -> None:
    response = requests.get(f"http://127.0.0.1:{daemon.http_port}/api/v1/budget", timeout=10)
    assert response.status_code == 200
    doc = response.json()
    assert doc["node"] == scripted.NODE
    gpu0 = doc["gpus"][0]
    assert (gpu0["gpu"], gpu0["below_target"]) == ("0", True)
    # The daemon's own split: free = headroom x total, the parts sum to the total.
    assert gpu0["parts"]["free"]["gib"] == pytest.approx(8.0)
    assert sum(p["bytes"] for p in gpu0["parts"].values()) == gpu0["total_bytes"] == \
        scripted.TOTAL
    servers = {s["server"]: s for s in doc["servers"]}
    assert servers["vllm-tp"]["gpus"] == ["1", "2"]
    assert servers["vllm-a"]["what_if"]["tokens"] == pytest.approx(200_000 * 62 / 30)
    # The histograms grew over the cycles, all in the same buckets: the p95 lengths.
    assert servers["vllm-a"]["lengths_tokens"]["p95"]["prompt"] == pytest.approx(998.4)


def test_budget_url_prints_the_page(daemon: Daemon, capsys: pytest.CaptureFixture[str]) -> None:
    from gpuwarden.cli.main import main

    assert main(["budget", "--url", f"http://127.0.0.1:{daemon.http_port}"]) == 0
    out = capsys.readouterr().out
    assert "GPU 0 NVIDIA H100 80GB HBM3: 80.0 GiB = KV cache " in out
    assert "free 8.0 GiB (10 %) - headroom 10 % below the 15 % target" in out
    assert "server vllm-b (qwen-7b) on node n1, GPU 0:" in out


def test_a_store_that_does_not_answer_is_503_with_the_reason(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    def frozen(*_args: object, **_kwargs: object) -> None:
        raise StoreUnavailable("store did not answer a read within 0.5s")

    assert daemon.store is not None
    monkeypatch.setattr(daemon.store, "query", frozen)
    url = f"http://127.0.0.1:{daemon.http_port}"
    response = requests.get(f"{url}/api/v1/budget", timeout=10)
    assert response.status_code == 503
    assert response.json() == {"error": "store: store did not answer a read within 0.5s"}
    assert requests.get(f"{url}/healthz", timeout=5).status_code == 200  # the loop lives on

    from gpuwarden.cli.main import main

    assert main(["budget", "--url", url]) == 1
    assert "could not compute the budget (HTTP 503)" in capsys.readouterr().err


def test_the_simulated_node_has_a_budget_row_per_gpu(tmp_path: Path) -> None:
    """The daemon as `gpuwarden demo` runs it: its own (simulated) collectors."""
    config = parse_config(f'node = "{scripted.NODE}"\ninterval = "100ms"\n'
                          f'listen = "127.0.0.1:{free_port()}"\n[storage]\n'
                          f'url = "sqlite:///{tmp_path / "gw.db"}"\n'
                          '[gpu]\nsource = "sim"\nsim_gpus = 2\n', "<test>")
    daemon = Daemon(config)
    daemon.start()
    try:
        time.sleep(0.3)
        response = requests.get(f"http://127.0.0.1:{daemon.http_port}/api/v1/budget",
                                timeout=10)
    finally:
        daemon.shutdown()
    assert response.status_code == 200
    gpus = response.json()["gpus"]
    assert [g["gpu"] for g in gpus] == ["0", "1"]
    for gpu in gpus:
        assert gpu["total_bytes"] > 0 and 0 < gpu["headroom_ratio"] <= 1
