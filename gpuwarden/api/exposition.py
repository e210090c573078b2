"""gpuwarden's own ``/metrics``: a custom prometheus-client collector over a snapshot.

The daemon hands over an immutable :class:`Snapshot` at the end of every cycle. The
text is rendered at most once per snapshot, by the first scrape that wants it, and
later scrapes of the same snapshot get the cached bytes. Rendering costs ~7 ms a cycle
at 250 KB server payloads while Prometheus scrapes every 15-60 s, so rendering every
1 s cycle up front was mostly wasted. A GPU that vanished simply is not in the next
snapshot: there are no long-lived gauges to clean up (ARCHITECTURE.md, convention 2).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector as PromCollector

from gpuwarden import __version__
from gpuwarden.model import Sample, SelfMetric
from gpuwarden.signals import SIGNALS, Kind

PREFIX = "gpuwarden_"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything ``/metrics`` shows, as of the end of one cycle."""

    samples: tuple[Sample, ...] = ()
    self_metrics: tuple[SelfMetric, ...] = ()
    info: Mapping[str, str] = field(default_factory=dict)


class _SnapshotCollector(PromCollector):
    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield from _signal_families(snap.samples)
        for sm in snap.self_metrics:
            metric = Metric(PREFIX + sm.name, sm.help, sm.kind)
            sample_name = PREFIX + sm.name + ("_total" if sm.kind == "counter" else "")
            for labels, value in sm.samples:
                metric.add_sample(sample_name, dict(labels), value)
            yield metric
        if snap.info:
            info = Metric(PREFIX + "build", "gpuwarden version and data sources", "info")
            info.add_sample(PREFIX + "build_info", {"version": __version__, **snap.info}, 1.0)
            yield info


def _signal_families(samples: Iterable[Sample]) -> Iterator[Metric]:
    grouped: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        grouped[sample.signal].append(sample)
    for signal, group in sorted(grouped.items()):
        spec = SIGNALS.get(signal)
        if spec is None or spec.kind is Kind.HISTOGRAM:
            # Raw buckets stay internal; histograms are exported as window quantiles,
            # which the daemon derives and passes in under the histogram's own name
            # with a ``quantile`` label (see ``_quantile_family``).
            if spec is not None and group and any(k == "quantile" for k, _ in group[0].labels):
                yield _quantile_family(signal, spec.help, group)
            continue
        is_counter = spec.kind is Kind.COUNTER
        base = PREFIX + (signal[: -len("_total")] if is_counter else signal)
        metric = Metric(base, spec.help, "counter" if is_counter else "gauge")
        sample_name = base + "_total" if is_counter else base
        for s in group:
            metric.add_sample(sample_name, dict(s.labels), s.value)
        yield metric


def _quantile_family(signal: str, help_: str, group: list[Sample]) -> Metric:
    metric = Metric(PREFIX + signal, help_ + " (quantiles over the window)", "summary")
    for s in group:
        metric.add_sample(PREFIX + signal, dict(s.labels), s.value)
    return metric


class Exposition:
    """Renders snapshots to Prometheus text and keeps the latest bytes for scrapes."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self._collector = _SnapshotCollector()
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(self._collector)
        if process_metrics:
            # process_resident_memory_bytes etc.: SREs watch the watcher's footprint.
            ProcessCollector(namespace=PREFIX.rstrip("_"), registry=self._registry)
        self._lock = threading.Lock()
        self._body = b""
        self._unrendered: Snapshot | None = None
        self.renders_total = 0

    def update(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` what the next scrape shows (rendered then, not now)."""
        with self._lock:
            self._unrendered = snapshot

    def render(self, snapshot: Snapshot) -> bytes:
        with self._lock:  # the collector object is shared by every render
            return self._render(snapshot)

    def _render(self, snapshot: Snapshot) -> bytes:
        self._collector.snapshot = snapshot
        self.renders_total += 1
        return generate_latest(self._registry)

    @property
    def body(self) -> bytes:
        """The latest snapshot as Prometheus text, rendered on the first read after it."""
        with self._lock:
            if self._unrendered is not None:
                self._body = self._render(self._unrendered)
                self._unrendered = None
            return self._body
