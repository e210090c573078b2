"""A fake ``pynvml`` module that replays device states from a JSON scenario file.

Why a module object and not ``monkeypatch`` on functions: the collector takes its NVML
module as a constructor argument (the import seam), so a test hands it this object and
exercises exactly the code path the real driver would, including error handling.

The constants, ``NVMLError`` and every ``NVMLError_*`` subclass are the real ones, copied
from the installed ``pynvml``, so ``except pynvml.NVMLError_GpuIsLost`` and ``e.value``
behave as they do on a GPU node. Only functions are faked; a function the fake does not
model is simply absent (AttributeError), which shows the gap instead of hiding it.

Scenario format (``tests/fixtures/nvml/*.json``; ``bench/bench_nvml.py --record`` writes
the same format from a real GPU)::

    {"origin": "...", "driver_version": "550.54.15",
     "init_error": null | "LibraryNotFound" | "DriverNotLoaded" | ...,
     "missing_functions": ["nvmlDeviceGetMemoryInfo_v2", ...],   # C symbols absent
     "steps": [
        {"devices": [ {device state}, ... ], "events": []},          # full state
        {"patch": {"3": {"lost": true}}, "events": [{"gpu": 3, "xid": 79}]}
     ]}

A device state has ``index, uuid, name, utilization{gpu,memory} (%), memory{total,
reserved, used, free} (bytes, v2 meaning; v1 reports used+reserved), temperature_c,
power_usage_mw, enforced_power_limit_mw, clocks_mhz{sm,mem}, max_clocks_mhz{sm,mem},
memory_bus_width_bits, clocks_event_reasons, ecc_volatile{corrected,uncorrected},
processes[{pid, usedGpuMemory}], mig_mode [current, pending], max_mig_devices,
mig_devices[{index, uuid, name, gpu_instance_id, memory, processes}],
supported_event_types, lost, errors{function name: NVMLError suffix}``.
A missing key means the field raises ``NotSupported``. Later steps patch the previous
state (deep merge per device index); ``advance()`` moves to the next step and queues that
step's events into every event set the device is registered with.
"""

from __future__ import annotations

import copy
import json
import types
from collections import defaultdict, deque
from pathlib import Path
from typing import Any

import pynvml as _real

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "nvml"


class FakeHandle:
    """An opaque device handle, like ``c_nvmlDevice_t``; ``mig`` set for MIG devices."""

    def __init__(self, index: int, mig: int | None = None) -> None:
        self.index, self.mig = index, mig

    def __repr__(self) -> str:
        return f"FakeHandle({self.index}, mig={self.mig})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FakeHandle) and (other.index, other.mig) == (self.index, self.mig)

    def __hash__(self) -> int:
        return hash((self.index, self.mig))


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _error(name: str) -> _real.NVMLError:
    cls = getattr(_real, f"NVMLError_{name}")
    err: _real.NVMLError = cls()
    return err


