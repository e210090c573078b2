"""GPU telemetry straight from the driver through NVML (``nvidia-ml-py``, module ``pynvml``).

This is the only module of the package that imports ``pynvml``, and it does so lazily,
inside the collector, so that a node without an NVIDIA driver (or without the wheel)
imports gpuwarden fine. The module object is a constructor argument: tests pass a fake
module that replays recorded device states (``tests/collector/fake_pynvml.py``) instead
of patching functions one by one.

Behaviour that users rely on, and why:

* No driver (``LibraryNotFound``, ``DriverNotLoaded``, ``ImportError``): one warning line,
  no samples, and init is retried only every ``retry_interval`` seconds (5 min), so a
  CPU-only node neither crash-loops nor logs once per cycle.
* ``NotSupported`` / ``NoPermission`` / ``FunctionNotFound`` on one field: that signal is
  *absent* (never a made-up zero) and the field is not polled again for that GPU; the
  other fields carry on. Deprecated calls fall back to their older twins (memory info
  v2 -> v1, ``TemperatureV`` -> ``Temperature``, clock-event -> throttle reasons,
  processes v3 -> v2) because fleets run drivers of several vintages.
* A lost GPU (``GpuIsLost``, ``ResetRequired``) reports ``gpu_up 0`` with the labels cached
  from when it was healthy (uuid/model are empty if it was never seen healthy), and no
  other fields; the other GPUs carry on. Its ``gpu_xid_errors_total`` keeps being
  exported, since XID 79 usually comes with the loss.
* Memory: with v2, ``gpu_memory_used_bytes`` is memory allocated by processes and
  excludes driver-reserved memory (as ``nvidia-smi`` shows it); on the v1 fallback used
  includes the reserved part, which cannot be separated there.
* ECC: the *volatile* (since driver load) corrected / uncorrected totals, as a counter
  with ``type="corrected"|"uncorrected"``; a driver reload is a counter reset.
* XID: the collector registers every GPU for ``nvmlEventTypeXidCriticalError`` on one event
  set and drains it without blocking (``nvmlEventSetWait_v2(set, 0)``) once per cycle.
  ``gpu_xid_errors_total`` counts the events seen since this collector started; the XID
  code itself is logged (one warning per event) and kept in ``last_xid``, not put in a
  label, so the counter stays one stable series per GPU.
* MIG: for a GPU in MIG mode, each MIG device reports ``gpu_memory_used_bytes`` and
  ``gpu_memory_total_bytes`` with ``gpu="<parent index>/<GPU instance id>"`` (dcgm-exporter's
  ``GPU_I_ID``, so both sources name an instance alike), ``uuid`` the MIG UUID and
  ``model`` the MIG device's name (which carries the profile, e.g. "... MIG 1g.10gb").
  Same four labels as every GPU series; no ``gpu_up``/utilisation per instance (NVML has
  no utilisation for MIG handles). Several compute instances of one GPU instance share
  its memory, so the first one stands for the instance.
* Process memory: ``gpu_process_memory_used_bytes{pid}`` per compute process, summed per
  pid; names and command lines are never exported.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, cast

from gpuwarden.collector import Collector
from gpuwarden.errors import GpuHidden, GpuLost
from gpuwarden.model import Labels, Sample, make_labels

log = logging.getLogger(__name__)

MHZ = 1_000_000.0
INIT_RETRY_SECONDS = 300.0
MAX_EVENTS_PER_CYCLE = 1024  # a storm of events must not stall a 1 s cycle

# NVML return codes (nvml.h; identical in every pynvml release). Read from the module when
# it has them, these are only the fallbacks for a module object that lacks a constant.
_CODES = {
    "NVML_ERROR_NOT_SUPPORTED": 3,
    "NVML_ERROR_NO_PERMISSION": 4,
    "NVML_ERROR_NOT_FOUND": 6,
    "NVML_ERROR_DRIVER_NOT_LOADED": 9,
    "NVML_ERROR_TIMEOUT": 10,
    "NVML_ERROR_LIBRARY_NOT_FOUND": 12,
    "NVML_ERROR_FUNCTION_NOT_FOUND": 13,
    "NVML_ERROR_GPU_IS_LOST": 15,
    "NVML_ERROR_RESET_REQUIRED": 16,
    "NVML_ERROR_ARGUMENT_VERSION_MISMATCH": 25,
}


@dataclass(slots=True)
class CallStat:
    """Cumulative cost of one NVML function, for the benchmark and the design note."""

    calls: int = 0
    seconds: float = 0.0

    @property
    def mean_seconds(self) -> float:
        return self.seconds / self.calls if self.calls else 0.0


@dataclass(slots=True)
class _Gpu:
    index: int
    handle: Any = None
    uuid: str = ""
    name: str = ""
    labels: Labels = ()
    lost: bool = False
    unsupported: set[str] = field(default_factory=set)
    xid_total: int | None = None  # None: events not registered for this GPU
    max_mig: int | None = None


def _handle_key(handle: Any) -> Hashable:
    """A comparable key for a device handle.

    pynvml hands out a fresh ctypes pointer object per call, which compares by identity,
    so the key is the address it points to (stable per device). Other handle objects
    (the test fake) are used as they are.
    """
    try:
        address = ctypes.cast(handle, ctypes.c_void_p).value
    except (ctypes.ArgumentError, TypeError):
        return cast(Hashable, handle)
    return address if address is not None else id(handle)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlCollector(Collector):
    """Per-GPU samples read through NVML; see the module docstring for the contract."""

    name = "nvml"

    def __init__(
        self,
        node: str,
        *,
        nvml: ModuleType | None = None,
        retry_interval: float = INIT_RETRY_SECONDS,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.node = node
        self._nvml: Any = nvml
        self.retry_interval = retry_interval
        self._clock = clock
        self._monotonic = monotonic
        self._initialised = False
        self._next_init_at = float("-inf")
        self._warned_unavailable = False
        self._warned: set[tuple[int, str, int]] = set()
        self._event_set: Any = None
        self._gpus: list[_Gpu] = []
        self._by_uuid: dict[str, _Gpu] = {}
        self._by_handle: dict[Hashable, _Gpu] = {}
        self._mig_cache: dict[str, tuple[int, str]] = {}  # MIG uuid -> (GI id, name)
        self.driver_version = ""
        self.call_stats: dict[str, CallStat] = {}
        #: XID code of the latest event per GPU index (also logged as it arrives).
        self.last_xid: dict[int, int] = {}
        #: What the last cycle read, in the fake's scenario format (bench --record).
        self.last_states: list[dict[str, Any]] = []
        self.last_events: list[dict[str, Any]] = []
        #: C symbols found missing (FunctionNotFound) -- recorded into scenarios.
        self.missing_functions: set[str] = set()
        self._state: dict[str, Any] | None = None  # the device state being recorded

    # --- lifecycle -------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True once NVML is initialised; False on a node without a usable driver."""
        return self._initialised

    def _code(self, name: str) -> int:
        return int(getattr(self._nvml, name, _CODES[name]))

    def _init(self) -> bool:
        """Initialise NVML if due; False (after logging once) when there is no driver."""
        if self._initialised:
            return True
        now = self._monotonic()
        if now < self._next_init_at:
            return False
        self._next_init_at = now + self.retry_interval
        try:
            if self._nvml is None:
                import pynvml

                self._nvml = pynvml
            self._call("nvmlInit")
            try:
                count = int(self._call("nvmlDeviceGetCount"))
            except Exception:
                self._call("nvmlShutdown")  # keep NVML's init refcount balanced
                raise
        except ImportError as exc:
            self._unavailable(f"no NVIDIA driver found: pynvml not importable ({exc})")
            return False
        except Exception as exc:
            if not self._is_nvml_error(exc):
                raise
            no_driver = (
                self._code("NVML_ERROR_LIBRARY_NOT_FOUND"),
                self._code("NVML_ERROR_DRIVER_NOT_LOADED"),
            )
            if getattr(exc, "value", None) in no_driver:
                self._unavailable(f"no NVIDIA driver found: {exc}")
            else:
                self._unavailable(f"NVML initialisation failed: {exc}")
            return False
        try:
            self.driver_version = _text(self._call("nvmlSystemGetDriverVersion"))
        except Exception as exc:
            if not self._is_nvml_error(exc):
                raise
        try:
            self._event_set = self._call("nvmlEventSetCreate")
        except Exception as exc:
            if not self._is_nvml_error(exc):
                raise
            log.info("NVML event sets unavailable (%s); XID errors will not be counted", exc)
        self._gpus = [_Gpu(i, labels=self._labels(str(i), "", "")) for i in range(count)]
        self._initialised = True
        if self._warned_unavailable:
            log.warning("NVML now available; GPU metrics enabled")
        self._warned_unavailable = False
        log.info("NVML initialised: %d GPU(s), driver %s", count, self.driver_version or "?")
        return True

    def _unavailable(self, message: str) -> None:
        if not self._warned_unavailable:
            log.warning("%s; GPU metrics disabled (retrying every %gs)", message,
                        self.retry_interval)
            self._warned_unavailable = True
        else:
            log.debug("%s; still disabled", message)

    def close(self) -> None:
        """Free the event set and shut NVML down; a later collect() re-initialises."""
        if not self._initialised:
            return
        for fname, args in (("nvmlEventSetFree", (self._event_set,)), ("nvmlShutdown", ())):
            if fname == "nvmlEventSetFree" and self._event_set is None:
                continue
            try:
                self._call(fname, *args)
            except Exception as exc:
                if not self._is_nvml_error(exc):
                    raise
                log.debug("%s failed on close: %s", fname, exc)
        self._event_set = None
        self._initialised = False
        self._next_init_at = float("-inf")
        self._gpus, self._by_uuid, self._by_handle = [], {}, {}

    # --- NVML call plumbing ----------------------------------------------------------

    def _is_nvml_error(self, exc: BaseException) -> bool:
        base = getattr(self._nvml, "NVMLError", None)
        return isinstance(base, type) and isinstance(exc, base)

    def _call(self, fname: str, *args: Any, **kwargs: Any) -> Any:
        """Call one NVML function, adding its wall time to ``call_stats``."""
        fn = getattr(self._nvml, fname)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stat = self.call_stats.get(fname)
            if stat is None:
                stat = self.call_stats[fname] = CallStat()
            stat.calls += 1
            stat.seconds += time.perf_counter() - start

    def _field(self, gpu: _Gpu, key: str, fname: str, *args: Any, **kwargs: Any) -> Any:
        """Read one field of ``gpu``; None when it is unsupported or failed this cycle.

        ``key`` names the field (several fields share a function). Raises ``GpuLost``.
        """
        if key in gpu.unsupported:
            return None
        if not hasattr(self._nvml, fname):  # an older pynvml without this binding
            gpu.unsupported.add(key)
            return None
        try:
            return self._call(fname, *args, **kwargs)
        except Exception as exc:
            mismatch = getattr(self._nvml, "NVMLLibraryMismatchError", None)
            if isinstance(mismatch, type) and isinstance(exc, mismatch):
                code = self._code("NVML_ERROR_FUNCTION_NOT_FOUND")
            elif self._is_nvml_error(exc):
                code = int(getattr(exc, "value", -1))
            else:
                raise
            exc_name = type(exc).__name__
        self._note_error(fname, code, exc_name)
        if code in (self._code("NVML_ERROR_GPU_IS_LOST"), self._code("NVML_ERROR_RESET_REQUIRED")):
            raise GpuLost(fname)
        permanent = (
            self._code("NVML_ERROR_NOT_SUPPORTED"),
            self._code("NVML_ERROR_NO_PERMISSION"),
            self._code("NVML_ERROR_FUNCTION_NOT_FOUND"),
            self._code("NVML_ERROR_ARGUMENT_VERSION_MISMATCH"),
        )
        if code in permanent:
            gpu.unsupported.add(key)
            log.debug("GPU %d: %s unsupported (NVML error %d); not polled again",
                      gpu.index, key, code)
        elif (gpu.index, key, code) not in self._warned:
            self._warned.add((gpu.index, key, code))
            log.warning("GPU %d: %s failed with NVML error %d; field skipped this cycle",
                        gpu.index, fname, code)
        return None

    def _note_error(self, fname: str, code: int, exc_name: str) -> None:
        """Remember an error in the scenario being recorded (``bench --record``)."""
        if code == self._code("NVML_ERROR_FUNCTION_NOT_FOUND"):
            symbol = {
                "nvmlDeviceGetMemoryInfo": "nvmlDeviceGetMemoryInfo_v2",
                "nvmlDeviceGetComputeRunningProcesses": "nvmlDeviceGetComputeRunningProcesses_v3",
            }.get(fname, fname)
            self.missing_functions.add(symbol)
        elif self._state is not None:
            self._state.setdefault("errors", {})[fname] = exc_name.removeprefix("NVMLError_")

    # --- collection ------------------------------------------------------------------

    def _labels(self, gpu: str, uuid: str, model: str, **extra: str) -> Labels:
        return make_labels(node=self.node, gpu=gpu, uuid=uuid, model=model, **extra)

    def _ensure_handle(self, gpu: _Gpu) -> None:
        """Fetch and cache handle, UUID and name; register the GPU for XID events."""
        if gpu.handle is not None:
            return
        try:
            handle = self._call("nvmlDeviceGetHandleByIndex", gpu.index)
            gpu.uuid = _text(self._call("nvmlDeviceGetUUID", handle))
            gpu.name = _text(self._call("nvmlDeviceGetName", handle))
        except Exception as exc:
            if not self._is_nvml_error(exc):
                raise
            if getattr(exc, "value", None) in (self._code("NVML_ERROR_GPU_IS_LOST"),
                                               self._code("NVML_ERROR_RESET_REQUIRED")):
                raise GpuLost("nvmlDeviceGetHandleByIndex") from exc
            raise GpuHidden(type(exc).__name__.removeprefix("NVMLError_")) from exc
        gpu.handle = handle
        gpu.labels = self._labels(str(gpu.index), gpu.uuid, gpu.name)
        self._by_uuid[gpu.uuid] = gpu
        self._by_handle[_handle_key(handle)] = gpu
        if self._event_set is not None and gpu.xid_total is None:
            xid = int(getattr(self._nvml, "nvmlEventTypeXidCriticalError", 0x8))
            try:
                supported = int(self._call("nvmlDeviceGetSupportedEventTypes", handle))
                if supported & xid:
                    self._call("nvmlDeviceRegisterEvents", handle, xid, self._event_set)
                    gpu.xid_total = 0
            except Exception as exc:
                if not self._is_nvml_error(exc):
                    raise
                log.info("GPU %d: XID events unavailable (%s)", gpu.index, exc)

    def collect(self) -> Iterable[Sample]:
        if not self._init():
            return []
        ts = self._clock()
        self.last_states, self.last_events = [], []
        self._drain_events()
        samples: list[Sample] = []
        for gpu in self._gpus:
            state: dict[str, Any] = {"index": gpu.index}
            self._state = state
            try:
                self._ensure_handle(gpu)
                state.update(uuid=gpu.uuid, name=gpu.name)
                gpu_samples = self._read_gpu(gpu, ts, state)
            except GpuHidden as hidden:
                if (gpu.index, "handle", 0) not in self._warned:
                    self._warned.add((gpu.index, "handle", 0))
                    log.info("GPU %d is not accessible (%s); skipped", gpu.index, hidden)
                state["errors"] = {"nvmlDeviceGetHandleByIndex": str(hidden)}
                self.last_states.append(state)
                continue
            except GpuLost:
                if not gpu.lost:
                    log.warning("GPU %d (%s) is lost (fallen off the bus or needs a reset)",
                                gpu.index, gpu.uuid or "uuid unknown")
                gpu.lost = True
                state = {"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name, "lost": True}
                gpu_samples = [Sample("gpu_up", gpu.labels, 0.0, ts)]
            else:
                if gpu.lost:
                    log.warning("GPU %d (%s) answers again", gpu.index, gpu.uuid)
                gpu.lost = False
            finally:
                self._state = None
            if gpu.xid_total is not None:
                gpu_samples.append(Sample("gpu_xid_errors_total", gpu.labels,
                                          float(gpu.xid_total), ts))
            samples.extend(gpu_samples)
            self.last_states.append(state)
        return samples

    def _read_gpu(self, gpu: _Gpu, ts: float, state: dict[str, Any]) -> list[Sample]:
        nv, h, labels = self._nvml, gpu.handle, gpu.labels
        out = [Sample("gpu_up", labels, 1.0, ts)]

        def put(signal: str, value: float | None, lbl: Labels = labels) -> None:
            if value is not None:
                out.append(Sample(signal, lbl, float(value), ts))

        util = self._field(gpu, "utilization", "nvmlDeviceGetUtilizationRates", h)
        if util is not None:
            state["utilization"] = {"gpu": int(util.gpu), "memory": int(util.memory)}
            put("gpu_utilization_ratio", util.gpu / 100.0)

        mem = self._memory(gpu, h)
        if mem is not None:
            state["memory"] = mem
            put("gpu_memory_used_bytes", mem["used"])
            put("gpu_memory_total_bytes", mem["total"])

        temp = self._field(gpu, "temperature_v", "nvmlDeviceGetTemperatureV", h,
                           nv.NVML_TEMPERATURE_GPU)
        if temp is None and self._fell_back(gpu, "temperature_v", "nvmlDeviceGetTemperatureV"):
            temp = self._field(gpu, "temperature", "nvmlDeviceGetTemperature", h,
                               nv.NVML_TEMPERATURE_GPU)
        if temp is not None:
            state["temperature_c"] = int(temp)
            put("gpu_temperature_celsius", temp)

        power = self._field(gpu, "power", "nvmlDeviceGetPowerUsage", h)
        limit = self._field(gpu, "power_limit", "nvmlDeviceGetEnforcedPowerLimit", h)
        if power is not None:
            state["power_usage_mw"] = int(power)
            put("gpu_power_watts", power / 1000.0)
        if limit is not None:
            state["enforced_power_limit_mw"] = int(limit)
            put("gpu_power_limit_watts", limit / 1000.0)

        sm = self._field(gpu, "clock_sm", "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_SM)
        memclk = self._field(gpu, "clock_mem", "nvmlDeviceGetClockInfo", h, nv.NVML_CLOCK_MEM)
        clocks = {k: int(v) for k, v in (("sm", sm), ("mem", memclk)) if v is not None}
        if clocks:
            state["clocks_mhz"] = clocks
        put("gpu_sm_clock_hertz", None if sm is None else sm * MHZ)
        put("gpu_memory_clock_hertz", None if memclk is None else memclk * MHZ)

        reasons = self._field(gpu, "clock_events", "nvmlDeviceGetCurrentClocksEventReasons", h)
        if reasons is None and self._fell_back(gpu, "clock_events",
                                               "nvmlDeviceGetCurrentClocksEventReasons"):
            reasons = self._field(gpu, "throttle", "nvmlDeviceGetCurrentClocksThrottleReasons", h)
        if reasons is not None:
            state["clocks_event_reasons"] = int(reasons)
            put("gpu_throttle_reasons", reasons)

        ecc: dict[str, int] = {}
        for kind, etype in (("corrected", nv.NVML_MEMORY_ERROR_TYPE_CORRECTED),
                            ("uncorrected", nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED)):
            count = self._field(gpu, f"ecc_{kind}", "nvmlDeviceGetTotalEccErrors", h, etype,
                                nv.NVML_VOLATILE_ECC)
            if count is not None:
                ecc[kind] = int(count)
                put("gpu_ecc_errors_total", count,
                    self._labels(str(gpu.index), gpu.uuid, gpu.name, type=kind))
        if ecc:
            state["ecc_volatile"] = ecc

        out.extend(self._processes(gpu, h, ts, state))
        out.extend(self._mig(gpu, h, ts, state))
        return out

    def _fell_back(self, gpu: _Gpu, key: str, symbol: str) -> bool:
        """True when the newer call ``key`` is gone because the driver lacks ``symbol``.

        Only a missing function (or binding) warrants the deprecated twin: a newer call
        answering NotSupported means the old one would too, so the field stays absent.
        """
        return key in gpu.unsupported and (
            symbol in self.missing_functions or not hasattr(self._nvml, symbol.split("_v", 1)[0])
        )

    def _memory(self, gpu: _Gpu, h: Any) -> dict[str, int] | None:
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        if version is not None and "memory_v2" not in gpu.unsupported:
            try:
                m = self._field(gpu, "memory_v2", "nvmlDeviceGetMemoryInfo", h, version=version)
            except TypeError:  # an old pynvml whose binding has no version argument
                gpu.unsupported.add("memory_v2")
                m = None
            if m is not None:
                return {"total": int(m.total), "reserved": int(m.reserved),
                        "used": int(m.used), "free": int(m.free)}
        m = self._field(gpu, "memory", "nvmlDeviceGetMemoryInfo", h)
        if m is None:
            return None
        return {"total": int(m.total), "used": int(m.used), "free": int(m.free)}

    def _processes(self, gpu: _Gpu, h: Any, ts: float, state: dict[str, Any]) -> list[Sample]:
        procs = self._field(gpu, "processes", "nvmlDeviceGetComputeRunningProcesses", h)
        if procs is None and self._fell_back(gpu, "processes",
                                             "nvmlDeviceGetComputeRunningProcesses_v3"):
            procs = self._field(gpu, "processes_v2", "nvmlDeviceGetComputeRunningProcesses_v2", h)
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
                   self._labels(str(gpu.index), gpu.uuid, gpu.name, pid=str(pid)), float(b), ts)
            for pid, b in sorted(per_pid.items())
        ]

    def _mig(self, gpu: _Gpu, h: Any, ts: float, state: dict[str, Any]) -> list[Sample]:
        mode = self._field(gpu, "mig_mode", "nvmlDeviceGetMigMode", h)
        if mode is None:
            return []
        state["mig_mode"] = [int(mode[0]), int(mode[1])]
        if int(mode[0]) != int(getattr(self._nvml, "NVML_DEVICE_MIG_ENABLE", 1)):
            return []
        if gpu.max_mig is None:
            gpu.max_mig = self._field(gpu, "max_mig", "nvmlDeviceGetMaxMigDeviceCount", h)
            if gpu.max_mig is None:
                return []
        state["max_mig_devices"] = gpu.max_mig
        out: list[Sample] = []
        seen: set[int] = set()
        devices: list[dict[str, Any]] = []
        for i in range(gpu.max_mig):
            try:
                mig = self._call("nvmlDeviceGetMigDeviceHandleByIndex", h, i)
                uuid = _text(self._call("nvmlDeviceGetUUID", mig))
                if uuid not in self._mig_cache:
                    gi = int(self._call("nvmlDeviceGetGpuInstanceId", mig))
                    self._mig_cache[uuid] = (gi, _text(self._call("nvmlDeviceGetName", mig)))
                gi, name = self._mig_cache[uuid]
                mem = self._call("nvmlDeviceGetMemoryInfo", mig)
            except Exception as exc:
                if not self._is_nvml_error(exc):
                    raise
                code = getattr(exc, "value", None)
                if code in (self._code("NVML_ERROR_GPU_IS_LOST"),
                            self._code("NVML_ERROR_RESET_REQUIRED")):
                    raise GpuLost("nvmlDeviceGetMigDeviceHandleByIndex") from exc
                continue  # NotFound: an empty slot
            devices.append({"index": i, "uuid": uuid, "name": name, "gpu_instance_id": gi,
                            "memory": {"total": int(mem.total), "used": int(mem.used),
                                       "free": int(mem.free)}})
            if gi in seen:
                continue
            seen.add(gi)
            labels = self._labels(f"{gpu.index}/{gi}", uuid, name)
            out.append(Sample("gpu_memory_used_bytes", labels, float(mem.used), ts))
            out.append(Sample("gpu_memory_total_bytes", labels, float(mem.total), ts))
        state["mig_devices"] = devices
        return out

    def _drain_events(self) -> None:
        """Take every pending XID event off the event set without waiting."""
        if self._event_set is None or not any(g.xid_total is not None for g in self._gpus):
            return
        xid_mask = int(getattr(self._nvml, "nvmlEventTypeXidCriticalError", 0x8))
        timeout = self._code("NVML_ERROR_TIMEOUT")
        wait = ("nvmlEventSetWait_v2" if hasattr(self._nvml, "nvmlEventSetWait_v2")
                else "nvmlEventSetWait")
        for _ in range(MAX_EVENTS_PER_CYCLE):
            try:
                data = self._call(wait, self._event_set, 0)
            except Exception as exc:
                if not self._is_nvml_error(exc):
                    raise
                if getattr(exc, "value", None) != timeout and (-1, "events", 0) not in self._warned:
                    self._warned.add((-1, "events", 0))
                    log.warning("draining NVML events failed: %s", exc)
                return
            if not int(data.eventType) & xid_mask:
                continue
            gpu = self._event_gpu(data.device)
            code = int(data.eventData)
            if gpu is None or gpu.xid_total is None:
                log.warning("XID %d on an unidentified GPU", code)
                continue
            gpu.xid_total += 1
            self.last_xid[gpu.index] = code
            self.last_events.append({"gpu": gpu.index, "type": "XidCriticalError", "xid": code})
            log.warning("GPU %d (%s): XID %d", gpu.index, gpu.uuid, code)

    def _event_gpu(self, device: Any) -> _Gpu | None:
        """Map an event's device handle to our GPU without asking the (maybe lost) GPU."""
        gpu = self._by_handle.get(_handle_key(device))
        if gpu is not None:
            return gpu
        try:  # a handle we have not seen in this form: ask for its UUID
            return self._by_uuid.get(_text(self._call("nvmlDeviceGetUUID", device)))
        except Exception as exc:
            if not self._is_nvml_error(exc):
                raise
            return None
