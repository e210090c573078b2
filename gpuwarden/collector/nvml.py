"""GPU telemetry straight from the driver through NVML (``nvidia-ml-py``, module ``pynvml``).

This module runs the collector: NVML's lifecycle, the GPUs' handles, the cycle and the
XID events; ``nvml_device.py`` reads one GPU's fields and ``nvml_calls.py`` times every
NVML call and sorts its errors. The contract below is the three modules' together.

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
  ``gpu_memory_headroom_ratio`` is free / total of the same read (v1 and v2 agree on
  free, so reserved memory never counts as headroom).
* Memory bus width and maximum memory clock are fixed by the board: each is read once
  per GPU (until it answers once; again after a re-init) and re-emitted every cycle from
  that value, with ``gpu_memory_bandwidth_peak_bytes_per_second`` = 2 transfers per
  clock x max memory clock x bus width / 8 (``nvml_device.peak_memory_bandwidth``). A
  GPU or driver without the call, or one that answers 0, has none of these samples.
* ECC: the *volatile* (since driver load) corrected / uncorrected totals, as a counter
  with ``type="corrected"|"uncorrected"``; a driver reload is a counter reset.
* XID: the collector registers every GPU for ``nvmlEventTypeXidCriticalError`` on one event
  set and drains it without blocking (``nvmlEventSetWait_v2(set, 0)``) once per cycle.
  ``gpu_xid_errors_total`` counts the events seen since this collector started; the XID
  code itself is logged (one warning per event) and kept in ``last_xid``, not put in a
  label, so the counter stays one stable series per GPU.
* MIG: the mode is asked once a minute (a real H200 takes 364 us per ask, most of a
  cycle's NVML time; it only changes through a reset). For a GPU in MIG mode, each MIG
  device reports ``gpu_memory_used_bytes``,
  ``gpu_memory_total_bytes`` and ``gpu_memory_headroom_ratio`` with
  ``gpu="<parent index>/<GPU instance id>"`` (dcgm-exporter's ``GPU_I_ID``, so both
  sources name an instance alike), ``uuid`` the MIG UUID and ``model`` the MIG device's
  name (which carries the profile, e.g. "... MIG 1g.10gb"). Same four labels as every GPU
  series; no ``gpu_up``/utilisation per instance (NVML has no utilisation for MIG
  handles), and bus width, clocks and peak bandwidth only on the parent (an instance has
  no bus of its own). Several compute instances of one GPU instance share its memory, so
  the first one stands for the instance.
* Process memory: ``gpu_process_memory_used_bytes{pid}`` per compute process, summed per
  pid; names and command lines are never exported. On a MIG GPU the processes are listed
  per MIG device and carry its instance's labels (``gpu="0/5"``): NVML lists them on the
  parent only to a privileged caller, and the instance is what bounds their memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterable
from types import ModuleType
from typing import Any, Self

from gpuwarden.collector.base import Collector, GpuSettings
from gpuwarden.collector.nvml_calls import CallStat, NvmlCalls, NvmlGpu, handle_key, text
from gpuwarden.collector.nvml_device import DeviceReader, gpu_labels
from gpuwarden.errors import GpuHidden, GpuLost
from gpuwarden.model import Sample

log = logging.getLogger(__name__)

INIT_RETRY_SECONDS = 300.0
MAX_EVENTS_PER_CYCLE = 1024  # a storm of events must not stall a 1 s cycle


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
        self._calls = NvmlCalls(nvml)
        self._reader = DeviceReader(self._calls, node, monotonic)
        self.retry_interval = retry_interval
        self._clock = clock
        self._monotonic = monotonic
        self._initialised = False
        self._next_init_at = float("-inf")
        self._warned_unavailable = False
        self._event_set: Any = None
        self._gpus: list[NvmlGpu] = []
        self._by_uuid: dict[str, NvmlGpu] = {}
        self._by_handle: dict[Hashable, NvmlGpu] = {}
        self.driver_version = ""
        #: XID code of the latest event per GPU index (also logged as it arrives).
        self.last_xid: dict[int, int] = {}
        #: What the last cycle read, in the fake's scenario format (bench --record).
        self.last_states: list[dict[str, Any]] = []
        self.last_events: list[dict[str, Any]] = []

    @classmethod
    def from_settings(cls, settings: GpuSettings) -> Self:
        """``[gpu] source = "nvml"``: the GPUs of this node's driver."""
        return cls(settings.node)

    @property
    def call_stats(self) -> dict[str, CallStat]:
        """Cumulative cost of each NVML function called so far (bench/bench_nvml.py)."""
        return self._calls.call_stats

    @property
    def missing_functions(self) -> set[str]:
        """C symbols found missing (FunctionNotFound) -- recorded into scenarios."""
        return self._calls.missing_functions

    # --- lifecycle -------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True once NVML is initialised; False on a node without a usable driver."""
        return self._initialised

    def _init(self) -> bool:
        """Initialise NVML if due; False (after logging once) when there is no driver."""
        if self._initialised:
            return True
        now = self._monotonic()
        if now < self._next_init_at:
            return False
        self._next_init_at = now + self.retry_interval
        calls = self._calls
        try:
            if calls.module is None:
                import pynvml

                calls.module = pynvml
            calls.call("nvmlInit")
            try:
                count = int(calls.call("nvmlDeviceGetCount"))
            except Exception:
                calls.call("nvmlShutdown")  # keep NVML's init refcount balanced
                raise
        except ImportError as exc:
            self._unavailable(f"no NVIDIA driver found: pynvml not importable ({exc})")
            return False
        except Exception as exc:
            if not calls.is_error(exc):
                raise
            no_driver = (
                calls.code("NVML_ERROR_LIBRARY_NOT_FOUND"),
                calls.code("NVML_ERROR_DRIVER_NOT_LOADED"),
            )
            if getattr(exc, "value", None) in no_driver:
                self._unavailable(f"no NVIDIA driver found: {exc}")
            else:
                self._unavailable(f"NVML initialisation failed: {exc}")
            return False
        try:
            self.driver_version = text(calls.call("nvmlSystemGetDriverVersion"))
        except Exception as exc:
            if not calls.is_error(exc):
                raise
        try:
            self._event_set = calls.call("nvmlEventSetCreate")
        except Exception as exc:
            if not calls.is_error(exc):
                raise
            log.info("NVML event sets unavailable (%s); XID errors will not be counted", exc)
        self._gpus = [NvmlGpu(i, labels=gpu_labels(self.node, str(i), "", ""))
                      for i in range(count)]
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
                self._calls.call(fname, *args)
            except Exception as exc:
                if not self._calls.is_error(exc):
                    raise
                log.debug("%s failed on close: %s", fname, exc)
        self._event_set = None
        self._initialised = False
        self._next_init_at = float("-inf")
        self._gpus, self._by_uuid, self._by_handle = [], {}, {}

    # --- collection ------------------------------------------------------------------

    def _ensure_handle(self, gpu: NvmlGpu) -> None:
        """Fetch and cache handle, UUID and name; register the GPU for XID events."""
        if gpu.handle is not None:
            return
        calls = self._calls
        try:
            handle = calls.call("nvmlDeviceGetHandleByIndex", gpu.index)
            gpu.uuid = text(calls.call("nvmlDeviceGetUUID", handle))
            gpu.name = text(calls.call("nvmlDeviceGetName", handle))
        except Exception as exc:
            if not calls.is_error(exc):
                raise
            if getattr(exc, "value", None) in calls.lost_codes():
                raise GpuLost("nvmlDeviceGetHandleByIndex") from exc
            raise GpuHidden(type(exc).__name__.removeprefix("NVMLError_")) from exc
        gpu.handle = handle
        gpu.labels = gpu_labels(self.node, str(gpu.index), gpu.uuid, gpu.name)
        self._by_uuid[gpu.uuid] = gpu
        self._by_handle[handle_key(handle)] = gpu
        if self._event_set is not None and gpu.xid_total is None:
            xid = int(getattr(calls.module, "nvmlEventTypeXidCriticalError", 0x8))
            try:
                supported = int(calls.call("nvmlDeviceGetSupportedEventTypes", handle))
                if supported & xid:
                    calls.call("nvmlDeviceRegisterEvents", handle, xid, self._event_set)
                    gpu.xid_total = 0
            except Exception as exc:
                if not calls.is_error(exc):
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
            self._calls.recording = state
            try:
                self._ensure_handle(gpu)
                state.update(uuid=gpu.uuid, name=gpu.name)
                gpu_samples = self._reader.read(gpu, ts, state)
            except GpuHidden as hidden:
                if self._calls.warn_once((gpu.index, "handle", 0)):
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
                self._calls.recording = None
            if gpu.xid_total is not None:
                gpu_samples.append(Sample("gpu_xid_errors_total", gpu.labels,
                                          float(gpu.xid_total), ts))
            samples.extend(gpu_samples)
            self.last_states.append(state)
        return samples

    # --- XID events ------------------------------------------------------------------

    def _drain_events(self) -> None:
        """Take every pending XID event off the event set without waiting."""
        if self._event_set is None or not any(g.xid_total is not None for g in self._gpus):
            return
        calls = self._calls
        xid_mask = int(getattr(calls.module, "nvmlEventTypeXidCriticalError", 0x8))
        timeout = calls.code("NVML_ERROR_TIMEOUT")
        wait = ("nvmlEventSetWait_v2" if hasattr(calls.module, "nvmlEventSetWait_v2")
                else "nvmlEventSetWait")
        for _ in range(MAX_EVENTS_PER_CYCLE):
            try:
                data = calls.call(wait, self._event_set, 0)
            except Exception as exc:
                if not calls.is_error(exc):
                    raise
                if getattr(exc, "value", None) != timeout and calls.warn_once((-1, "events", 0)):
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

    def _event_gpu(self, device: Any) -> NvmlGpu | None:
        """Map an event's device handle to our GPU without asking the (maybe lost) GPU."""
        gpu = self._by_handle.get(handle_key(device))
        if gpu is not None:
            return gpu
        try:  # a handle we have not seen in this form: ask for its UUID
            return self._by_uuid.get(text(self._calls.call("nvmlDeviceGetUUID", device)))
        except Exception as exc:
            if not self._calls.is_error(exc):
                raise
            return None
