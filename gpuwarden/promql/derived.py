"""Window signals derived from stored counters, gauges and histogram buckets.

Inference servers export cumulative counters and histograms; what an SRE reads (and
what rules compare) are window figures: p95 TTFT over the last minute, tokens per
second, prefix-cache hit ratio, how far apart a node's GPUs run. They are computed
exactly as Prometheus would compute ``histogram_quantile(q, increase(x_bucket[60s]))``,
``rate(x[60s])`` and ``increase(hits[60s]) / increase(queries[60s])`` (``windows.py``,
``quantile.py``). They are not stored: the raw series are, and any window can be
recomputed from them.

One implementation for two readers: :data:`DERIVATIONS` holds, per derived signal of
the catalogue (``signals.DERIVED_INPUTS``, which also names its inputs, in the order the
function takes them), the function that computes it. :func:`derive` runs every one of
them once per cycle for ``/metrics``, and a threshold rule on a derived signal
(``detectors/threshold.py``) runs the same one over the rule's window, so the alert and
the dashboard agree. Which series are still alive is the reader's choice
(``staleness.py``): the detector passes only live ones, the exposition every series that
has samples in the window.

The ratios (prefix-cache and offload-tier hit ratios, speculative-decoding acceptance)
are one function, :func:`increase_ratio`: no sample where the denominator did not
increase in the window (an idle server has no hit ratio, not 0 %).

``gpu_utilization_spread_ratio{node}`` is max minus min of the node's per-GPU mean
utilisation over the window; ``detectors/variance.py`` says why means, and reads the
per-GPU means and the straggler from :func:`gpu_means` and :func:`spread_of`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

import numpy as np

from gpuwarden.model import Labels, Sample, SeriesData
from gpuwarden.promql.aggregation import by_labels, median, values_in
from gpuwarden.promql.buckets import by_histogram
from gpuwarden.promql.quantile import window_quantiles
from gpuwarden.promql.staleness import is_live, no_spacing
from gpuwarden.promql.windows import counter_rate, ratio_of_increases
from gpuwarden.signals import DERIVED_INPUTS

QUANTILES = (0.5, 0.95, 0.99)
LATENCY_HISTOGRAMS = ("ttft_seconds", "itl_seconds", "e2e_latency_seconds",
                      "queue_time_seconds", "prefill_time_seconds", "decode_time_seconds")
DEFAULT_WINDOW = 60.0

LabelledValue = tuple[Labels, float]


def tokens_per_second(tokens: Iterable[SeriesData], start: float,
                      end: float) -> list[LabelledValue]:
    """``rate(generation_tokens_total[w])`` per series that has one."""
    out = []
    for series in tokens:
        rate = counter_rate(series, start, end)
        if rate is not None:
            out.append((series.labels, rate))
    return out


def increase_ratio(num: Iterable[SeriesData], den: Iterable[SeriesData], start: float,
                   end: float) -> list[LabelledValue]:
    """``increase(num[w]) / increase(den[w])`` per label set that has both, e.g. prefix-cache
    hits / queries; none where ``den`` did not increase (``windows.ratio_of_increases``)."""
    den_by_labels = by_labels(den)
    out = []
    for series in num:
        match = den_by_labels.get(series.labels)
        if match is not None:
            ratio = ratio_of_increases(series, match, start, end)
            if ratio is not None:
                out.append((series.labels, ratio))
    return out


class Spread(NamedTuple):
    node: str
    spread: float  # max - min of the per-GPU means
    stdev: float  # population standard deviation of the per-GPU means
    straggler: str  # the GPU whose mean is furthest from the median of the means


def _gpu_name(labels: Mapping[str, str]) -> str:
    return labels.get("gpu") or labels.get("uuid") or ",".join(f"{k}={v}" for k, v in
                                                              sorted(labels.items()))


def gpu_means(series: Iterable[SeriesData], start: float, end: float, *,
              interval: float | None = None) -> dict[str, dict[str, float]]:
    """node -> GPU -> mean utilisation over ``[start, end]``.

    With ``interval`` (the collection interval), GPUs whose newest sample is stale at
    ``end`` are left out: a GPU that stopped reporting is GPULost's business, not a
    straggler.
    """
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for s in series:
        if not len(s):
            continue
        if interval is not None and not is_live(s, end, interval, spacing=no_spacing):
            continue
        vs = values_in(s, start, end)
        if not vs.size:
            continue
        labels = s.label_map
        out[labels.get("node", "")][_gpu_name(labels)] = float(vs.mean())
    return dict(out)


def spread_of(node: str, means: Mapping[str, float]) -> Spread | None:
    """The spread record for one node's per-GPU means; None with fewer than two GPUs."""
    if len(means) < 2:
        return None
    names = sorted(means)
    arr = np.array([means[n] for n in names], dtype=np.float64)
    mid = median(arr)
    straggler = names[int(np.argmax(np.abs(arr - mid)))]
    return Spread(node, float(arr.max() - arr.min()), float(arr.std()), straggler)


