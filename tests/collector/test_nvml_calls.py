"""How the NVML collector classifies an NVML call's outcome (nvml_calls.py): timed,
lost GPU, field not supported (never polled again), or a passing failure (warned once)."""

from __future__ import annotations

import ctypes
import logging
import types
from typing import Any

import pynvml
import pytest

from gpuwarden.collector.nvml_calls import NvmlCalls, NvmlGpu, handle_key, text
from gpuwarden.errors import GpuLost
from tests.collector.fake_pynvml import FakeHandle


def _module(**functions: Any) -> types.SimpleNamespace:
    """A module object with pynvml's error classes and the given functions."""
    return types.SimpleNamespace(NVMLError=pynvml.NVMLError, **functions)


def _raises(code: int) -> Any:
    def fn(*_args: Any, **_kwargs: Any) -> Any:
        raise pynvml.NVMLError(code)
    return fn


def test_every_call_is_timed() -> None:
    calls = NvmlCalls(_module(nvmlDeviceGetCount=lambda: 2))
    assert calls.call("nvmlDeviceGetCount") == 2
    assert calls.call("nvmlDeviceGetCount") == 2
    stat = calls.call_stats["nvmlDeviceGetCount"]
    assert stat.calls == 2 and stat.seconds >= 0.0 and stat.mean_seconds == stat.seconds / 2


def test_a_field_not_supported_is_absent_and_not_polled_again() -> None:
    calls = NvmlCalls(_module(nvmlDeviceGetPowerUsage=_raises(pynvml.NVML_ERROR_NOT_SUPPORTED)))
    gpu = NvmlGpu(0)
    assert calls.field(gpu, "power", "nvmlDeviceGetPowerUsage", None) is None
    assert calls.field(gpu, "power", "nvmlDeviceGetPowerUsage", None) is None
    assert gpu.unsupported == {"power"}
    assert calls.call_stats["nvmlDeviceGetPowerUsage"].calls == 1


def test_a_binding_missing_from_pynvml_is_unsupported_without_a_call() -> None:
    calls = NvmlCalls(_module())
    gpu = NvmlGpu(0)
    assert calls.field(gpu, "temperature_v", "nvmlDeviceGetTemperatureV", None) is None
    assert gpu.unsupported == {"temperature_v"} and calls.call_stats == {}


def test_a_missing_c_function_is_recorded_by_its_versioned_symbol() -> None:
    calls = NvmlCalls(_module(
        nvmlDeviceGetMemoryInfo=_raises(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)))
    gpu = NvmlGpu(0)
    assert calls.field(gpu, "memory_v2", "nvmlDeviceGetMemoryInfo", None) is None
    assert calls.missing_functions == {"nvmlDeviceGetMemoryInfo_v2"}
    assert calls.fell_back(gpu, "memory_v2", "nvmlDeviceGetMemoryInfo_v2")


def test_a_lost_gpu_raises_gpu_lost() -> None:
    for code in (pynvml.NVML_ERROR_GPU_IS_LOST, pynvml.NVML_ERROR_RESET_REQUIRED):
        calls = NvmlCalls(_module(nvmlDeviceGetPowerUsage=_raises(code)))
        with pytest.raises(GpuLost):
            calls.field(NvmlGpu(0), "power", "nvmlDeviceGetPowerUsage", None)


def test_a_passing_failure_is_skipped_this_cycle_and_warned_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = NvmlCalls(_module(nvmlDeviceGetPowerUsage=_raises(pynvml.NVML_ERROR_TIMEOUT)))
    calls.recording = {}
    gpu = NvmlGpu(3)
    with caplog.at_level(logging.WARNING, logger="gpuwarden.collector.nvml_calls"):
        for _ in range(3):
            assert calls.field(gpu, "power", "nvmlDeviceGetPowerUsage", None) is None
    assert gpu.unsupported == set()  # tried again next cycle
    assert calls.call_stats["nvmlDeviceGetPowerUsage"].calls == 3
    assert [r.getMessage() for r in caplog.records] == [
        "GPU 3: nvmlDeviceGetPowerUsage failed with NVML error 10; field skipped this cycle"]
    assert calls.recording == {"errors": {"nvmlDeviceGetPowerUsage": "Timeout"}}


def test_a_programming_error_is_not_swallowed() -> None:
    def broken(*_args: Any) -> Any:
        raise ZeroDivisionError
    calls = NvmlCalls(_module(nvmlDeviceGetPowerUsage=broken))
    with pytest.raises(ZeroDivisionError):
        calls.field(NvmlGpu(0), "power", "nvmlDeviceGetPowerUsage", None)


def test_handles_are_keyed_by_address_and_strings_decoded() -> None:
    buffers = [ctypes.c_int(0) for _ in range(2)]
    first = ctypes.cast(ctypes.pointer(buffers[0]), ctypes.c_void_p)
    again = ctypes.cast(ctypes.pointer(buffers[0]), ctypes.c_void_p)
    other = ctypes.cast(ctypes.pointer(buffers[1]), ctypes.c_void_p)
    assert handle_key(first) == handle_key(again) != handle_key(other)
    fake = FakeHandle(0)  # not a pointer: used as it is
    assert handle_key(fake) is fake
    assert text(b"NVIDIA H100") == text("NVIDIA H100") == "NVIDIA H100"
