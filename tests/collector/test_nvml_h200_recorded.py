"""The NVML collector on what a real H200 answered (``nvml-1xh200-matmul-load.json``).

The scenario was recorded by ``bench/bench_nvml.py --record`` from driver 580.159.04
while one PyTorch process held 42090 MiB and ran bf16 matrix products; ``nvidia-smi``
on the same machine read 143771 MiB total, 3201 MHz maximum memory clock, a 700 W
limit and that process at 42090 MiB. Each assertion is one of those readings, or a
figure of NVIDIA's H200 datasheet, as a user would cross-check them.
"""

from __future__ import annotations

import pytest

from gpuwarden.collector.nvml import NvmlCollector
from gpuwarden.collector.nvml_device import MIG_MODE_EVERY_SECONDS
from gpuwarden.gpu_specs import peak_bf16_flops
from gpuwarden.model import Sample
from tests.collector.fake_pynvml import load
from tests.collector.test_nvml import MIB, by

SCENARIO = "nvml-1xh200-matmul-load.json"
IDLE_STEP, LOAD_STEP = 5, 20
GPU_IDLE, SW_POWER_CAP = 0x1, 0x4  # nvmlClocksEventReason* bits


def _at(step: int) -> list[Sample]:
    fake = load(SCENARIO)
    collector = NvmlCollector("h200-node", nvml=fake, clock=lambda: 0.0)
    fake.advance(step)
    return list(collector.collect())


def test_model_name_is_the_one_the_peak_flops_table_knows() -> None:
    samples = _at(IDLE_STEP)
    models = {dict(s.labels)["model"] for s in samples if s.signal == "gpu_up"}
    assert models == {"NVIDIA H200"}
    # The SXM board's dense BF16 peak: half of the datasheet's 1,979 TFLOPS "with sparsity".
    assert peak_bf16_flops("NVIDIA H200") == pytest.approx(989.5e12)


def test_memory_total_bus_clock_and_peak_bandwidth_as_nvidia_smi_and_datasheet_say() -> None:
    samples = _at(IDLE_STEP)
    assert by(samples, "gpu_memory_total_bytes") == {"0": 143771 * MIB}
    assert by(samples, "gpu_memory_clock_max_hertz") == {"0": 3201e6}
    # NVML reports 6016 bits, not the 6144 of six 1024-bit HBM3e stacks: the recorded answer.
    assert by(samples, "gpu_memory_bus_width_bits") == {"0": 6016.0}
    peak = by(samples, "gpu_memory_bandwidth_peak_bytes_per_second")["0"]
    assert peak == 2 * 3201e6 * 6016 / 8
    assert peak == pytest.approx(4.8e12, rel=5e-3)  # datasheet: 4.8 TB/s


def test_idle_gpu_reads_idle_and_lists_no_process() -> None:
    samples = _at(IDLE_STEP)
    assert by(samples, "gpu_utilization_ratio") == {"0": 0.0}
    assert by(samples, "gpu_memory_used_bytes") == {"0": 0.0}
    assert by(samples, "gpu_throttle_reasons") == {"0": float(GPU_IDLE)}
    assert by(samples, "gpu_process_memory_used_bytes") == {}
    assert by(samples, "gpu_power_watts")["0"] < 100


def test_loaded_gpu_shows_the_process_its_memory_and_the_power_cap() -> None:
    samples = _at(LOAD_STEP)
    assert by(samples, "gpu_utilization_ratio")["0"] >= 0.99
    assert by(samples, "gpu_process_memory_used_bytes") == {"0:444": 42090 * MIB}
    used = by(samples, "gpu_memory_used_bytes")["0"]
    assert used == pytest.approx(42090 * MIB, rel=1e-3)  # the one process is all of it
    assert by(samples, "gpu_throttle_reasons") == {"0": float(SW_POWER_CAP)}
    power, limit = by(samples, "gpu_power_watts")["0"], by(samples, "gpu_power_limit_watts")["0"]
    assert limit == 700.0
    assert power == pytest.approx(limit, rel=0.02)
    assert by(samples, "gpu_sm_clock_hertz")["0"] < 1980e6  # held below its 1980 MHz maximum


def test_mig_mode_is_asked_once_a_minute_not_every_cycle() -> None:
    fake = load(SCENARIO)
    now = [0.0]
    collector = NvmlCollector("h200-node", nvml=fake, clock=lambda: now[0],
                              monotonic=lambda: now[0])
    cycles = int(MIG_MODE_EVERY_SECONDS) * 2 + 1
    for _ in range(cycles):
        samples = list(collector.collect())
        assert by(samples, "gpu_up") == {"0": 1.0}
        fake.advance()
        now[0] += 1.0
    assert collector.call_stats["nvmlDeviceGetUtilizationRates"].calls == cycles
    assert collector.call_stats["nvmlDeviceGetMigMode"].calls == 3  # at 0 s, 60 s, 120 s
    assert collector.last_states[0]["mig_mode"] == [0, 0]  # still recorded every cycle
