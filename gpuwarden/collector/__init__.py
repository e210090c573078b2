"""Collectors and their registry.

A collector is a class with ``collect() -> Iterable[Sample]`` (node_exporter's
convention). The daemon runs every collector once per cycle; one that raises is
logged, counted (``gpuwarden_collector_success{collector} 0``) and skipped, never
fatal to the cycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable

from gpuwarden.model import Sample


class Collector(ABC):
    """One source of samples. ``name`` is the ``collector`` label of the self-metrics."""

    name: str = "collector"

    @abstractmethod
    def collect(self) -> Iterable[Sample]:
        """Return this cycle's samples; raise a ``CollectorError`` on failure."""

    def close(self) -> None:  # noqa: B027 - optional hook, most collectors hold nothing
        """Release what the collector holds (NVML handle, event set)."""
