"""Reading one healthy GPU through NVML: its fields, its compute processes, its MIG devices.

The NVML collector (``nvml.py``) finds the GPUs, keeps their handles and drains XID
events; for each GPU that answers it asks :class:`DeviceReader` for the cycle's samples.
Which call answers which signal, the fallbacks to deprecated calls, the units and the
MIG naming are the contract written in ``nvml.py``'s docstring. Each value read is also
written into ``state``, the device's entry in a recorded scenario
(``bench/bench_nvml.py --record``; the format ``tests/collector/fake_pynvml.py`` replays).
"""

from __future__ import annotations

from typing import Any

from gpuwarden.collector.nvml_calls import NvmlCalls, NvmlGpu, text
from gpuwarden.errors import GpuLost
from gpuwarden.model import Labels, Sample, make_labels

MHZ = 1_000_000.0


def gpu_labels(node: str, gpu: str, uuid: str, model: str, **extra: str) -> Labels:
    """The labels of a GPU series: node, gpu (index, or ``index/GI id`` for MIG), uuid, model."""
    return make_labels(node=node, gpu=gpu, uuid=uuid, model=model, **extra)


class DeviceReader:
    """Reads the samples of one GPU a cycle; MIG device names are looked up once each."""

    def __init__(self, calls: NvmlCalls, node: str) -> None:
        self._calls = calls
        self._node = node
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

        out.extend(self._processes(gpu, h, ts, state))
        out.extend(self._mig(gpu, h, ts, state))
        return out

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

    def _processes(
        self, gpu: NvmlGpu, h: Any, ts: float, state: dict[str, Any]
    ) -> list[Sample]:
        calls = self._calls
        procs = calls.field(gpu, "processes", "nvmlDeviceGetComputeRunningProcesses", h)
        if procs is None and calls.fell_back(gpu, "processes",
                                             "nvmlDeviceGetComputeRunningProcesses_v3"):
            procs = calls.field(gpu, "processes_v2", "nvmlDeviceGetComputeRunningProcesses_v2",
                                h)
        if procs is None:
            return []
        per_pid: dict[int, int] = {}
        recorded = []
        for p in procs:
            used = getattr(p, "usedGpuMemory", None)
            recorded.append({"pid": int(p.pid), "usedGpuMemory": used})
            if used is not None:  # None: NVML cannot tell (containers, WDDM)
                per_pid[int(p.pid)] = per_pid.get(int(p.pid), 0) + int(used)
        state["processes"] = recorded
        return [
            Sample("gpu_process_memory_used_bytes",
                   gpu_labels(self._node, str(gpu.index), gpu.uuid, gpu.name, pid=str(pid)),
                   float(b), ts)
            for pid, b in sorted(per_pid.items())
        ]

    def _mig(self, gpu: NvmlGpu, h: Any, ts: float, state: dict[str, Any]) -> list[Sample]:
        calls = self._calls
        mode = calls.field(gpu, "mig_mode", "nvmlDeviceGetMigMode", h)
        if mode is None:
            return []
        state["mig_mode"] = [int(mode[0]), int(mode[1])]
        if int(mode[0]) != int(getattr(calls.module, "NVML_DEVICE_MIG_ENABLE", 1)):
            return []
        if gpu.max_mig is None:
            gpu.max_mig = calls.field(gpu, "max_mig", "nvmlDeviceGetMaxMigDeviceCount", h)
            if gpu.max_mig is None:
                return []
        state["max_mig_devices"] = gpu.max_mig
        out: list[Sample] = []
        seen: set[int] = set()
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
            devices.append({"index": i, "uuid": uuid, "name": name, "gpu_instance_id": gi,
                            "memory": {"total": int(mem.total), "used": int(mem.used),
                                       "free": int(mem.free)}})
            if gi in seen:
                continue
            seen.add(gi)
            labels = gpu_labels(self._node, f"{gpu.index}/{gi}", uuid, name)
            out.append(Sample("gpu_memory_used_bytes", labels, float(mem.used), ts))
            out.append(Sample("gpu_memory_total_bytes", labels, float(mem.total), ts))
        state["mig_devices"] = devices
        return out
