"""The capacity figures the NVML collector reads (nvml_device.py): memory headroom, memory
bus width, maximum memory clock and the peak bandwidth they give, and the per-process
memory of the scenarios with several processes on one GPU, a foreign process and MIG.

Each assertion is a figure a user would check against ``nvidia-smi -q`` or the GPU's
datasheet; the static fields are counted in NVML calls, since reading them every cycle
is the cost they must not have.
"""

from __future__ import annotations

import copy

import pytest

from gpuwarden.collector.nvml import NvmlCollector
from gpuwarden.collector.nvml_device import peak_memory_bandwidth
from gpuwarden.model import Sample
from tests.collector.fake_pynvml import FakeNvml, load
from tests.collector.test_nvml import MIB, by, run

STATIC = ("gpu_memory_bus_width_bits", "gpu_memory_clock_max_hertz",
          "gpu_memory_bandwidth_peak_bytes_per_second")


def _collector(fake: FakeNvml) -> NvmlCollector:
    return NvmlCollector("node-a", nvml=fake, clock=lambda: 0.0)


def _variant(name: str, **changes: object) -> FakeNvml:
    """Scenario ``name`` with top-level keys replaced (a driver, not a GPU, changed)."""
    scenario = copy.deepcopy(load(name).scenario)
    scenario.update(changes)
    return FakeNvml(scenario)


@pytest.mark.parametrize("scenario,bus,clock_mhz,datasheet", [
    ("nvml-8xh100-healthy.json", 5120, 2619, 3.35e12),        # H100 SXM: 3.35 TB/s
    ("nvml-2xa100-two-servers-one-gpu.json", 5120, 1593, 2.039e12),  # A100 80GB SXM
    ("nvml-l4-foreign-process.json", 192, 6251, 300e9),       # L4: 300 GB/s
])
def test_bus_width_max_clock_and_peak_bandwidth_match_the_datasheet(
    scenario: str, bus: int, clock_mhz: int, datasheet: float,
) -> None:
    fake, _, samples = run(scenario)
    gpus = {str(d["index"]) for d in fake.states}
    assert by(samples, "gpu_memory_bus_width_bits") == dict.fromkeys(gpus, float(bus))
    assert by(samples, "gpu_memory_clock_max_hertz") == dict.fromkeys(gpus, clock_mhz * 1e6)
    peak = by(samples, "gpu_memory_bandwidth_peak_bytes_per_second")
    assert peak == dict.fromkeys(gpus, 2 * clock_mhz * 1e6 * bus / 8)
    assert all(v == pytest.approx(datasheet, rel=2e-3) for v in peak.values())


def test_peak_bandwidth_formula() -> None:
    assert peak_memory_bandwidth(5120, 2619e6) == 3_352_320_000_000.0
    assert peak_memory_bandwidth(192, 6251e6) == 300_048_000_000.0


def test_headroom_is_free_over_total_and_reserved_memory_is_not_free() -> None:
    _, _, samples = run("nvml-8xh100-healthy.json")
    headroom = by(samples, "gpu_memory_headroom_ratio")
    assert set(headroom) == {str(i) for i in range(8)}
    assert headroom["0"] == 8192524288 / 85520809984  # 7813 MiB free of 81559
    # GPU 7 is idle: all but the 536 MiB the driver reserves is free.
    assert headroom["7"] == (81559 - 536) / 81559


def test_headroom_on_the_v1_fallback_equals_v2() -> None:
    _, _, v1 = run("nvml-old-driver-no-v2-memory.json")
    _, _, v2 = run("nvml-8xh100-healthy.json")
    assert by(v1, "gpu_memory_headroom_ratio") == by(v2, "gpu_memory_headroom_ratio")


def test_static_fields_are_read_once_per_gpu_and_again_after_a_reinit() -> None:
    fake, collector, samples = run("nvml-8xh100-healthy.json", cycles=3)
    assert fake.calls["nvmlDeviceGetMemoryBusWidth"] == 8
    assert fake.calls["nvmlDeviceGetMaxClockInfo"] == 8
    for signal in STATIC:  # re-emitted every cycle from the value read once
        assert len(by(samples, signal)) == 8, signal
    collector.close()
    assert len(by(collector.collect(), "gpu_memory_bus_width_bits")) == 8
    assert fake.calls["nvmlDeviceGetMemoryBusWidth"] == 16


