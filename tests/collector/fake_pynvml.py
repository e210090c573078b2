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
power_usage_mw, enforced_power_limit_mw, clocks_mhz{sm,mem}, clocks_event_reasons,
ecc_volatile{corrected,uncorrected}, processes[{pid, usedGpuMemory}], mig_mode
[current, pending], max_mig_devices, mig_devices[{index, uuid, name, gpu_instance_id,
memory}], supported_event_types, lost, errors{function name: NVMLError suffix}``.
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
        for name in dir(type(self)):
            if name.startswith("nvml") and callable(getattr(type(self), name)):
                setattr(self, name, self._counted(name, getattr(self, name)))

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

    # --- the NVML API subset the collector uses --------------------------------------

    def nvmlInit(self) -> None:
        if self.scenario.get("init_error"):
            raise _error(self.scenario["init_error"])
        self._initialised += 1

    def nvmlShutdown(self) -> None:
        self._need_init()
        self._initialised -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._need_init()
        return str(self.scenario.get("driver_version", "550.54.15"))

    def nvmlDeviceGetCount(self) -> int:
        self._need_init()
        return len(self.states)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._need_init()
        if index >= len(self.states):
            raise _error("InvalidArgument")
        if self.states[index].get("lost"):
            raise _error("GpuIsLost")
        return FakeHandle(index)

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return str(self._dev(handle, "nvmlDeviceGetUUID")["uuid"])

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return str(self._dev(handle, "nvmlDeviceGetName")["name"])

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> types.SimpleNamespace:
        u = self._get(self._dev(handle, "nvmlDeviceGetUtilizationRates"), "utilization")
        return types.SimpleNamespace(gpu=u["gpu"], memory=u["memory"])

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> Any:
        m = self._get(self._dev(handle, "nvmlDeviceGetMemoryInfo"), "memory")
        if version:
            self._symbol("nvmlDeviceGetMemoryInfo_v2")
            if version != _real.nvmlMemory_v2:
                raise _error("ArgumentVersionMismatch")
            return types.SimpleNamespace(version=version, total=m["total"],
                                         reserved=m.get("reserved", 0), used=m["used"],
                                         free=m["free"])
        # v1 folds driver-reserved memory into used.
        return types.SimpleNamespace(total=m["total"], used=m["used"] + m.get("reserved", 0),
                                     free=m["free"])

    def nvmlDeviceGetTemperatureV(self, handle: FakeHandle, sensor: int,
                                  version: int = _real.nvmlTemperature_v1) -> int:
        state = self._dev(handle, "nvmlDeviceGetTemperatureV")
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise _error("NotSupported")
        return int(self._get(state, "temperature_c"))

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        state = self._dev(handle, "nvmlDeviceGetTemperature")
        if sensor != _real.NVML_TEMPERATURE_GPU:
            raise _error("NotSupported")
        return int(self._get(state, "temperature_c"))

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return int(self._get(self._dev(handle, "nvmlDeviceGetPowerUsage"), "power_usage_mw"))

    def nvmlDeviceGetEnforcedPowerLimit(self, handle: FakeHandle) -> int:
        state = self._dev(handle, "nvmlDeviceGetEnforcedPowerLimit")
        return int(self._get(state, "enforced_power_limit_mw"))

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock_type: int) -> int:
        clocks = self._get(self._dev(handle, "nvmlDeviceGetClockInfo"), "clocks_mhz")
        key = {_real.NVML_CLOCK_SM: "sm", _real.NVML_CLOCK_MEM: "mem"}.get(clock_type)
        if key is None or key not in clocks:
            raise _error("NotSupported")
        return int(clocks[key])

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        state = self._dev(handle, "nvmlDeviceGetCurrentClocksEventReasons")
        return int(self._get(state, "clocks_event_reasons"))

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        state = self._dev(handle, "nvmlDeviceGetCurrentClocksThrottleReasons")
        return int(self._get(state, "clocks_event_reasons"))

    def nvmlDeviceGetTotalEccErrors(self, handle: FakeHandle, error_type: int,
                                    counter_type: int) -> int:
        ecc = self._get(self._dev(handle, "nvmlDeviceGetTotalEccErrors"), "ecc_volatile")
        if counter_type != _real.NVML_VOLATILE_ECC:
            raise _error("NotSupported")  # only volatile counts are modelled
        key = {_real.NVML_MEMORY_ERROR_TYPE_CORRECTED: "corrected",
               _real.NVML_MEMORY_ERROR_TYPE_UNCORRECTED: "uncorrected"}[error_type]
        return int(ecc[key])

    def _procs(self, handle: FakeHandle, fname: str) -> list[types.SimpleNamespace]:
        procs = self._get(self._dev(handle, fname), "processes")
        return [types.SimpleNamespace(pid=p["pid"], usedGpuMemory=p.get("usedGpuMemory"),
                                      gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
                for p in procs]

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> Any:
        if "nvmlDeviceGetComputeRunningProcesses_v3" in self.missing:
            # pynvml's @throwOnVersionMismatch turns FunctionNotFound into this.
            raise _real.NVMLLibraryMismatchError("Unversioned function called")
        return self._procs(handle, "nvmlDeviceGetComputeRunningProcesses")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: FakeHandle) -> Any:
        return self._procs(handle, "nvmlDeviceGetComputeRunningProcesses_v2")

    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        mode = self._get(self._dev(handle, "nvmlDeviceGetMigMode"), "mig_mode")
        return [int(mode[0]), int(mode[1])]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:
        state = self._dev(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return int(self._get(state, "max_mig_devices"))

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, index: int) -> FakeHandle:
        state = self._dev(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if not any(m["index"] == index for m in state.get("mig_devices", [])):
            raise _error("NotFound")
        return FakeHandle(handle.index, mig=index)

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeHandle) -> int:
        if handle.mig is None:
            raise _error("InvalidArgument")
        return int(self._dev(handle, "nvmlDeviceGetGpuInstanceId")["gpu_instance_id"])

    # --- events ------------------------------------------------------------------------

    def nvmlDeviceGetSupportedEventTypes(self, handle: FakeHandle) -> int:
        state = self._dev(handle, "nvmlDeviceGetSupportedEventTypes")
        default = _real.nvmlEventTypeAll
        return int(state.get("supported_event_types", default))

    def nvmlEventSetCreate(self) -> int:
        self._need_init()
        self._symbol("nvmlEventSetCreate")
        set_id = len(self._event_sets) + 1
        self._event_sets[set_id] = deque()
        return set_id

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, event_types: int, set_id: int) -> None:
        state = self._dev(handle, "nvmlDeviceRegisterEvents")
        if event_types & ~int(state.get("supported_event_types", _real.nvmlEventTypeAll)):
            raise _error("NotSupported")
        self._registrations[handle.index].add(set_id)

    def nvmlEventSetWait_v2(self, set_id: int, timeout_ms: int) -> types.SimpleNamespace:
        self._need_init()
        queue = self._event_sets[set_id]
        if not queue:
            raise _error("Timeout")  # the fake never blocks, whatever timeout_ms says
        return queue.popleft()

    def nvmlEventSetWait(self, set_id: int, timeout_ms: int) -> types.SimpleNamespace:
        return self.nvmlEventSetWait_v2(set_id, timeout_ms)

    def nvmlEventSetFree(self, set_id: int) -> None:
        self._need_init()
        self._event_sets.pop(set_id, None)
        for sets in self._registrations.values():
            sets.discard(set_id)

    @property
    def open_event_sets(self) -> int:
        return len(self._event_sets)

    @property
    def initialised(self) -> bool:
        return self._initialised > 0


def load(name: str) -> FakeNvml:
    """The fake module for scenario ``name`` (a file in tests/fixtures/nvml/ or a path)."""
    return FakeNvml.from_file(name)
