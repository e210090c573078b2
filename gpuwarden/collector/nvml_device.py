"""Reading one healthy GPU through NVML: its fields, its compute processes, its MIG devices.

The NVML collector (``nvml.py``) finds the GPUs, keeps their handles and drains XID
events; for each GPU that answers it asks :class:`DeviceReader` for the cycle's samples.
Which call answers which signal, the fallbacks to deprecated calls, the units and the
MIG naming are the contract written in ``nvml.py``'s docstring. Each value read is also
written into ``state``, the device's entry in a recorded scenario
(``bench/bench_nvml.py --record``; the format ``tests/collector/fake_pynvml.py`` replays).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from gpuwarden.collector.nvml_calls import NvmlCalls, NvmlGpu, text
from gpuwarden.errors import GpuLost
from gpuwarden.model import Labels, Sample, make_labels

log = logging.getLogger(__name__)

MHZ = 1_000_000.0
MIG_MODE_EVERY_SECONDS = 60.0
TRANSFERS_PER_CLOCK = 2


def peak_memory_bandwidth(bus_width_bits: float, clock_max_hertz: float) -> float:
    """The memory interface's peak in bytes/s: 2 transfers per clock x max clock x width / 8.

    NVML's memory clock is half the per-pin data rate for HBM2e, HBM3 and GDDR6 alike,
    hence the 2: an H100 SXM gives 2 x 2619 MHz x 5120 bit / 8 = 3.35 TB/s, an A100 SXM
    80GB 2 x 1593 MHz x 5120 / 8 = 2.04 TB/s, an L4 2 x 6251 MHz x 192 / 8 = 300 GB/s,
    NVIDIA's datasheet figures. It is what the bus could move, never what a workload
    achieves (that is less, and is not measured here). The simulated GPUs (``sim.py``)
    use the same formula.
    """
    return TRANSFERS_PER_CLOCK * clock_max_hertz * bus_width_bits / 8


def headroom(free: float, total: float) -> float | None:
    """Free over total device memory; None when the total is unknown (zero)."""
    return free / total if total > 0 else None


def gpu_labels(node: str, gpu: str, uuid: str, model: str, **extra: str) -> Labels:
    """The labels of a GPU series: node, gpu (index, or ``index/GI id`` for MIG), uuid, model."""
    return make_labels(node=node, gpu=gpu, uuid=uuid, model=model, **extra)


class DeviceReader:
    """Reads the samples of one GPU a cycle; MIG device names are looked up once each."""

    def __init__(self, calls: NvmlCalls, node: str,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self._calls = calls
        self._node = node
        self._monotonic = monotonic
        self._mig_cache: dict[str, tuple[int, str]] = {}  # MIG uuid -> (GI id, name)

    def read(self, gpu: NvmlGpu, ts: float, state: dict[str, Any]) -> list[Sample]:
        """``gpu_up 1`` and every field ``gpu`` supports; raises ``GpuLost``."""
        calls, nv, h, labels = self._calls, self._calls.module, gpu.handle, gpu.labels
        field = calls.field
        out = [Sample("gpu_up", labels, 1.0, ts)]

        def put(signal: str, value: float | None, lbl: Labels = labels) -> None:
            if value is not None:
                out.append(Sample(signal, lbl, float(value), ts))

        util = field(gpu, "utilization", "nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            state["utilization"] = {"gpu": int(util.gpu), "memory": int(util.memory)}
            put("gpu_utilization_ratio", util.gpu / 100.0)

        mem = self._memory(gpu, h)
        if mem is not None:
            state["memory"] = mem
            put("gpu_memory_used_bytes", mem["used"])
            put("gpu_memory_total_bytes", mem["total"])
            put("gpu_memory_headroom_ratio", headroom(mem["free"], mem["total"]))

        bus, clock_max = self._static(gpu, h, state)
        put("gpu_memory_bus_width_bits", bus)
        put("gpu_memory_clock_max_hertz", None if clock_max is None else clock_max * MHZ)
        if bus is not None and clock_max is not None:
            put("gpu_memory_bandwidth_peak_bytes_per_second",
                peak_memory_bandwidth(bus, clock_max * MHZ))

        temp = field(gpu, "temperature_v", "nvmlDeviceGetTemperatureV", h,
                     nv.NVML_TEMPERATURE_GPU)
        if temp is None and calls.fell_back(gpu, "temperature_v", "nvmlDeviceGetTemperatureV"):
            temp = field(gpu, "temperature", "nvmlDeviceGetTemperature", h,
                         nv.NVML_TEMPERATURE_GPU)
        if temp is not None:
            state["temperature_c"] = int(temp)
            put("gpu_temperature_celsius", temp)

        power = field(gpu, "power", "nvmlDeviceGetPowerUsage", h)
        limit = field(gpu, "power_limit", "nvmlDeviceGetEnforcedPowerLimit", h)
        if power is not None:
            state["power_usage_mw"] = int(power)
            put("gpu_power_watts", power / 1000.0)
        if limit is not None:
            state["enforced_power_limit_mw"] = int(limit)
            put("gpu_power_limit_watts", limit / 1000.0)

        sm = field(gpu, "clock_sm", "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM)
        memclk = field(gpu, "clock_mem", "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_MEM)
        clocks = {k: int(v) for k, v in (("sm", sm), ("mem", memclk)) if v is not None}
        if clocks:
            state["clocks_mhz"] = clocks
        put("gpu_sm_clock_hertz", None if sm is None else sm * MHZ)
        put("gpu_memory_clock_hertz", None if memclk is None else memclk * MHZ)

        reasons = field(gpu, "clock_events", "nvmlDeviceGetCurrentClocksEventReasons", h)
        if reasons is None and calls.fell_back(gpu, "clock_events",
                                               "nvmlDeviceGetCurrentClocksEventReasons"):
            reasons = field(gpu, "throttle", "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        if reasons is not None:
            state["clocks_event_reasons"] = int(reasons)
            put("gpu_throttle_reasons", reasons)

        ecc: dict[str, int] = {}
        for kind, etype in (("corrected", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                            ("uncorrected", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
            count = field(gpu, f"ecc_{kind}", "nvmlDeviceGetTotalEccErrors", h, etype,
                          nv.NVML_VOLATILE_ECC)
            if count is not None:
                ecc[kind] = int(count)
                put("gpu_ecc_errors_total", count,
                    gpu_labels(self._node, str(gpu.index), gpu.uuid, gpu.name, type=kind))
        if ecc:
            state["ecc_volatile"] = ecc

        mig_samples, mig_mode = self._mig(gpu, h, ts, state)
        if not mig_mode:  # in MIG mode each instance lists its own processes
            out.extend(self._processes(gpu, h, ts, state))
        out.extend(mig_samples)
        return out

    def _static(self, gpu: NvmlGpu, h: Any, state: dict[str, Any]) -> tuple[int | None,
                                                                           int | None]:
        """Memory bus width (bits) and max memory clock (MHz), fixed by the board.

        Asked until answered once (a passing failure is retried next cycle), then served
        from ``gpu``, which a re-init replaces; a call the GPU or driver does not support
        is not asked again (``NvmlCalls.field``). A zero answer (unified-memory parts
        without a memory bus of their own) counts as unsupported: no figure.
        """
        calls = self._calls
        if gpu.memory_bus_width_bits is None:
            gpu.memory_bus_width_bits = self._positive(
                gpu, "bus_width", calls.field(gpu, "bus_width", "nvmlDeviceGetMemoryBusWidth", h))
        if gpu.memory_clock_max_mhz is None:
            gpu.memory_clock_max_mhz = self._positive(
                gpu, "clock_mem_max", calls.field(gpu, "clock_mem_max", "nvmlDeviceGetMaxClockInfo",
                                                  h, calls.module.NVML_CLOCK_MEM))
        if gpu.memory_bus_width_bits is not None:
            state["memory_bus_width_bits"] = gpu.memory_bus_width_bits
        if gpu.memory_clock_max_mhz is not None:
            state["max_clocks_mhz"] = {"mem": gpu.memory_clock_max_mhz}
        return gpu.memory_bus_width_bits, gpu.memory_clock_max_mhz

    @staticmethod
    def _positive(gpu: NvmlGpu, key: str, value: Any) -> int | None:
        if value is None:
            return None
        if int(value) <= 0:
            gpu.unsupported.add(key)
            log.debug("GPU %d: %s reads %s; treated as unsupported", gpu.index, key, value)
            return None
        return int(value)

    def _memory(self, gpu: NvmlGpu, h: Any) -> dict[str, int] | None:
        calls = self._calls
        version = getattr(calls.module, "nvmlMemory_v2", None)
        if version is not None and "memory_v2" not in gpu.unsupported:
            try:
                m = calls.field(gpu, "memory_v2", "nvmlDeviceGetMemoryInfo", h, version=version)
            except TypeError:  # an old pynvml whose binding has no version argument
                gpu.unsupported.add("memory_v2")
                m = None
            if m is not None:
                return {"total": int(m.total), "reserved": int(m.reserved),
                        "used": int(m.used), "free": int(m.free)}
        m = calls.field(gpu, "memory", "nvmlDeviceGetMemoryInfo", h)
        if m is None:
            return None
        return {"total": int(m.total), "used": int(m.used), "free": int(m.free)}

    def _process_list(self, gpu: NvmlGpu, key: str, h: Any) -> list[Any] | None:
        """The compute processes on handle ``h`` (v3, else v2 on a driver without v3)."""
        calls = self._calls
        procs = calls.field(gpu, key, "nvmlDeviceGetComputeRunningProcesses", h)
        if procs is None and calls.fell_back(gpu, key, "nvmlDeviceGetComputeRunningProcesses_v3"):
            procs = calls.field(gpu, f"{key}_v2", "nvmlDeviceGetComputeRunningProcesses_v2", h)
        return None if procs is None else list(procs)

    @staticmethod
    def _per_pid(procs: list[Any], recorded: list[dict[str, Any]]) -> dict[int, int]:
        """Device memory per pid (summed over a pid's entries), recording what was read."""
        per_pid: dict[int, int] = {}
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            recorded.append({"pid": int(p.pid), "usedGpuMemory": used})
            if used is not None:  # None: NVML cannot tell (containers, WDDM)
                per_pid[int(p.pid)] = per_pid.get(int(p.pid), 0) + int(used)
        return per_pid

    def _process_samples(self, per_pid: dict[int, int], gpu: str, uuid: str, model: str,
                         ts: float) -> list[Sample]:
        return [
            Sample("gpu_process_memory_used_bytes",
                   gpu_labels(self._node, gpu, uuid, model, pid=str(pid)), float(b), ts)
            for pid, b in sorted(per_pid.items())
        ]

    def _processes(
        self, gpu: NvmlGpu, h: Any, ts: float, state: dict[str, Any]
    ) -> list[Sample]:
        procs = self._process_list(gpu, "processes", h)
        if procs is None:
            return []
        recorded: list[dict[str, Any]] = []
        per_pid = self._per_pid(procs, recorded)
        state["processes"] = recorded
        return self._process_samples(per_pid, str(gpu.index), gpu.uuid, gpu.name, ts)

    def _mig_mode(self, gpu: NvmlGpu, h: Any) -> tuple[int, int] | None:
        """(current, pending) MIG mode, asked at most every ``MIG_MODE_EVERY_SECONDS``.

        On a real H200 (driver 580.159.04) ``nvmlDeviceGetMigMode`` took 364 us a call,
        four fifths of a whole cycle's NVML time (``bench/bench_nvml.py``; the recording
        is ``tests/fixtures/nvml/nvml-1xh200-matmul-load.json``). The mode only changes
        through a GPU reset, which a re-init follows, so a minute-old answer is current.
        """
        now = self._monotonic()
        if gpu.mig_mode is None or now - gpu.mig_mode_read_at >= MIG_MODE_EVERY_SECONDS:
            mode = self._calls.field(gpu, "mig_mode", "nvmlDeviceGetMigMode", h)
            if mode is None:
                return gpu.mig_mode if "mig_mode" not in gpu.unsupported else None
            gpu.mig_mode, gpu.mig_mode_read_at = (int(mode[0]), int(mode[1])), now
        return gpu.mig_mode

    def _mig(self, gpu: NvmlGpu, h: Any, ts: float,
             state: dict[str, Any]) -> tuple[list[Sample], bool]:
        """The samples of each GPU instance, and whether ``gpu`` is in MIG mode."""
        calls = self._calls
        mode = self._mig_mode(gpu, h)
        if mode is None:
            return [], False
        state["mig_mode"] = list(mode)
        if int(mode[0]) != int(getattr(calls.module, "NVML_DEVICE_MIG_ENABLE", 1)):
            return [], False
        if gpu.max_mig is None:
            gpu.max_mig = calls.field(gpu, "max_mig", "nvmlDeviceGetMaxMigDeviceCount", h)
            if gpu.max_mig is None:
                return [], True
        state["max_mig_devices"] = gpu.max_mig
        out: list[Sample] = []
        instances: dict[int, tuple[str, str]] = {}  # GI id -> (uuid, name) of its first CI
        per_pid: dict[int, dict[int, int]] = {}  # GI id -> pid -> bytes
        devices: list[dict[str, Any]] = []
        for i in range(gpu.max_mig):
            try:
                mig = calls.call("nvmlDeviceGetMigDeviceHandleByIndex", h, i)
                uuid = text(calls.call("nvmlDeviceGetUUID", mig))
                if uuid not in self._mig_cache:
                    gi = int(calls.call("nvmlDeviceGetGpuInstanceId", mig))
                    self._mig_cache[uuid] = (gi, text(calls.call("nvmlDeviceGetName", mig)))
                gi, name = self._mig_cache[uuid]
                mem = calls.call("nvmlDeviceGetMemoryInfo", mig)
            except Exception as exc:
                if not calls.is_error(exc):
                    raise
                if getattr(exc, "value", None) in calls.lost_codes():
                    raise GpuLost("nvmlDeviceGetMigDeviceHandleByIndex") from exc
                continue  # NotFound: an empty slot
            device = {"index": i, "uuid": uuid, "name": name, "gpu_instance_id": gi,
                      "memory": {"total": int(mem.total), "used": int(mem.used),
                                 "free": int(mem.free)}}
            devices.append(device)
            procs = self._process_list(gpu, f"mig{i}_processes", mig)
            if procs is not None:
                recorded: list[dict[str, Any]] = []
                # A pid runs in one compute instance: listed again, it is the same process.
                for pid, used in self._per_pid(procs, recorded).items():
                    per_pid.setdefault(gi, {}).setdefault(pid, used)
                device["processes"] = recorded
            if gi in instances:
                continue  # compute instances of one GPU instance share its memory
            instances[gi] = (uuid, name)
            labels = gpu_labels(self._node, f"{gpu.index}/{gi}", uuid, name)
            out.append(Sample("gpu_memory_used_bytes", labels, float(mem.used), ts))
            out.append(Sample("gpu_memory_total_bytes", labels, float(mem.total), ts))
            ratio = headroom(float(mem.free), float(mem.total))
            if ratio is not None:
                out.append(Sample("gpu_memory_headroom_ratio", labels, ratio, ts))
        for gi, pids in sorted(per_pid.items()):
            uuid, name = instances[gi]
            out.extend(self._process_samples(pids, f"{gpu.index}/{gi}", uuid, name, ts))
        state["mig_devices"] = devices
        return out, True
