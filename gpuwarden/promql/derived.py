"""Window signals derived from stored counters and histogram buckets.

Inference servers export cumulative counters and histograms; what an SRE reads (and
what rules compare) are window figures: p95 TTFT over the last minute, tokens per
second, prefix-cache hit ratio. They are computed from the store exactly as
Prometheus would compute ``histogram_quantile(q, increase(x_bucket[60s]))``,
``rate(x[60s])`` and ``increase(hits[60s]) / increase(queries[60s])`` (see
``windows.py``), once per cycle, for the exposition. They are not stored: the raw
counters are, and any window can be recomputed from them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Protocol

from gpuwarden.detectors.threshold import stale_after
from gpuwarden.detectors.variance import utilization_spread
from gpuwarden.model import Labels, Sample, SeriesData
from gpuwarden.promql.buckets import without_le
from gpuwarden.promql.windows import counter_rate, ratio_of_increases, window_quantiles

QUANTILES = (0.5, 0.95, 0.99)
LATENCY_HISTOGRAMS = ("ttft_seconds", "itl_seconds", "e2e_latency_seconds")
DEFAULT_WINDOW = 60.0


class SeriesSource(Protocol):
    def query(self, signal: str, matchers: None = None, start: float = ...,
              end: float = ...) -> list[SeriesData]: ...


def _by_labels(series: Sequence[SeriesData]) -> dict[Labels, SeriesData]:
    return {s.labels: s for s in series}


def latency_quantiles(source: SeriesSource, hist: str, now: float,
                      window: float = DEFAULT_WINDOW) -> list[Sample]:
    """p50/p95/p99 of one histogram per server and model, labelled ``quantile``."""
    start = now - window
    groups: dict[Labels, list[SeriesData]] = defaultdict(list)
    for series in source.query(f"{hist}_bucket", None, start, now):
        groups[without_le(series.labels)].append(series)
    out = []
    for labels, buckets in groups.items():
        for q, value in zip(QUANTILES, window_quantiles(QUANTILES, buckets, start, now),
                            strict=True):
            if value is not None and not math.isnan(value):  # NaN: no requests in window
                out.append(Sample(hist, (*labels, ("quantile", str(q))), value, now))
    return out


def throughput_and_hit_ratio(source: SeriesSource, now: float,
                             window: float = DEFAULT_WINDOW) -> list[Sample]:
    start = now - window
    out = []
    for series in source.query("generation_tokens_total", None, start, now):
        rate = counter_rate(series, start, now)
        if rate is not None:
            out.append(Sample("generation_tokens_per_second", series.labels, rate, now))
    queries = _by_labels(source.query("prefix_cache_queries_total", None, start, now))
    for labels, hits in _by_labels(source.query("prefix_cache_hits_total", None, start,
                                                now)).items():
        if labels in queries:
            ratio = ratio_of_increases(hits, queries[labels], start, now)
            if ratio is not None:
                out.append(Sample("prefix_cache_hit_ratio", labels, ratio, now))
    return out


def gpu_spread(source: SeriesSource, now: float, window: float = DEFAULT_WINDOW, *,
               interval: float = 1.0) -> list[Sample]:
    """``gpu_utilization_spread_ratio{node}``: what the GPUUtilizationSpread rule compares.

    GPUs that stopped reporting (``max(3 * interval, 5 s)``) are left out, as the rule
    leaves them out; nodes with fewer than two GPUs have no spread.
    """
    series = source.query("gpu_utilization_ratio", None, now - window, now)
    return [
        Sample("gpu_utilization_spread_ratio", (("node", s.node),), s.spread, now)
        for s in utilization_spread(series, now - window, now,
                                    stale_after=stale_after(interval))
    ]


def derive(source: SeriesSource, now: float, window: float = DEFAULT_WINDOW, *,
           interval: float = 1.0) -> list[Sample]:
    """Every derived window signal, as of ``now`` (``interval``: the collection interval)."""
    out = throughput_and_hit_ratio(source, now, window)
    out.extend(gpu_spread(source, now, window, interval=interval))
    for hist in LATENCY_HISTOGRAMS:
        out.extend(latency_quantiles(source, hist, now, window))
    return out
