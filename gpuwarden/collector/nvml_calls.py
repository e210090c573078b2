"""NVML call plumbing for the NVML collector: every call timed, every NVML error sorted.

``nvml.py`` runs the collector's lifecycle and cycle, ``nvml_device.py`` reads one GPU's
fields; both call NVML only through :class:`NvmlCalls`, so that the cost of each NVML
function is measured in one place (``bench/bench_nvml.py`` prints it) and an error is
classified the same way wherever it happens:

* ``GpuIsLost`` / ``ResetRequired``: :class:`~gpuwarden.errors.GpuLost`, the GPU reports
  ``gpu_up 0`` (handled by the collector);
* ``NotSupported`` / ``NoPermission`` / ``FunctionNotFound`` / an argument-version
  mismatch: the field is *unsupported* on that GPU, absent and never polled again;
* anything else: the field is skipped this cycle, with one warning per GPU, field and
  error code.

The module object is whatever the collector was given (``pynvml``, or the fake of
``tests/collector/fake_pynvml.py``); nothing here imports ``pynvml``.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, cast

from gpuwarden.errors import GpuLost
from gpuwarden.model import Labels

log = logging.getLogger(__name__)

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
# The versioned C symbol a binding calls, recorded as missing when the binding is not found.
_VERSIONED_SYMBOLS = {
    "nvmlDeviceGetMemoryInfo": "nvmlDeviceGetMemoryInfo_v2",
    "nvmlDeviceGetComputeRunningProcesses": "nvmlDeviceGetComputeRunningProcesses_v3",
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
class NvmlGpu:
    """What the collector keeps about one physical GPU between cycles."""

    index: int
    handle: Any = None
    uuid: str = ""
    name: str = ""
    labels: Labels = ()
    lost: bool = False
    unsupported: set[str] = field(default_factory=set)  # fields not polled again
    xid_total: int | None = None  # None: events not registered for this GPU
    max_mig: int | None = None
    # Static figures, read once per GPU (None: not read yet, or unsupported).
    memory_bus_width_bits: int | None = None
    memory_clock_max_mhz: int | None = None
    # MIG mode (current, pending), re-read every ``MIG_MODE_EVERY_SECONDS`` only.
    mig_mode: tuple[int, int] | None = None
    mig_mode_read_at: float = float("-inf")


def handle_key(handle: Any) -> Hashable:
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


def text(value: Any) -> str:
    """An NVML string (bytes in old pynvml releases, str in new ones) as str."""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class NvmlCalls:
    """Calls into one NVML module object, timed, with its errors classified.

    ``module`` is None until the collector has imported ``pynvml``. ``recording`` is the
    device state of the cycle being recorded (``bench/bench_nvml.py --record``), where a
    failing call leaves its error's name.
    """

    def __init__(self, module: Any) -> None:
        self.module: Any = module
        self.call_stats: dict[str, CallStat] = {}
        #: C symbols found missing (FunctionNotFound) -- recorded into scenarios.
        self.missing_functions: set[str] = set()
        self.recording: dict[str, Any] | None = None
        self._warned: set[tuple[int, str, int]] = set()

    def code(self, name: str) -> int:
        """The NVML return code called ``name`` (``NVML_ERROR_...``)."""
        return int(getattr(self.module, name, _CODES[name]))

    def lost_codes(self) -> tuple[int, int]:
        """The codes that mean the GPU itself is gone: lost, or in need of a reset."""
        return self.code("NVML_ERROR_GPU_IS_LOST"), self.code("NVML_ERROR_RESET_REQUIRED")

    def is_error(self, exc: BaseException) -> bool:
        """True when ``exc`` is an ``NVMLError`` of the module (not a programming error)."""
        base = getattr(self.module, "NVMLError", None)
        return isinstance(base, type) and isinstance(exc, base)

    def warn_once(self, key: tuple[int, str, int]) -> bool:
        """True the first time ``key`` (GPU index, what, code) is seen: time to warn."""
        if key in self._warned:
            return False
        self._warned.add(key)
        return True

    def call(self, fname: str, *args: Any, **kwargs: Any) -> Any:
        """Call one NVML function, adding its wall time to ``call_stats``."""
        fn = getattr(self.module, fname)
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            stat = self.call_stats.get(fname)
            if stat is None:
                stat = self.call_stats[fname] = CallStat()
            stat.calls += 1
            stat.seconds += time.perf_counter() - start

    def field(self, gpu: NvmlGpu, key: str, fname: str, *args: Any, **kwargs: Any) -> Any:
        """Read one field of ``gpu``; None when it is unsupported or failed this cycle.

        ``key`` names the field (several fields share a function). Raises ``GpuLost``.
        """
        if key in gpu.unsupported:
            return None
        if not hasattr(self.module, fname):  # an older pynvml without this binding
            gpu.unsupported.add(key)
            return None
        try:
            return self.call(fname, *args, **kwargs)
        except Exception as exc:
            mismatch = getattr(self.module, "NVMLLibraryMismatchError", None)
            if isinstance(mismatch, type) and isinstance(exc, mismatch):
                code = self.code("NVML_ERROR_FUNCTION_NOT_FOUND")
            elif self.is_error(exc):
                code = int(getattr(exc, "value", -1))
            else:
                raise
            exc_name = type(exc).__name__
        self._note_error(fname, code, exc_name)
        if code in self.lost_codes():
            raise GpuLost(fname)
        permanent = (
            self.code("NVML_ERROR_NOT_SUPPORTED"),
            self.code("NVML_ERROR_NO_PERMISSION"),
            self.code("NVML_ERROR_FUNCTION_NOT_FOUND"),
            self.code("NVML_ERROR_ARGUMENT_VERSION_MISMATCH"),
        )
        if code in permanent:
            gpu.unsupported.add(key)
            log.debug("GPU %d: %s unsupported (NVML error %d); not polled again",
                      gpu.index, key, code)
        elif self.warn_once((gpu.index, key, code)):
            log.warning("GPU %d: %s failed with NVML error %d; field skipped this cycle",
                        gpu.index, fname, code)
        return None

    def fell_back(self, gpu: NvmlGpu, key: str, symbol: str) -> bool:
        """True when the newer call ``key`` is gone because the driver lacks ``symbol``.

        Only a missing function (or binding) warrants the deprecated twin: a newer call
        answering NotSupported means the old one would too, so the field stays absent.
        """
        return key in gpu.unsupported and (
            symbol in self.missing_functions or not hasattr(self.module, symbol.split("_v", 1)[0])
        )

    def _note_error(self, fname: str, code: int, exc_name: str) -> None:
        """Remember an error in the scenario being recorded (``bench --record``)."""
        if code == self.code("NVML_ERROR_FUNCTION_NOT_FOUND"):
            self.missing_functions.add(_VERSIONED_SYMBOLS.get(fname, fname))
        elif self.recording is not None:
            self.recording.setdefault("errors", {})[fname] = exc_name.removeprefix("NVMLError_")