class FakeNvml(types.ModuleType):
    """The fake module. ``calls`` counts calls per function name, for assertions."""

    def __init__(self, scenario: dict[str, Any]) -> None:
        super().__init__("pynvml")
        for key in dir(_real):  # real constants and exception classes
            value = getattr(_real, key)
            if key.startswith(("NVML", "nvml")) and (
                isinstance(value, int | str) or (isinstance(value, type)
                                                 and issubclass(value, Exception))
            ):
                setattr(self, key, value)
        self.scenario = scenario
        self.missing = set(scenario.get("missing_functions", []))
        self.calls: defaultdict[str, int] = defaultdict(int)
        self.step = 0
        self.states: list[dict[str, Any]] = []
        self._initialised = 0
        self._event_sets: dict[int, deque[types.SimpleNamespace]] = {}
        self._registrations: dict[int, set[int]] = defaultdict(set)  # device -> set ids
        self._apply_step(0)
        # Bind every fake function as a module attribute, as pynvml exposes them.
        for name in dir(_NvmlApi):
            if name.startswith("nvml"):
                method = types.MethodType(getattr(_NvmlApi, name), self)
                setattr(self, name, self._counted(name, method))

    @classmethod
    def from_file(cls, name: str) -> FakeNvml:
        path = Path(name) if "/" in name else FIXTURES / name
        return cls(json.loads(path.read_text()))

    def _counted(self, name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return fn(*args, **kwargs)

        wrapper.__name__ = name
        return wrapper

    # --- scenario replay ---------------------------------------------------------------

    def _apply_step(self, n: int) -> None:
        step = self.scenario["steps"][n]
        if "devices" in step:
            self.states = [copy.deepcopy(d) for d in step["devices"]]
        for key, patch in step.get("patch", {}).items():
            i = int(key)
            self.states[i] = _merge(self.states[i], patch)
        for event in step.get("events", []):
            etype = event.get("type", "XidCriticalError")
            mask = getattr(_real, f"nvmlEventType{etype}") if isinstance(etype, str) else etype
            data = types.SimpleNamespace(
                device=FakeHandle(int(event["gpu"])), eventType=mask,
                eventData=int(event.get("xid", 0)), gpuInstanceId=0xFFFFFFFF,
                computeInstanceId=0xFFFFFFFF)
            for set_id in self._registrations[int(event["gpu"])]:
                self._event_sets[set_id].append(data)

    def advance(self, steps: int = 1) -> None:
        """Move to the next step(s), clamped at the last; queue their events."""
        for _ in range(steps):
            if self.step + 1 < len(self.scenario["steps"]):
                self.step += 1
                self._apply_step(self.step)

    # --- helpers -----------------------------------------------------------------------

    def _need_init(self) -> None:
        if not self._initialised:
            raise _error("Uninitialized")

    def _symbol(self, name: str) -> None:
        if name in self.missing:
            raise _error("FunctionNotFound")

    def _dev(self, handle: FakeHandle, fname: str) -> dict[str, Any]:
        """The state behind ``handle``, raising what the scenario says ``fname`` raises."""
        self._need_init()
        self._symbol(fname)
        state = self.states[handle.index]
        if state.get("lost"):
            raise _error("GpuIsLost")
        if fname in state.get("errors", {}):
            raise _error(state["errors"][fname])
        if handle.mig is not None:
            for mig in state.get("mig_devices", []):
                if mig["index"] == handle.mig:
                    return dict(mig)
            raise _error("NotFound")
        return state

    @staticmethod
    def _get(state: dict[str, Any], key: str) -> Any:
        if key not in state:
            raise _error("NotSupported")
        return state[key]

    @property
    def open_event_sets(self) -> int:
        return len(self._event_sets)

    @property
    def initialised(self) -> bool:
        return self._initialised > 0



class _NvmlApi:
    """The NVML functions, kept off ``FakeNvml`` itself so a test can delete one
    (``delattr(fake, name)``) to play an older nvidia-ml-py that lacks the binding."""

    # --- the NVML API subset the collector uses --------------------------------------

    @staticmethod
    def nvmlInit(nv: FakeNvml) -> None:
        if nv.scenario.get("init_error"):
            raise _error(nv.scenario["init_error"])
        nv._initialised += 1

    @staticmethod
    def nvmlShutdown(nv: FakeNvml) -> None:
        nv._need_init()
        nv._initialised -= 1

    @staticmethod
    def nvmlSystemGetDriverVersion(nv: FakeNvml) -> str:
        nv._need_init()
        return str(nv.scenario.get("driver_version", "550.54.15"))

    @staticmethod
    def nvmlDeviceGetCount(nv: FakeNvml) -> int:
        nv._need_init()
        return len(nv.states)

    @staticmethod
    def nvmlDeviceGetHandleByIndex(nv: FakeNvml, index: int) -> FakeHandle:
        nv._need_init()
        if index >= len(nv.states):
            raise _error("InvalidArgument")
        if nv.states[index].get("lost"):
            raise _error("GpuIsLost")
        if "nvmlDeviceGetHandleByIndex" in nv.states[index].get("errors", {}):
            raise _error(nv.states[index]["errors"]["nvmlDeviceGetHandleByIndex"])
        return FakeHandle(index)

    @staticmethod
    def nvmlDeviceGetUUID(nv: FakeNvml, handle: FakeHandle) -> str:
        return str(nv._dev(handle, "nvmlDeviceGetUUID")["uuid"])

    @staticmethod
    def nvmlDeviceGetName(nv: FakeNvml, handle: FakeHandle) -> str:
        return str(nv._dev(handle, "nvmlDeviceGetName")["name"])

    @staticmethod
    def nvmlDeviceGetUtilizationRates(nv: FakeNvml, handle: FakeHandle) -> types.SimpleNamespace:
        u = nv._get(nv._dev(handle, "nvmlDeviceGetUtilizationRates"), "utilization")
        return types.SimpleNamespace(gpu=u["gpu"], memory=u["memory"])

    @staticmethod
    def nvmlDeviceGetMemoryInfo(nv: FakeNvml, handle: FakeHandle,
                                version: int | None = None) -> Any:
        m = nv._get(nv._dev(handle, "nvmlDeviceGetMemoryInfo"), "memory")
        if version:
            nv._symbol("nvmlDeviceGetMemoryInfo_v2")
            if version != _real.nvmlMemory_v2:
                raise _error("ArgumentVersionMismatch")
            return types.SimpleNamespace(version=version, total=m["total"],
                                         reserved=m.get("reserved", 0), used=m["used"],
                                         free=m["free"])
        # v1 folds driver-reserved memory into used.
        return types.SimpleNamespace(total=m["total"], used=m["used"] + m.get("reserved", 0),
                                     free=m["free"])

    @staticmethod
    def nvmlDeviceGetTemperatureV(nv: FakeNvml, handle: FakeHandle, sensor: int,
                                  version: int = _real.nvmlTemperature_v1) -> int:
        state = nv._dev(handle, "nvmlDeviceGetTemperatureV")
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise _error("NotSupported")
        return int(nv._get(state, "temperature_c"))

    @staticmethod
    def nvmlDeviceGetTemperature(nv: FakeNvml, handle: FakeHandle, sensor: int) -> int:
        state = nv._dev(handle, "nvmlDeviceGetTemperature")
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise _error("NotSupported")
        return int(nv._get(state, "temperature_c"))

    @staticmethod
    def nvmlDeviceGetPowerUsage(nv: FakeNvml, handle: FakeHandle) -> int:
        return int(nv._get(nv._dev(handle, "nvmlDeviceGetPowerUsage"), "power_usage_mw"))

    @staticmethod
    def nvmlDeviceGetEnforcedPowerLimit(nv: FakeNvml, handle: FakeHandle) -> int:
        state = nv._dev(handle, "nvmlDeviceGetEnforcedPowerLimit")
        return int(nv._get(state, "enforced_power_limit_mw"))

    @staticmethod
    def nvmlDeviceGetClockInfo(nv: FakeNvml, handle: FakeHandle, clock_type: int) -> int:
        clocks = nv._get(nv._dev(handle, "nvmlDeviceGetClockInfo"), "clocks_mhz")
        key = {_real.NVML_CLOCK_SM: "sm", _real.NVML_CLOCK_MEM: "mem"}.get(clock_type)
        if key is None or key not in clocks:
            raise _error("NotSupported")
        return int(clocks[key])

    @staticmethod
    def nvmlDeviceGetMaxClockInfo(nv: FakeNvml, handle: FakeHandle, clock_type: int) -> int:
        clocks = nv._get(nv._dev(handle, "nvmlDeviceGetMaxClockInfo"), "max_clocks_mhz")
        key = {_real.NVML_CLOCK_SM: "sm", _real.NVML_CLOCK_MEM: "mem"}.get(clock_type)
        if key is None or key not in clocks:
            raise _error("NotSupported")
        return int(clocks[key])

    @staticmethod
    def nvmlDeviceGetMemoryBusWidth(nv: FakeNvml, handle: FakeHandle) -> int:
        state = nv._dev(handle, "nvmlDeviceGetMemoryBusWidth")
        return int(nv._get(state, "memory_bus_width_bits"))

    @staticmethod
    def nvmlDeviceGetCurrentClocksEventReasons(nv: FakeNvml, handle: FakeHandle) -> int:
        state = nv._dev(handle, "nvmlDeviceGetCurrentClocksEventReasons")
        return int(nv._get(state, "clocks_event_reasons"))

    @staticmethod
    def nvmlDeviceGetCurrentClocksThrottleReasons(nv: FakeNvml, handle: FakeHandle) -> int:
        state = nv._dev(handle, "nvmlDeviceGetCurrentClocksThrottleReasons")
        return int(nv._get(state, "clocks_event_reasons"))

    @staticmethod
    def nvmlDeviceGetTotalEccErrors(nv: FakeNvml, handle: FakeHandle, error_type: int,
                                    counter_type: int) -> int:
        ecc = nv._get(nv._dev(handle, "nvmlDeviceGetTotalEccErrors"), "ecc_volatile")
        if counter_type != _real.NVML_VOLATILE_ECC:
            raise _error("NotSupported")  # only volatile counts are modelled
        key = {_real.NVML_MEMORY_ERROR_TYPE_CORRECTED: "corrected",
               _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: "uncorrected"}[error_type]
        return int(ecc[key])

    @staticmethod
    def _procs(nv: FakeNvml, handle: FakeHandle, fname: str) -> list[types.SimpleNamespace]:
        state = nv._dev(handle, fname)
        procs = nv._get(state, "processes")
        gi = state.get("gpu_instance_id", 0xFFFFFFFF)  # set on a MIG device's state
        ci = state.get("compute_instance_id", 0xFFFFFFFF)
        return [types.SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("usedGpuMemory"),
                                      gpuInstanceId=gi, computeInstanceId=ci)
                for p in procs]

    @staticmethod
    def nvmlDeviceGetComputeRunningProcesses(nv: FakeNvml, handle: FakeHandle) -> Any:
        if "nvmlDeviceGetComputeRunningProcesses_v3" in nv.missing:
            # pynvml's @throwOnVersionMismatch turns FunctionNotFound into this.
            raise _real.NVMLLibraryMismatchError("Unversioned function called")
        return _NvmlApi._procs(nv, handle, "nvmlDeviceGetComputeRunningProcesses")

    @staticmethod
    def nvmlDeviceGetComputeRunningProcesses_v2(nv: FakeNvml, handle: FakeHandle) -> Any:
        return _NvmlApi._procs(nv, handle, "nvmlDeviceGetComputeRunningProcesses_v2")

    @staticmethod
    def nvmlDeviceGetMigMode(nv: FakeNvml, handle: FakeHandle) -> list[int]:
        mode = nv._get(nv._dev(handle, "nvmlDeviceGetMigMode"), "mig_mode")
        return [int(mode[0]), int(mode[1])]

    @staticmethod
    def nvmlDeviceGetMaxMigDeviceCount(nv: FakeNvml, handle: FakeHandle) -> int:
        state = nv._dev(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return int(nv._get(state, "max_mig_devices"))

    @staticmethod
    def nvmlDeviceGetMigDeviceHandleByIndex(nv: FakeNvml, handle: FakeHandle,
                                            index: int) -> FakeHandle:
        state = nv._dev(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if not any(m["index"] == index for m in state.get("mig_devices", [])):
            raise _error("NotFound")
        return FakeHandle(handle.index, mig=index)

    @staticmethod
    def nvmlDeviceGetGpuInstanceId(nv: FakeNvml, handle: FakeHandle) -> int:
        if handle.mig is None:
            raise _error("InvalidArgument")
        return int(nv._dev(handle, "nvmlDeviceGetGpuInstanceId")["gpu_instance_id"])

    # --- events ------------------------------------------------------------------------

    @staticmethod
    def nvmlDeviceGetSupportedEventTypes(nv: FakeNvml, handle: FakeHandle) -> int:
        state = nv._dev(handle, "nvmlDeviceGetSupportedEventTypes")
        default = _real.nvmlEventTypeAll
        return int(state.get("supported_event_types", default))

    @staticmethod
    def nvmlEventSetCreate(nv: FakeNvml) -> int:
        nv._need_init()
        nv._symbol("nvmlEventSetCreate")
        set_id = len(nv._event_sets) + 1
        nv._event_sets[set_id] = deque()
        return set_id

    @staticmethod
    def nvmlDeviceRegisterEvents(nv: FakeNvml, handle: FakeHandle, event_types: int,
                                 set_id: int) -> None:
        state = nv._dev(handle, "nvmlDeviceRegisterEvents")
        if event_types & ~int(state.get("supported_event_types", _real.nvmlEventTypeAll)):
            raise _error("NotSupported")
        nv._registrations[handle.index].add(set_id)

    @staticmethod
    def nvmlEventSetWait_v2(nv: FakeNvml, set_id: int, timeout_ms: int) -> types.SimpleNamespace:
        nv._need_init()
        queue = nv._event_sets[set_id]
        if not queue:
            raise _error("Timeout")  # the fake never blocks, whatever timeout_ms says
        return queue.popleft()

    @staticmethod
    def nvmlEventSetWait(nv: FakeNvml, set_id: int, timeout_ms: int) -> types.SimpleNamespace:
        return _NvmlApi.nvmlEventSetWait_v2(nv, set_id, timeout_ms)

    @staticmethod
    def nvmlEventSetFree(nv: FakeNvml, set_id: int) -> None:
        nv._need_init()
        nv._event_sets.pop(set_id, None)
        for sets in nv._registrations.values():
            sets.discard(set_id)


def load(name: str) -> FakeNvml:
    """The fake module for scenario ``name`` (a file in tests/fixtures/nvml/ or a path)."""
    return FakeNvml.from_file(name)
