"""What the budget reads from the store: newest values, series, length quantiles, the
servers' GPUs and the derived signals, for one node's series (or every node's).

The ``SeriesSource`` protocol (``promql/derived.py``) takes no matchers, so the node is
selected here, after the query; every figure is keyed by the GPU (node, gpu, uuid,
model) or the server (node, server, model) it belongs to.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from typing import TypeVar

from gpuwarden.durations import format_duration
from gpuwarden.model import Labels, SeriesData
from gpuwarden.promql.aggregation import aggregate
from gpuwarden.promql.buckets import by_histogram
from gpuwarden.promql.derived import DERIVATIONS, derive_signal, input_lookbacks
from gpuwarden.promql.prefetch import SeriesSource
from gpuwarden.promql.quantile import window_quantiles
from gpuwarden.signals import DERIVED_INPUTS

GpuKey = tuple[str, str, str, str]  # node, gpu, uuid, model (of the GPU)
ServerKey = tuple[str, str, str]  # node, server, model (the LLM it serves)
K = TypeVar("K")
#: The length quantiles of the budget, in the order ``budget.QUANTILES`` names them.
LENGTH_QUANTILES = (0.5, 0.95)


def gpu_key(labels: Labels) -> GpuKey:
    m = dict(labels)
    return m.get("node", ""), m.get("gpu", ""), m.get("uuid", ""), m.get("model", "")


def server_key(labels: Labels) -> ServerKey:
    m = dict(labels)
    return m.get("node", ""), m.get("server", ""), m.get("model", "")


def gpu_order(key: GpuKey) -> tuple[str, int, int, str]:
    """Node, then GPU index as a number (GPU 10 after GPU 2), then the rest by name."""
    gpu = key[1]
    return key[0], 0 if gpu.isdigit() else 1, int(gpu) if gpu.isdigit() else 0, gpu


def window_text(seconds: float) -> str:
    return format_duration(seconds)


class Reader:
    """Reads ``source`` as of ``now``; gauges as their newest value since ``recent``."""

    def __init__(self, source: SeriesSource, now: float, node: str | None, *,
                 recent: float) -> None:
        self.source = source
        self.now = now
        self.node = node
        self.recent = recent

    def query(self, signal: str, start: float) -> list[SeriesData]:
        got = self.source.query(signal, None, start, self.now)
        if self.node is None:
            return got
        return [s for s in got if dict(s.labels).get("node") == self.node]

    def latest(self, signal: str) -> dict[Labels, float]:
        """Each series' newest value in ``[recent, now]`` (NaN skipped)."""
        out = {}
        for series in self.query(signal, self.recent):
            value = aggregate(series, "last", self.recent, self.now)
            if value is not None and not math.isnan(value):
                out[series.labels] = value
        return out

    def latest_by(self, signal: str, key: Callable[[Labels], K]) -> dict[K, float]:
        return {key(labels): value for labels, value in self.latest(signal).items()}

    def series_by(self, signal: str, key: Callable[[Labels], K]) -> dict[K, SeriesData]:
        return {key(s.labels): s for s in self.query(signal, self.recent)}

    def quantiles(self, histogram: str,
                  start: float) -> dict[ServerKey, tuple[float | None, ...]]:
        """p50 and p95 of ``histogram`` over ``[start, now]`` per server, as
        ``histogram_quantile(q, increase(x_bucket[w]))``: None where it has no two
        samples in the window, NaN where nothing was observed in it."""
        buckets = self.query(f"{histogram}_bucket", start)
        return {server_key(labels): tuple(window_quantiles(LENGTH_QUANTILES, group, start,
                                                           self.now))
                for labels, group in by_histogram(buckets).items()}

    def server_gpus(self) -> dict[tuple[str, str], list[str]]:
        """(node, server) -> the GPUs ``server_gpu_info`` says it uses."""
        out: dict[tuple[str, str], list[str]] = defaultdict(list)
        for labels, value in sorted(self.latest("server_gpu_info").items()):
            m = dict(labels)
            if value > 0 and m.get("gpu"):
                out[(m.get("node", ""), m.get("server", ""))].append(m["gpu"])
        for gpus in out.values():
            gpus.sort(key=lambda g: (0, int(g), g) if g.isdigit() else (1, 0, g))
        return dict(out)

    def derived(self, signal: str, window: float,
                interval: float) -> tuple[dict[ServerKey, dict[str, float]], str | None]:
        """A derived signal over ``[now - window, now]``, per server and GPU label ("" when
        it has none), as ``/metrics`` computes it; and why a server may lack it."""
        if signal not in DERIVATIONS or signal not in DERIVED_INPUTS:
            return {}, f"this version of gpuwarden does not compute {signal}"
        lookbacks = input_lookbacks(signal, window)
        inputs = [self.query(name, self.now - back) for name, back in lookbacks.items()]
        absent = [name for name, got in zip(lookbacks, inputs, strict=True) if not got]
        out: dict[ServerKey, dict[str, float]] = defaultdict(dict)
        for labels, value in derive_signal(signal, inputs, self.now - window, self.now,
                                           interval=interval):
            if math.isfinite(value):
                out[server_key(labels)][dict(labels).get("gpu", "")] = value
        reason = None
        if absent:
            reason = (f"{', '.join(absent)} not in the store over the last "
                      f"{window_text(window)}")
        return dict(out), reason
