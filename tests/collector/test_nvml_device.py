"""One GPU's fields through the NVML collector and the fake NVML module: fallbacks to
deprecated calls, fields a GPU does not support, MIG instances (nvml_device.py)."""

from __future__ import annotations

from gpuwarden.collector.nvml import NvmlCollector
from tests.collector.fake_pynvml import load
from tests.collector.test_nvml import H100, MIB, by, run


def test_old_driver_falls_back_to_v1_memory_and_deprecated_calls() -> None:
    fake, collector, samples = run("nvml-old-driver-no-v2-memory.json")
    assert by(samples, "gpu_memory_total_bytes")["0"] == 81559 * MIB
    # v1: used includes the driver-reserved part.
    assert by(samples, "gpu_memory_used_bytes")["0"] == (73210 + 536) * MIB
    assert by(samples, "gpu_temperature_celsius")["0"] == 58.0
    assert by(samples, "gpu_throttle_reasons")["4"] == 0x4
    assert by(samples, "gpu_process_memory_used_bytes")["0:41872"] == (73210 - 512) * MIB
    assert collector.missing_functions == {
        "nvmlDeviceGetMemoryInfo_v2", "nvmlDeviceGetTemperatureV",
        "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetComputeRunningProcesses_v3",
    }
    # The missing v2 call is tried once per GPU, not every cycle.
    v2_tries = fake.calls["nvmlDeviceGetMemoryInfo"]
    collector.collect()
    assert fake.calls["nvmlDeviceGetMemoryInfo"] == v2_tries + 8
    assert fake.calls["nvmlDeviceGetTemperatureV"] == 8


def test_not_supported_fields_are_absent_not_zero() -> None:
    fake, collector, samples = run("nvml-not-supported-fields.json")
    # GPU 2 (outside the container's cgroup: NoPermission on its handle) is skipped, not lost.
    assert by(samples, "gpu_up") == {"0": 1.0, "1": 1.0}
    for signal in ("gpu_power_watts", "gpu_ecc_errors_total", "gpu_throttle_reasons",
                   "gpu_process_memory_used_bytes"):
        assert by(samples, signal) == {}, signal
    assert by(samples, "gpu_temperature_celsius") == {"0": 58.0}
    assert set(by(samples, "gpu_utilization_ratio")) == {"0", "1"}
    assert set(by(samples, "gpu_memory_used_bytes")) == {"0", "1"}
    assert by(samples, "gpu_power_limit_watts") == {"0": 700.0, "1": 700.0}
    calls = fake.calls["nvmlDeviceGetPowerUsage"]
    collector.collect()
    assert fake.calls["nvmlDeviceGetPowerUsage"] == calls  # not polled again


def test_mig_instances_report_memory_per_gpu_instance() -> None:
    _, _, samples = run("nvml-mig.json")
    used = by(samples, "gpu_memory_used_bytes")
    total = by(samples, "gpu_memory_total_bytes")
    assert used["0/1"] == 18432 * MIB and total["0/1"] == 40192 * MIB
    assert used["0/13"] == 1024 * MIB
    assert set(used) == {"0", "1", "0/1", "0/5", "0/13"}  # two CIs of GI 5 counted once
    mig = {dict(s.labels)["gpu"]: dict(s.labels) for s in samples if "/" in dict(s.labels)["gpu"]}
    assert mig["0/1"]["uuid"].startswith("MIG-")
    assert mig["0/1"]["model"] == f"{H100} MIG 3g.40gb"
    assert set(mig["0/1"]) == {"node", "gpu", "uuid", "model"}
    # MIG-mode parent: utilisation NotSupported -> absent; no gpu_up per instance.
    assert set(by(samples, "gpu_utilization_ratio")) == {"1"}
    assert set(by(samples, "gpu_up")) == {"0", "1"}


def test_old_pynvml_without_new_bindings_uses_the_old_ones() -> None:
    """An nvidia-ml-py older than the driver lacks the Python names of the newer calls."""
    fake = load("nvml-8xh100-healthy.json")
    for name in ("nvmlDeviceGetTemperatureV", "nvmlDeviceGetCurrentClocksEventReasons"):
        delattr(fake, name)
    samples = list(NvmlCollector("node-a", nvml=fake).collect())
    assert by(samples, "gpu_temperature_celsius")["0"] == 58.0
    assert by(samples, "gpu_throttle_reasons")["4"] == 0x4
    assert fake.calls["nvmlDeviceGetTemperature"] == 8
