"""Simulated GPUs for machines without one (laptops, CI, ``gpuwarden demo``).

Values move plausibly and at NVML's own resolution (integer percent, whole MiB,
integer degrees, milliwatts), so that storage, detectors and dashboards see the same
kind of data a real H100 gives. Everything simulated says so: the ``model`` label
reads "(simulated)", the UUIDs start with ``GPU-sim-``, and the daemon logs it and
exports ``gpuwarden_gpu_source_info{source="sim"}``.

Memory follows NVML's v2 meaning: ``used`` excludes the 536 MiB the driver reserves, so
an idle GPU's headroom is 0.993, not 1. The static figures are an H100 SXM's (5120-bit
bus, 2619 MHz maximum memory clock, hence 3.35 TB/s peak by the formula the NVML
collector uses). ``set_memory`` pins a GPU's memory, for a demo's headroom incident.

Each GPU lists its compute processes as NVML does (``gpu_process_memory_used_bytes``):
one inference-server process holding what the GPU's load makes it use, and, while
``set_memory`` pushes the GPU's memory above that, a foreign process holding the rest
(until it has freed it all), so the memory budget puts it under ``other_processes``.
Their pids are fake but stable, and above Linux's largest possible pid (2^22), so that
no real process has them and the /proc attribution never mistakes one for another.
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Self

from gpuwarden.collector.base import Collector, GpuSettings
from gpuwarden.collector.nvml_device import headroom, peak_memory_bandwidth
from gpuwarden.model import Sample, make_labels

log = logging.getLogger(__name__)

SIM_MODEL = "NVIDIA H100 80GB HBM3 (simulated)"
MIB = 1024 * 1024
TOTAL_MIB = 81559
RESERVED_MIB = 536  # what the driver sets aside (nvmlMemory_v2_t.reserved on an H100)
POWER_LIMIT_W = 700.0
MAX_SM_MHZ = 1980
MEM_MHZ = 2619  # HBM3 runs at its maximum clock: current and max are the same
MEM_BUS_BITS = 5120
PEAK_BANDWIDTH = peak_memory_bandwidth(MEM_BUS_BITS, MEM_MHZ * 1e6)
# Fake pids: above PID_MAX_LIMIT (4,194,304 = 2^22 on 64-bit Linux), never a real one.
SERVER_PID_BASE = 5_000_000
FOREIGN_PID_BASE = 5_100_000


def server_target_mib(load: float) -> int:
    """The memory an inference server's process settles at under ``load`` (its KV cache
    and allocator grow with the load)."""
    return 52000 + int(26000 * load)


@dataclass(slots=True)
class _GpuState:
    index: int
    rng: random.Random
    load: float = 0.6  # target utilisation this GPU drifts around
    util: float = 0.6
    memory_mib: int = 62000
    server_mib: int = 62000  # the server process's share of memory_mib
    foreign: bool = False  # a foreign process holds memory_mib - server_mib
    temp_c: float = 45.0
    lost: bool = False
    xid_total: int = 0
    ecc_corrected: int = 0
    memory_fraction: float | None = None  # pinned used share of the total (set_memory)
    overrides: dict[str, float] = field(default_factory=dict)


class SimulatedGpuCollector(Collector):
    """N fake H100s whose load random-walks; tests and the demo can steer them.

    ``clock`` is injectable so that accelerated-time tests produce exact timestamps.
    """

    name = "sim"

    def __init__(
        self,
        node: str,
        count: int = 4,
        *,
        seed: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = node
        self.clock = clock
        base_seed = seed if seed is not None else int(hashlib.sha1(node.encode()).hexdigest(), 16)
        self.gpus = [_GpuState(i, random.Random(base_seed + i)) for i in range(count)]
        self._labels = [
            make_labels(node=node, gpu=str(i), uuid=self._uuid(node, i), model=SIM_MODEL)
            for i in range(count)
        ]

    @classmethod
    def from_settings(cls, settings: GpuSettings) -> Self:
        """``[gpu] source = "sim"``: ``sim_gpus`` fake GPUs, said loudly in the log."""
        log.warning("GPU source is SIMULATED: %d fake GPUs, not real hardware",
                    settings.sim_gpus)
        collector = cls(settings.node, settings.sim_gpus)
        for index in range(settings.sim_gpus):
            collector.set_load(index, settings.sim_load)
        return collector

    @staticmethod
    def _uuid(node: str, index: int) -> str:
        digest = hashlib.sha1(f"{node}/{index}".encode()).hexdigest()
        return f"GPU-sim-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:28]}"

    # --- steering, for the demo's incidents and for tests -----------------------------

    def set_load(self, index: int, load: float) -> None:
        self.gpus[index].load = min(max(load, 0.0), 1.0)

    def set_lost(self, index: int, lost: bool = True) -> None:
        self.gpus[index].lost = lost

    def inject_xid(self, index: int, count: int = 1) -> None:
        self.gpus[index].xid_total += count

    def set_memory(self, index: int, fraction: float | None) -> None:
        """Move GPU ``index``'s used memory towards ``fraction`` of the total (None: back
        to following its load). It gets there in about 20 cycles, as an allocator grows."""
        if fraction is not None:
            fraction = min(max(fraction, 0.0), 1.0)
        self.gpus[index].memory_fraction = fraction

    # --- collection ------------------------------------------------------------------

    def collect(self) -> Iterable[Sample]:
        now = self.clock()
        out: list[Sample] = []
        for gpu, labels in zip(self.gpus, self._labels, strict=True):
            if gpu.lost:
                out.append(Sample("gpu_up", labels, 0.0, now))
                continue
            self._step(gpu)
            util_pct = round(gpu.util * 100)
            power_mw = round((70.0 + 610.0 * gpu.util + gpu.rng.uniform(-8, 8)) * 1000)
            sm_mhz = MAX_SM_MHZ if gpu.temp_c < 83 else MAX_SM_MHZ - 15 * round(gpu.temp_c - 83)
            values = (
                ("gpu_up", 1.0),
                ("gpu_utilization_ratio", util_pct / 100),
                ("gpu_memory_used_bytes", float(gpu.memory_mib * MIB)),
                ("gpu_memory_total_bytes", float(TOTAL_MIB * MIB)),
                ("gpu_memory_headroom_ratio",
                 headroom(TOTAL_MIB - RESERVED_MIB - gpu.memory_mib, TOTAL_MIB)),
                ("gpu_memory_bus_width_bits", float(MEM_BUS_BITS)),
                ("gpu_memory_clock_max_hertz", float(MEM_MHZ * 1_000_000)),
                ("gpu_memory_bandwidth_peak_bytes_per_second", PEAK_BANDWIDTH),
                ("gpu_temperature_celsius", float(round(gpu.temp_c))),
                ("gpu_power_watts", power_mw / 1000),
                ("gpu_power_limit_watts", POWER_LIMIT_W),
                ("gpu_sm_clock_hertz", float(sm_mhz * 1_000_000)),
                ("gpu_memory_clock_hertz", float(MEM_MHZ * 1_000_000)),
                ("gpu_throttle_reasons", 0.0 if gpu.temp_c < 83 else 32.0),
                ("gpu_xid_errors_total", float(gpu.xid_total)),
            )
            out.extend(Sample(signal, labels, value, now) for signal, value in values
                       if value is not None)
            out.append(Sample("gpu_ecc_errors_total", (*labels, ("type", "corrected")),
                              float(gpu.ecc_corrected), now))
            out.append(Sample("gpu_ecc_errors_total", (*labels, ("type", "uncorrected")),
                              0.0, now))
            out.extend(self._processes(gpu, labels, now))
        return out

    @staticmethod
    def _processes(gpu: _GpuState, labels: tuple[tuple[str, str], ...],
                   now: float) -> list[Sample]:
        """The GPU's compute processes: its server's, and a foreign one while it holds
        memory (``set_memory``); together they hold the GPU's used memory."""
        foreign_mib = gpu.memory_mib - gpu.server_mib if gpu.foreign else 0
        # Once unpinned it frees its memory as headroom comes back, and is gone when what
        # it holds is within the server's own noise.
        gpu.foreign = foreign_mib > (0 if gpu.memory_fraction is not None else 256)
        if not gpu.foreign:
            foreign_mib = 0
        out = [Sample("gpu_process_memory_used_bytes",
                      make_labels(labels, pid=str(SERVER_PID_BASE + gpu.index)),
                      float((gpu.memory_mib - foreign_mib) * MIB), now)]
        if foreign_mib:
            out.append(Sample("gpu_process_memory_used_bytes",
                              make_labels(labels, pid=str(FOREIGN_PID_BASE + gpu.index)),
                              float(foreign_mib * MIB), now))
        return out

    @staticmethod
    def _step(gpu: _GpuState) -> None:
        """One second of a mean-reverting walk: utilisation noisy, temperature lagging."""
        rng = gpu.rng
        gpu.util += 0.25 * (gpu.load - gpu.util) + rng.gauss(0, 0.03)
        gpu.util = min(max(gpu.util, 0.0), 1.0)
        if gpu.memory_fraction is None:
            target_mib = server_target_mib(gpu.load) + rng.randint(-64, 64)
        else:
            target_mib = int(gpu.memory_fraction * TOTAL_MIB) + rng.randint(-64, 64)
            gpu.foreign = True
        step = gpu.memory_mib + (target_mib - gpu.memory_mib) // 8
        gpu.memory_mib = min(TOTAL_MIB - RESERVED_MIB, max(step, 0))
        server_step = gpu.server_mib + (server_target_mib(gpu.load) - gpu.server_mib) // 8
        gpu.server_mib = min(gpu.memory_mib, server_step)
        target_temp = 34.0 + 40.0 * gpu.util
        gpu.temp_c += 0.05 * (target_temp - gpu.temp_c) + rng.gauss(0, 0.1)
        if rng.random() < 1e-4:  # the odd corrected ECC error a real HBM3 reports
            gpu.ecc_corrected += 1
        gpu.temp_c = max(gpu.temp_c, 20.0)