def test_a_gpu_that_does_not_support_the_calls_has_no_samples_and_is_not_asked_again() -> None:
    fake, collector, samples = run("nvml-not-supported-fields.json")
    for signal in STATIC:
        assert set(by(samples, signal)) == {"0"}, signal  # GPU 1 answers NotSupported
    assert set(by(samples, "gpu_memory_headroom_ratio")) == {"0", "1"}
    for _ in range(3):
        collector.collect()
    assert fake.calls["nvmlDeviceGetMemoryBusWidth"] == 2  # once for each visible GPU
    assert fake.calls["nvmlDeviceGetMaxClockInfo"] == 2


def test_a_driver_without_the_symbol_gives_no_bus_width_and_no_peak() -> None:
    fake = _variant("nvml-8xh100-healthy.json", missing_functions=["nvmlDeviceGetMemoryBusWidth"])
    collector = _collector(fake)
    samples = list(collector.collect())
    collector.collect()
    assert by(samples, "gpu_memory_bus_width_bits") == {}
    assert by(samples, "gpu_memory_bandwidth_peak_bytes_per_second") == {}
    assert len(by(samples, "gpu_memory_clock_max_hertz")) == 8  # the other call still answers
    assert len(by(samples, "gpu_up")) == 8
    assert fake.calls["nvmlDeviceGetMemoryBusWidth"] == 8
    assert "nvmlDeviceGetMemoryBusWidth" in collector.missing_functions


def test_an_old_pynvml_without_the_bindings_gives_no_static_fields() -> None:
    fake = load("nvml-8xh100-healthy.json")
    for name in ("nvmlDeviceGetMemoryBusWidth", "nvmlDeviceGetMaxClockInfo"):
        delattr(fake, name)
    samples = list(_collector(fake).collect())
    for signal in STATIC:
        assert by(samples, signal) == {}, signal
    assert len(by(samples, "gpu_memory_headroom_ratio")) == 8


def test_a_zero_bus_width_is_no_figure_and_not_asked_again() -> None:
    fake = load("nvml-8xh100-healthy.json")
    fake.states[0]["memory_bus_width_bits"] = 0  # what a part without its own memory bus says
    collector = _collector(fake)
    samples = list(collector.collect())
    collector.collect()
    assert "0" not in by(samples, "gpu_memory_bus_width_bits")
    assert "0" not in by(samples, "gpu_memory_bandwidth_peak_bytes_per_second")
    assert by(samples, "gpu_memory_clock_max_hertz")["0"] == 2619e6
    assert fake.calls["nvmlDeviceGetMemoryBusWidth"] == 8


def test_a_passing_failure_is_asked_again_until_it_answers() -> None:
    fake = load("nvml-8xh100-healthy.json")
    fake.states[0]["errors"] = {"nvmlDeviceGetMemoryBusWidth": "Timeout"}
    collector = _collector(fake)
    assert "0" not in by(collector.collect(), "gpu_memory_bus_width_bits")
    del fake.states[0]["errors"]
    assert by(collector.collect(), "gpu_memory_bus_width_bits")["0"] == 5120.0
    collector.collect()
    assert fake.calls["nvmlDeviceGetMemoryBusWidth"] == 8 + 1 + 0


def test_a_lost_gpu_has_no_headroom_and_its_static_figures_come_back_with_it() -> None:
    fake, collector, _ = run("nvml-gpu-lost.json")
    fake.advance()
    samples = list(collector.collect())
    for signal in ("gpu_memory_headroom_ratio", *STATIC):
        values = by(samples, signal)
        assert "3" not in values and len(values) == 7, signal
    fake.states[3]["lost"] = False  # reset: the same board answers again
    samples = list(collector.collect())
    assert by(samples, "gpu_memory_bus_width_bits")["3"] == 5120.0
    assert "3" in by(samples, "gpu_memory_headroom_ratio")
    assert fake.calls["nvmlDeviceGetMemoryBusWidth"] == 8  # not read again


def test_mig_headroom_per_instance_and_static_figures_on_the_parent_only() -> None:
    _, _, samples = run("nvml-mig.json")
    headroom = by(samples, "gpu_memory_headroom_ratio")
    assert headroom["0"] == 62410194944 / 85520809984
    assert headroom["0/1"] == 21760 / 40192  # the 3g.40gb instance's own free / total
    assert headroom["0/5"] == 17920 / 19968 and headroom["0/13"] == 8832 / 9856
    assert set(headroom) == {"0", "1", "0/1", "0/5", "0/13"}
    for signal in STATIC:
        assert set(by(samples, signal)) == {"0", "1"}, signal


def _process_labels(samples: list[Sample]) -> dict[str, dict[str, str]]:
    return {f"{dict(s.labels)['gpu']}:{dict(s.labels)['pid']}": dict(s.labels)
            for s in samples if s.signal == "gpu_process_memory_used_bytes"}


