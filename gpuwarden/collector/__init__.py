"""Collectors: where samples come from (GPUs through NVML, dcgm-exporter or a simulation;
inference servers' ``/metrics``; quality canaries), and the builders the daemon calls.

The collector modules import their base class from :mod:`gpuwarden.collector.base` and
never this package, and the builders find them by name through
:mod:`gpuwarden.collector.registry`, so imports go one way: this package -> registry ->
(lazily) the collector modules -> base.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from gpuwarden.collector.base import Collector, GpuSettings, ServerSpec
from gpuwarden.collector.registry import GPU_SOURCES

if TYPE_CHECKING:
    import requests

log = logging.getLogger(__name__)


def gpu_collector(
    source: str, *, node: str, sim_gpus: int = 4, dcgm_url: str = "", timeout: float = 2.0,
    session: requests.Session | None = None, sim_load: float = 0.6,
) -> Collector | None:
    """Build the GPU collector for ``[gpu] source``; None for ``off``.

    ``auto`` picks NVML when an NVIDIA driver is visible and the simulated GPUs
    otherwise, saying so loudly: it exists so that ``gpuwarden run`` with no config
    does something useful on a laptop, never silently on a GPU node (where the driver
    is visible and NVML is used, and a broken driver shows up as gpu_up 0 / absent).
    Any other name is looked up in ``GPU_SOURCES`` (ValueError when it is not there).
    """
    if source == "auto":
        source = "nvml" if nvidia_driver_present() else "sim"
        if source == "sim":
            log.warning("no NVIDIA driver found: using SIMULATED GPUs ([gpu] source = \"sim\")")
    if source == "off":
        return None
    if source not in GPU_SOURCES:
        raise ValueError(GPU_SOURCES.unknown(source))
    settings = GpuSettings(node, sim_gpus=sim_gpus, sim_load=sim_load, dcgm_url=dcgm_url,
                           timeout=timeout, session=session)
    return GPU_SOURCES.load(source).from_settings(settings)


def nvidia_driver_present() -> bool:
    """True when the NVML library can be found (the driver ships it)."""
    import ctypes.util

    return Path("/dev/nvidiactl").exists() or ctypes.util.find_library("nvidia-ml") is not None


def server_collector(server: ServerSpec, *, node: str,
                     session: requests.Session | Callable[[], requests.Session]) -> Collector:
    """Build the scrape collector for one ``[[servers]]`` entry.

    ``session``: the scrape session (``collector/session.py``), or what makes it when a
    scrape first needs ``requests`` (plain-http targets are fetched with libcurl).

    ``ConfigError`` when ``server.kind`` is not in ``registry.SERVER_KINDS``.
    """
    from gpuwarden.collector.scrape import ServerCollector

    return ServerCollector(node, server.name, server.kind, server.metrics_url, session,
                           timeout=server.timeout)