def utilization_spread(series: Iterable[SeriesData], start: float, end: float, *,
                       interval: float | None = None) -> list[Spread]:
    """Per node, by node name: the spread of its GPUs' mean utilisation over the window.

    Nodes with fewer than two GPUs reporting in the window have no spread and are left
    out; ``interval`` leaves stale GPUs out (see :func:`gpu_means`).
    """
    out = []
    for node, means in sorted(gpu_means(series, start, end, interval=interval).items()):
        spread = spread_of(node, means)
        if spread is not None:
            out.append(spread)
    return out


def utilization_spread_ratio(utilization: Iterable[SeriesData], start: float, end: float, *,
                             interval: float) -> list[LabelledValue]:
    """``gpu_utilization_spread_ratio{node}`` from ``gpu_utilization_ratio``, stale GPUs out."""
    return [((("node", s.node),), s.spread)
            for s in utilization_spread(utilization, start, end, interval=interval)]


class SeriesSource(Protocol):
    def query(self, signal: str, matchers: None = None, start: float = ...,
              end: float = ...) -> list[SeriesData]: ...


def latency_quantiles(source: SeriesSource, hist: str, now: float,
                      window: float = DEFAULT_WINDOW) -> list[Sample]:
    """p50/p95/p99 of one histogram per server and model, labelled ``quantile``."""
    start = now - window
    out = []
    for labels, buckets in by_histogram(source.query(f"{hist}_bucket", None, start,
                                                     now)).items():
        for q, value in zip(QUANTILES, window_quantiles(QUANTILES, buckets, start, now),
                            strict=True):
            if value is not None and not math.isnan(value):  # NaN: no requests in window
                out.append(Sample(hist, (*labels, ("quantile", str(q))), value, now))
    return out


def _samples(signal: str, values: Sequence[LabelledValue], now: float) -> list[Sample]:
    return [Sample(signal, labels, value, now) for labels, value in values]


#: How one derived signal is computed: its inputs' series (in ``DERIVED_INPUTS`` order),
#: the window ``[start, end]`` and the collection interval -> one value per label set.
Derivation = Callable[[Sequence[Iterable[SeriesData]], float, float, float],
                      list[LabelledValue]]


def _rate(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
          interval: float) -> list[LabelledValue]:
    return tokens_per_second(inputs[0], start, end)


def _ratio(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
           interval: float) -> list[LabelledValue]:
    return increase_ratio(inputs[0], inputs[1], start, end)


def _spread(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
            interval: float) -> list[LabelledValue]:
    return utilization_spread_ratio(inputs[0], start, end, interval=interval)


DERIVATIONS: dict[str, Derivation] = {
    "generation_tokens_per_second": _rate,
    "prefix_cache_hit_ratio": _ratio,
    "gpu_utilization_spread_ratio": _spread,
    "kv_offload_hit_ratio": _ratio,
    "spec_decode_acceptance_ratio": _ratio,
}


def derive_signal(signal: str, inputs: Sequence[Iterable[SeriesData]], start: float,
                  end: float, *, interval: float) -> list[LabelledValue]:
    """One derived signal over ``[start, end]`` from its inputs' series, in the order of
    ``DERIVED_INPUTS[signal]``; ``interval`` is the collection interval (staleness)."""
    return DERIVATIONS[signal](inputs, start, end, interval)


def derive(source: SeriesSource, now: float, window: float = DEFAULT_WINDOW, *,
           interval: float = 1.0) -> list[Sample]:
    """Every derived window signal, as of ``now`` (``interval``: the collection interval),
    then p50/p95/p99 of every latency histogram."""
    start = now - window
    out: list[Sample] = []
    for signal, names in DERIVED_INPUTS.items():
        inputs = [source.query(name, None, start, now) for name in names]
        out += _samples(signal, derive_signal(signal, inputs, start, now, interval=interval),
                        now)
    for hist in LATENCY_HISTOGRAMS:
        out.extend(latency_quantiles(source, hist, now, window))
    return out