def test_two_servers_on_one_gpu_each_have_their_memory_by_pid() -> None:
    fake, collector, samples = run("nvml-2xa100-two-servers-one-gpu.json")
    procs = by(samples, "gpu_process_memory_used_bytes")
    assert procs == {"0:51200": 36790 * MIB, "0:51788": 36812 * MIB, "1:52410": 73700 * MIB}
    labels = _process_labels(samples)["0:51788"]
    assert labels == {"node": "node-a", "gpu": "0", "model": "NVIDIA A100-SXM4-80GB",
                      "uuid": "GPU-3b8f2c61-9d4e-4a7b-8c15-2e6f0a9d7b34", "pid": "51788"}
    assert by(samples, "gpu_memory_headroom_ratio")["0"] == 7481 / 81920
    fake.advance()  # the second server on GPU 0 exits
    samples = list(collector.collect())
    assert set(by(samples, "gpu_process_memory_used_bytes")) == {"0:51200", "1:52410"}
    assert by(samples, "gpu_memory_headroom_ratio")["0"] == 44293 / 81920


def test_a_foreign_process_is_reported_like_any_other() -> None:
    fake, collector, samples = run("nvml-l4-foreign-process.json")
    assert by(samples, "gpu_process_memory_used_bytes") == {"0:7301": 18304 * MIB,
                                                            "0:9144": 2560 * MIB}
    assert by(samples, "gpu_memory_headroom_ratio") == {"0": 1612 / 23034}
    fake.advance()  # the foreign process grows
    samples = list(collector.collect())
    assert by(samples, "gpu_process_memory_used_bytes")["0:9144"] == 3840 * MIB
    assert by(samples, "gpu_memory_headroom_ratio") == {"0": 332 / 23034}


def test_mig_processes_carry_their_instance_labels() -> None:
    fake, _, samples = run("nvml-h100-mig-processes-per-instance.json")
    assert by(samples, "gpu_process_memory_used_bytes") == {
        "0/1:61001": 18176 * MIB, "0/5:61500": 1792 * MIB, "0/5:61877": 128 * MIB,
        "0/13:62210": 768 * MIB}
    labels = _process_labels(samples)
    assert labels["0/1:61001"]["uuid"] == "MIG-8a3f1c2e-5b7d-5e91-a4c6-2d8f0b3e7a15"
    assert labels["0/1:61001"]["model"] == "NVIDIA H100 80GB HBM3 MIG 3g.40gb"
    # Both compute instances of GI 5 count under the instance (named by its first CI).
    assert labels["0/5:61877"]["uuid"] == "MIG-1e6b9d4a-7c2f-5a83-b1e5-6f0a3d9c2b47"
    assert set(labels["0/13:62210"]) == {"node", "gpu", "uuid", "model", "pid"}
    # Listed per MIG device; the parent (privileged callers only) is not asked.
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses"] == 4
    assert by(samples, "gpu_memory_headroom_ratio")["0"] == (81559 - 536 - 21504) / 81559
    assert by(samples, "gpu_memory_headroom_ratio")["0/1"] == (40192 - 18432) / 40192


def test_a_pid_listed_by_two_compute_instances_of_one_gpu_instance_counts_once() -> None:
    fake = load("nvml-h100-mig-processes-per-instance.json")
    migs = fake.states[0]["mig_devices"]
    migs[2]["processes"] = migs[2]["processes"] + migs[1]["processes"]
    samples = list(_collector(fake).collect())
    assert by(samples, "gpu_process_memory_used_bytes")["0/5:61500"] == 1792 * MIB


@pytest.mark.parametrize("scenario", [
    "nvml-2xa100-two-servers-one-gpu.json", "nvml-l4-foreign-process.json",
    "nvml-h100-mig-processes-per-instance.json", "nvml-not-supported-fields.json",
])
def test_recorded_states_replay_to_the_same_samples(scenario: str) -> None:
    """What ``bench --record`` writes keeps the new fields, every cycle."""
    fake = load(scenario)
    collector = _collector(fake)
    collector.collect()
    samples = list(collector.collect())  # a later cycle: static fields from the cache
    recorded = {"origin": "test", "missing_functions": sorted(collector.missing_functions),
                "steps": [{"devices": collector.last_states}]}
    again = list(_collector(FakeNvml(recorded)).collect())
    assert sorted((s.signal, s.labels, s.value) for s in again) == sorted(
        (s.signal, s.labels, s.value) for s in samples)
