"""The GPU sources and inference-server kinds gpuwarden knows, by name, loaded lazily.

The config validates ``[gpu] source`` and ``[[servers]] kind`` against these tables
without importing a collector (so neither ``requests`` nor ``pynvml`` is loaded for a
name check); the collector package's builders and the scrape collector load the
implementation on first use. Adding a server kind is one line here plus its table in
``collector/servers/`` (ARCHITECTURE.md, "where does my change go").

``auto`` and ``off`` are not sources but choices among them, made by
``gpuwarden.collector.gpu_collector``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuwarden.registry import Registry

if TYPE_CHECKING:
    from gpuwarden.collector.base import GpuSource
    from gpuwarden.collector.servers.table import ServerMapping

GPU_SOURCES: Registry[GpuSource] = Registry("GPU source", {
    "nvml": "gpuwarden.collector.nvml:NvmlCollector",
    "dcgm": "gpuwarden.collector.dcgm:DcgmCollector",
    "sim": "gpuwarden.collector.sim:SimulatedGpuCollector",
})

SERVER_KINDS: Registry[ServerMapping] = Registry("server kind", {
    "vllm": "gpuwarden.collector.servers.vllm:MAPPING",
    "sglang": "gpuwarden.collector.servers.sglang:MAPPING",
    "tgi": "gpuwarden.collector.servers.tgi:MAPPING",
    "triton": "gpuwarden.collector.servers.triton:MAPPING",
    "llamacpp": "gpuwarden.collector.servers.llamacpp:MAPPING",
})
