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

``kv_cache_capacity_sequences`` reads its length histograms over the last hour
(``LENGTHS_WINDOW``), whatever the window: a minute of finished requests is too few for
a p95 of their lengths, and capacity is planned for the traffic of hours, not of one
burst.

``gpu_utilization_spread_ratio{node}`` is max minus min of the node's per-GPU mean
utilisation over the window; ``detectors/variance.py`` says why means, and reads the
per-GPU means and the straggler from :func:`gpu_means` and :func:`spread_of`.

The efficiency and cost signals (memory-bandwidth and FLOP utilisation, cost per million
tokens), which join a server's counters to its GPUs, are computed in ``efficiency.py``.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from gpuwarden.model import Labels, Sample, SeriesData
from gpuwarden.promql.aggregation import aggregate, by_labels, median, values_in
from gpuwarden.promql.efficiency import (
    bandwidth_utilization,
    cost_per_million_tokens,
    flops_utilization,
)
from gpuwarden.promql.prefetch import Prefetched, SeriesSource, widest
from gpuwarden.promql.quantile import quantiles_by_histogram, quantiles_of_families
from gpuwarden.promql.staleness import is_live, no_spacing
from gpuwarden.promql.windows import increases, rates
from gpuwarden.signals import DERIVED_INPUTS

QUANTILES = (0.5, 0.95, 0.99)
LATENCY_HISTOGRAMS = ("ttft_seconds", "itl_seconds", "e2e_latency_seconds",
                      "queue_time_seconds", "prefill_time_seconds", "decode_time_seconds")
DEFAULT_WINDOW = 60.0
#: The requests whose p95 lengths size ``kv_cache_capacity_sequences``: the last hour's.
LENGTHS_WINDOW = 3600.0

LabelledValue = tuple[Labels, float]


def tokens_per_second(tokens: Iterable[SeriesData], start: float,
                      end: float) -> list[LabelledValue]:
    """``rate(generation_tokens_total[w])`` per series that has one."""
    series = list(tokens)
    return [(s.labels, rate) for s, rate in zip(series, rates(series, start, end), strict=True)
            if rate is not None]


def increase_ratio(num: Iterable[SeriesData], den: Iterable[SeriesData], start: float,
                   end: float) -> list[LabelledValue]:
    """``increase(num[w]) / increase(den[w])`` per label set that has both, e.g. prefix-cache
    hits / queries; none where ``den`` did not increase (``windows.ratio_of_increases``)."""
    den_by_labels = by_labels(den)
    pairs = [(s, match) for s in num if (match := den_by_labels.get(s.labels)) is not None]
    nums = increases([n for n, _ in pairs], start, end)
    dens = increases([d for _, d in pairs], start, end)
    # as windows.ratio_of_increases, for all pairs at once
    return [(n.labels, a / b) for (n, _), a, b in zip(pairs, nums, dens, strict=True)
            if a is not None and b is not None and b > 0]


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


def latency_quantiles(source: SeriesSource, hist: str, now: float,
                      window: float = DEFAULT_WINDOW) -> list[Sample]:
    """p50/p95/p99 of one histogram per server and model, labelled ``quantile``."""
    start = now - window
    return _quantile_samples(hist, quantiles_by_histogram(
        QUANTILES, source.query(f"{hist}_bucket", None, start, now), start, now), now)


def latency_quantiles_all(source: SeriesSource, now: float,
                          window: float = DEFAULT_WINDOW) -> list[Sample]:
    """:func:`latency_quantiles` of every histogram of ``LATENCY_HISTOGRAMS``, in that
    order, computed together (``quantile.quantiles_of_families``)."""
    start = now - window
    families = [source.query(f"{hist}_bucket", None, start, now) for hist in LATENCY_HISTOGRAMS]
    out = []
    for hist, histograms in zip(LATENCY_HISTOGRAMS,
                                quantiles_of_families(QUANTILES, families, start, now),
                                strict=True):
        out += _quantile_samples(hist, histograms, now)
    return out


def _quantile_samples(hist: str, histograms: Iterable[tuple[Labels, list[float | None]]],
                      now: float) -> list[Sample]:
    out = []
    for labels, values in histograms:
        for q, value in zip(QUANTILES, values, strict=True):
            if value is not None and not math.isnan(value):  # NaN: no requests in window
                out.append(Sample(hist, (*labels, ("quantile", str(q))), value, now))
    return out


def _samples(signal: str, values: Sequence[LabelledValue], now: float) -> list[Sample]:
    return [Sample(signal, labels, value, now) for labels, value in values]


def _p95_by_histogram(buckets: Iterable[SeriesData], start: float,
                     end: float) -> dict[Labels, float]:
    out = {}
    for labels, (value,) in quantiles_by_histogram((0.95,), list(buckets), start, end):
        if value is not None and not math.isnan(value):
            out[labels] = value
    return out


def capacity_sequences(capacity: Iterable[SeriesData], prompt: Iterable[SeriesData],
                       generation: Iterable[SeriesData], end: float, *,
                       lengths_window: float = LENGTHS_WINDOW) -> list[LabelledValue]:
    """``kv_cache_capacity_sequences``: the newest ``kv_cache_capacity_tokens`` over the
    p95 prompt length + the p95 generation length of the requests that finished in the
    last ``lengths_window`` (``prompt``/``generation``: the ``_bucket`` series).

    A server with no finished request in that window (no p95) has none. Why the sum of
    the two p95s is conservative: see the README's derived-signal table.
    """
    start = end - lengths_window
    prompt_p95 = _p95_by_histogram(prompt, start, end)
    generation_p95 = _p95_by_histogram(generation, start, end)
    out = []
    for series in capacity:
        tokens = aggregate(series, "last", start, end)
        a, b = prompt_p95.get(series.labels), generation_p95.get(series.labels)
        if tokens is not None and a is not None and b is not None and a + b > 0:
            out.append((series.labels, tokens / (a + b)))
    return out


