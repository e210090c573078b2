"""What every collector is, and what the builders of GPU and server collectors take.

The collector modules (nvml, dcgm, sim, scrape, quality) import their base class from
here, never from the package ``__init__``, so that the package's builders may name
them (through :mod:`gpuwarden.collector.registry`) without an import going both ways.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from gpuwarden.model import Sample

if TYPE_CHECKING:
    import requests


class Collector(ABC):
    """One source of samples. ``name`` is the ``collector`` label of the self-metrics.

    A collector is a class with ``collect() -> Iterable[Sample]`` (node_exporter's
    convention). The daemon runs every collector once per cycle; one that raises is
    logged, counted (``gpuwarden_collector_success{collector} 0``) and skipped, never
    fatal to the cycle.
    """

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


@dataclass(frozen=True, slots=True)
class GpuSettings:
    """What a GPU source is built from: the node's name and the config's ``[gpu]`` table.

    Each source reads the fields it needs (``sim_gpus`` for the simulation, ``dcgm_url``,
    ``timeout`` and ``session`` for dcgm-exporter), so that every source is built alike.
    """

    node: str
    sim_gpus: int = 4
    sim_load: float = 0.6  # the utilisation simulated GPUs drift around
    dcgm_url: str = ""
    timeout: float = 2.0
    session: requests.Session | None = None


class GpuSource(Protocol):
    """A GPU collector class as ``registry.GPU_SOURCES`` lists it."""

    def from_settings(self, settings: GpuSettings) -> Collector:
        """The collector for ``settings`` (a classmethod of the collector class)."""
        ...


class ServerSpec(Protocol):
    """One ``[[servers]]`` entry, as the scrape collector and the memory budget read it
    (the config's ``ServerConfig`` is one; the collector package sits below the config
    and does not import it)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def metrics_url(self) -> str: ...

    @property
    def timeout(self) -> float: ...

    @property
    def gpus(self) -> tuple[str, ...]:
        """The server's GPUs as the ``gpu`` label spells them, when configured (the memory
        budget's attribution, ``memory_budget.py``); empty: found through /proc."""
        ...
