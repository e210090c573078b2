"""The simulated GPUs (collector/sim.py): the capacity figures the demo and ``make run``
show, with the numbers of the H100 they imitate, and the steering a demo incident uses."""

from __future__ import annotations

from collections.abc import Iterable

import pytest

from gpuwarden.collector.sim import SIM_MODEL, SimulatedGpuCollector
from gpuwarden.model import Sample
from gpuwarden.signals import SIGNALS

MIB = 1048576


def by(samples: Iterable[Sample], signal: str) -> dict[str, float]:
    return {dict(s.labels)["gpu"]: s.value for s in samples if s.signal == signal}


def test_every_simulated_gpu_has_the_capacity_figures_of_an_h100_sxm() -> None:
    samples = list(SimulatedGpuCollector("n", 4, seed=1, clock=lambda: 0.0).collect())
    assert all(s.signal in SIGNALS for s in samples)
    assert all(dict(s.labels)["model"] == SIM_MODEL for s in samples)
    assert by(samples, "gpu_memory_bus_width_bits") == dict.fromkeys("0123", 5120.0)
    assert by(samples, "gpu_memory_clock_max_hertz") == dict.fromkeys("0123", 2619e6)
    peak = by(samples, "gpu_memory_bandwidth_peak_bytes_per_second")
    assert peak == dict.fromkeys("0123", 3_352_320_000_000.0)  # NVIDIA's 3.35 TB/s


def test_headroom_is_what_used_and_reserved_memory_leave() -> None:
    collector = SimulatedGpuCollector("n", 4, seed=1, clock=lambda: 0.0)
    for _ in range(30):
        samples = list(collector.collect())
    used, total = by(samples, "gpu_memory_used_bytes"), by(samples, "gpu_memory_total_bytes")
    for gpu, ratio in by(samples, "gpu_memory_headroom_ratio").items():
        assert ratio == pytest.approx((total[gpu] - used[gpu] - 536 * MIB) / total[gpu])
        assert 0.15 < ratio < 0.25  # ~60 % load: a calm node keeps its headroom


def test_set_memory_plays_a_headroom_incident_and_recovers() -> None:
    collector = SimulatedGpuCollector("n", 2, seed=3, clock=lambda: 0.0)
    collector.set_memory(1, 0.97)
    for _ in range(40):
        samples = list(collector.collect())
    headroom = by(samples, "gpu_memory_headroom_ratio")
    assert headroom["1"] < 0.03 and headroom["0"] > 0.15
    collector.set_memory(1, None)
    for _ in range(40):
        samples = list(collector.collect())
    assert by(samples, "gpu_memory_headroom_ratio")["1"] > 0.15


def test_a_lost_simulated_gpu_has_no_capacity_figures() -> None:
    collector = SimulatedGpuCollector("n", 2, seed=1, clock=lambda: 0.0)
    collector.set_lost(0)
    samples = list(collector.collect())
    assert by(samples, "gpu_up") == {"0": 0.0, "1": 1.0}
    for signal in ("gpu_memory_headroom_ratio", "gpu_memory_bus_width_bits",
                   "gpu_memory_bandwidth_peak_bytes_per_second"):
        assert set(by(samples, signal)) == {"1"}, signal


def processes(samples: Iterable[Sample]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for s in samples:
        if s.signal == "gpu_process_memory_used_bytes":
            labels = dict(s.labels)
            out.setdefault(labels["gpu"], {})[labels["pid"]] = s.value
    return out


def test_each_gpu_lists_its_server_process_holding_the_used_memory() -> None:
    collector = SimulatedGpuCollector("n", 3, seed=1, clock=lambda: 0.0)
    first = processes(collector.collect())
    for _ in range(10):
        samples = list(collector.collect())
    procs, used = processes(samples), by(samples, "gpu_memory_used_bytes")
    assert {gpu: list(p) for gpu, p in procs.items()} == {gpu: list(p) for gpu, p in first.items()}
    assert len({pid for p in procs.values() for pid in p}) == 3  # one stable pid per GPU
    assert all(int(pid) > 2**22 for p in procs.values() for pid in p)  # never a real pid
    for gpu, p in procs.items():
        assert sum(p.values()) == used[gpu]


def test_set_memory_is_a_foreign_process_beside_the_server_until_it_exits() -> None:
    collector = SimulatedGpuCollector("n", 2, seed=3, clock=lambda: 0.0)
    calm = processes(collector.collect())
    collector.set_memory(1, 0.97)
    for _ in range(40):
        samples = list(collector.collect())
    procs, used = processes(samples), by(samples, "gpu_memory_used_bytes")
    assert len(procs["1"]) == 2 and len(procs["0"]) == 1
    foreign = (set(procs["1"]) - set(calm["1"])).pop()
    assert procs["1"][foreign] > 8000 * MIB  # 97 % of the GPU, above what the server holds
    assert sum(procs["1"].values()) == used["1"]
    collector.set_memory(1, None)
    for _ in range(60):
        samples = list(collector.collect())
    assert processes(samples)["1"].keys() == calm["1"].keys()  # the foreign process exited