#: How one derived signal is computed: its inputs' series (in ``DERIVED_INPUTS`` order),
#: the window ``[start, end]`` and the collection interval -> one value per label set.
Compute = Callable[[Sequence[Iterable[SeriesData]], float, float, float],
                   list[LabelledValue]]


class Derivation(NamedTuple):
    compute: Compute
    #: inputs read further back than the window, and how far (seconds before its end)
    lookback: Mapping[str, float] = {}


def _rate(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
          interval: float) -> list[LabelledValue]:
    return tokens_per_second(inputs[0], start, end)


def _ratio(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
           interval: float) -> list[LabelledValue]:
    return increase_ratio(inputs[0], inputs[1], start, end)


def _spread(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
            interval: float) -> list[LabelledValue]:
    return utilization_spread_ratio(inputs[0], start, end, interval=interval)


def _capacity(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
              interval: float) -> list[LabelledValue]:
    return capacity_sequences(inputs[0], inputs[1], inputs[2], end)


def _bandwidth(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
               interval: float) -> list[LabelledValue]:
    return bandwidth_utilization(inputs[0], inputs[1], inputs[2], inputs[3],
                                 start=start, end=end, interval=interval)


def _mfu(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
         interval: float) -> list[LabelledValue]:
    return flops_utilization(inputs[0], inputs[1], inputs[2], start=start, end=end,
                             interval=interval)


def _cost(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
          interval: float) -> list[LabelledValue]:
    return cost_per_million_tokens(inputs[0], inputs[1], inputs[2], start=start, end=end,
                                   interval=interval)


DERIVATIONS: dict[str, Derivation] = {
    "generation_tokens_per_second": Derivation(_rate),
    "prefix_cache_hit_ratio": Derivation(_ratio),
    "gpu_utilization_spread_ratio": Derivation(_spread),
    "kv_offload_hit_ratio": Derivation(_ratio),
    "spec_decode_acceptance_ratio": Derivation(_ratio),
    "kv_cache_capacity_sequences": Derivation(_capacity, {
        "prompt_length_tokens_bucket": LENGTHS_WINDOW,
        "generation_length_tokens_bucket": LENGTHS_WINDOW}),
    "memory_bandwidth_utilization_ratio": Derivation(_bandwidth),
    "model_flops_utilization_ratio": Derivation(_mfu),
    "cost_per_million_tokens_usd": Derivation(_cost),
}


#: Derived signals that read inputs further back than the window: reading an hour of
#: histograms comes from the database, not the in-memory head, so the daemon refreshes
#: them less often than the window signals (``daemon/cycle.py``).
LONG_LOOKBACK = frozenset(signal for signal, d in DERIVATIONS.items() if d.lookback)


def input_lookbacks(signal: str, window: float) -> dict[str, float]:
    """How far back each input of a derived signal is read for a ``window`` figure."""
    longer = DERIVATIONS[signal].lookback
    return {name: max(window, longer.get(name, 0.0)) for name in DERIVED_INPUTS[signal]}


def derive_signal(signal: str, inputs: Sequence[Iterable[SeriesData]], start: float,
                  end: float, *, interval: float) -> list[LabelledValue]:
    """One derived signal over ``[start, end]`` from its inputs' series (each read back as
    far as :func:`input_lookbacks` says), in the order of ``DERIVED_INPUTS[signal]``;
    ``interval`` is the collection interval (staleness)."""
    return DERIVATIONS[signal].compute(inputs, start, end, interval)


def derive_lookbacks(window: float = DEFAULT_WINDOW, *,
                     skip: Iterable[str] = ()) -> dict[str, float]:
    """What :func:`derive` reads: each input signal and how far back, the furthest any
    derived signal but those in ``skip`` needs it."""
    skipped = frozenset(skip)
    return widest(*(input_lookbacks(signal, window) for signal in DERIVED_INPUTS
                    if signal not in skipped),
                  {f"{hist}_bucket": window for hist in LATENCY_HISTOGRAMS})


def derive(source: SeriesSource, now: float, window: float = DEFAULT_WINDOW, *,
           interval: float = 1.0, skip: Iterable[str] = ()) -> list[Sample]:
    """Every derived window signal but those in ``skip``, as of ``now`` (``interval``: the
    collection interval), then p50/p95/p99 of every latency histogram.

    Every input is read once, as far back as the furthest reader needs it, and in one
    go from a source that can (``Store.query_many``): ``prefetch.Prefetched``. A source
    that is itself one, holding those ranges, answers without reading again.
    """
    start = now - window
    out: list[Sample] = []
    skipped = frozenset(skip)
    signals = [signal for signal in DERIVED_INPUTS if signal not in skipped]
    read = Prefetched(source, derive_lookbacks(window, skip=skipped), now)
    for signal in signals:
        inputs = [read.query(name, None, now - lookback, now)
                  for name, lookback in input_lookbacks(signal, window).items()]
        out += _samples(signal, derive_signal(signal, inputs, start, now, interval=interval),
                        now)
    out.extend(latency_quantiles_all(read, now, window))
    return out
