"""Collectors and their registry.

A collector is a class with ``collect() -> Iterable[Sample]`` (node_exporter's
convention). The daemon runs every collector once per cycle; one that raises is
logged, counted (``gpuwarden_collector_success{collector} 0``) and skipped, never
fatal to the cycle.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gpuwarden.model import Sample

log = logging.getLogger(__name__)


class Collector(ABC):
    """One source of samples. ``name`` is the ``collector`` label of the self-metrics."""

    name: str = "collector"
    # Collectors that report a failure as data (a scrape failing is ``server_up 0``, not
    # an exception) set this while failing, so ``gpuwarden_collector_success`` still
    # reads 0 for them, as an SRE expects.
    last_error: str | None = None

    @abstractmethod
    def collect(self) -> Iterable[Sample]:
        """Return this cycle's samples; raise a ``CollectorError`` on failure."""

    def close(self) -> None:  # noqa: B027 - optional hook, most collectors hold nothing
        """Release what the collector holds (NVML handle, event set)."""


def gpu_collector(
    source: str, *, node: str, sim_gpus: int = 4, dcgm_url: str = "", timeout: float = 2.0,
    session: Any = None,
) -> Collector | None:
    """Build the GPU collector for ``[gpu] source``; None for ``off``.

    ``auto`` picks NVML when an NVIDIA driver is visible and the simulated GPUs
    otherwise, saying so loudly: it exists so that ``gpuwarden run`` with no config
    does something useful on a laptop, never silently on a GPU node (where the driver
    is visible and NVML is used, and a broken driver shows up as gpu_up 0 / absent).
    """
    if source == "auto":
        source = "nvml" if nvidia_driver_present() else "sim"
        if source == "sim":
            log.warning("no NVIDIA driver found: using SIMULATED GPUs ([gpu] source = \"sim\")")
    if source == "off":
        return None
    if source == "sim":
        from gpuwarden.collector.sim import SimulatedGpuCollector

        log.warning("GPU source is SIMULATED: %d fake GPUs, not real hardware", sim_gpus)
        return SimulatedGpuCollector(node, sim_gpus)
    if source == "nvml":
        from gpuwarden.collector.nvml import NvmlCollector

        return NvmlCollector(node)
    if source == "dcgm":
        from gpuwarden.collector.dcgm import DcgmCollector

        return DcgmCollector(node, dcgm_url, session, timeout=timeout)
    raise ValueError(f"unknown GPU source {source!r}")


def nvidia_driver_present() -> bool:
    """True when the NVML library can be found (the driver ships it)."""
    import ctypes.util

    return Path("/dev/nvidiactl").exists() or ctypes.util.find_library("nvidia-ml") is not None


def server_collector(server: Any, *, node: str, session: Any) -> Collector:
    """Build the scrape collector for one ``[[servers]]`` entry."""
    from gpuwarden.collector.scrape import ServerCollector

    return ServerCollector(node, server.name, server.kind, server.metrics_url, session,
                           timeout=server.timeout)
