"""The collector registry's tables and the package's builders that read them.

The config validates ``[gpu] source`` and ``[[servers]] kind`` against these tables, so
importing them must load no collector (nor ``requests``/``pynvml``), and every name in
them must load to what the builders expect.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass

import pytest
import requests

from gpuwarden.collector import gpu_collector, server_collector
from gpuwarden.collector.base import Collector
from gpuwarden.collector.dcgm import DcgmCollector
from gpuwarden.collector.nvml import NvmlCollector
from gpuwarden.collector.registry import GPU_SOURCES, SERVER_KINDS
from gpuwarden.collector.scrape import ServerCollector
from gpuwarden.collector.servers.table import ServerMapping
from gpuwarden.collector.sim import SimulatedGpuCollector
from gpuwarden.errors import ConfigError


def test_server_kinds_are_the_tables_in_documentation_order() -> None:
    assert SERVER_KINDS.names() == ("vllm", "sglang", "tgi", "triton", "llamacpp")
    for kind in SERVER_KINDS:
        mapping = SERVER_KINDS.load(kind)
        assert isinstance(mapping, ServerMapping)
        assert mapping.kind == kind


def test_gpu_sources_load_collector_classes() -> None:
    assert GPU_SOURCES.names() == ("nvml", "dcgm", "sim")
    assert GPU_SOURCES.load("nvml") is NvmlCollector
    assert GPU_SOURCES.load("dcgm") is DcgmCollector
    assert GPU_SOURCES.load("sim") is SimulatedGpuCollector


def test_unknown_names_are_key_errors_that_list_the_known_ones() -> None:
    assert "ollama" not in SERVER_KINDS
    with pytest.raises(KeyError, match=r"unknown server kind 'ollama'.*vllm"):
        SERVER_KINDS.load("ollama")
    with pytest.raises(KeyError, match=r"unknown GPU source 'rocm'.*nvml"):
        GPU_SOURCES.load("rocm")


def test_checking_a_name_loads_no_collector() -> None:
    code = ("import sys\n"
            "from gpuwarden.collector.registry import GPU_SOURCES, SERVER_KINDS\n"
            "assert 'vllm' in SERVER_KINDS and 'nvml' in GPU_SOURCES\n"
            "print(' '.join(sorted(sys.modules)))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    collectors = {f"gpuwarden.collector.{m}" for m in ("nvml", "dcgm", "sim", "scrape")}
    loaded = set(out.stdout.split())
    assert not loaded & {*collectors, "requests", "pynvml"}
    assert not [m for m in loaded if m.startswith("gpuwarden.collector.servers")]


def test_gpu_collector_builds_each_source_from_its_settings() -> None:
    sim = gpu_collector("sim", node="n", sim_gpus=2)
    assert isinstance(sim, SimulatedGpuCollector)
    assert len(list(sim.collect())) == 2 * 18  # 17 GPU fields and the server's process
    session = requests.Session()
    dcgm = gpu_collector("dcgm", node="n", dcgm_url="http://127.0.0.1:9/metrics",
                         timeout=0.5, session=session)
    assert isinstance(dcgm, DcgmCollector)
    assert (dcgm.url, dcgm.session, dcgm.timeout) == ("http://127.0.0.1:9/metrics", session, 0.5)
    nvml = gpu_collector("nvml", node="n")
    assert isinstance(nvml, NvmlCollector) and nvml.node == "n"
    assert gpu_collector("off", node="n") is None
    assert isinstance(gpu_collector("auto", node="n"), NvmlCollector | SimulatedGpuCollector)
    with pytest.raises(ValueError, match="unknown GPU source 'rocm'"):
        gpu_collector("rocm", node="n")


@dataclass(frozen=True)
class _Server:  # what server_collector reads of a config's [[servers]] entry
    name: str
    kind: str
    metrics_url: str
    timeout: float = 2.0


def test_server_collector_scrapes_the_entry_with_its_table() -> None:
    collector: Collector = server_collector(
        _Server("v", "vllm", "http://127.0.0.1:9/metrics", 0.5), node="n",
        session=requests.Session())
    assert isinstance(collector, ServerCollector)
    assert (collector.name, collector.kind, collector.timeout) == ("server:v", "vllm", 0.5)
    with pytest.raises(ConfigError, match="unknown kind 'ollama'"):
        server_collector(_Server("o", "ollama", "http://127.0.0.1:9/metrics"), node="n",
                         session=requests.Session())
