"""How well a server uses the GPUs it runs on, and what its tokens cost: the derived
signals that join a server's counters to its GPUs.

* ``memory_bandwidth_utilization_ratio{node,server,model,gpu}``:
  ``(rate(estimated_memory_read_bytes_total) + rate(estimated_memory_write_bytes_total))
  / gpu_memory_bandwidth_peak_bytes_per_second``, one value per GPU of the server.
* ``model_flops_utilization_ratio{node,server,model}``: ``rate(estimated_flops_total) /
  peak dense BF16 FLOP/s`` of the server's GPUs (``gpu_specs.py``; the mean of their
  peaks when they are of different models; none when any of them is not in the table).
* ``cost_per_million_tokens_usd{node,server,model}``: the server's share of its GPUs'
  price per second over its generated tokens per second, x 1e6. A GPU's price
  (``gpu_cost_per_hour_usd``) is split evenly between the servers that use it.

The rates are ``windows.rates`` over the window, as Prometheus' ``rate``. vLLM's (and
SGLang's) ``estimated_*`` counters are already *per GPU* of the engine, so the per-GPU
bandwidth and the MFU divide them by one GPU's peak, not by the sum of the peaks. (A
server with N data-parallel engines exports the sum of their per-GPU estimates, which
then reads N times too high: nothing here tells data from tensor parallelism.)

The join. A server's GPUs are the ``server_gpu_info{node,server,gpu}`` series live at
the window's end (``staleness.is_live``) whose newest value is 1, matched to the server
on (node, server); GPU series (peak bandwidth, memory total for the model label, price)
are matched on (node, gpu), newest value at or before the end. A GPU the server used
an hour ago is not its GPU now.

Without ``server_gpu_info`` for a server (its processes not visible to NVML and no
``gpus`` configured), the node's GPUs are the only candidates: where every GPU of the
node reports the same peak bandwidth, the bandwidth ratio is given once, without a
``gpu`` label (which GPU is unknown, and it does not change the figure); where all of
them are of one model in the table, MFU uses its peak. Otherwise there is no value.
Cost has no such fallback: without knowing which GPUs the server holds (and who shares
them) its share of the price is unknown.

No value where the numerator's counter has no rate in the window (fewer than two
samples); the cost also none where no token was generated (an idle server has no cost
per token) or where the price of any of its GPUs is unknown.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import numpy as np

from gpuwarden.gpu_specs import peak_bf16_flops
from gpuwarden.model import Labels, SeriesData, make_labels
from gpuwarden.promql.aggregation import aggregate, in_window
from gpuwarden.promql.staleness import is_live
from gpuwarden.promql.windows import rates

Values = list[tuple[Labels, float]]
#: (node, gpu)
GpuKey = tuple[str, str]


class GpuValue(NamedTuple):
    value: float
    model: str
    at: float  # timestamp of the value, to keep the newest where two series match


def _key(labels: Mapping[str, str], second: str) -> tuple[str, str]:
    return labels.get("node", ""), labels.get(second, "")


def server_gpus(info: Iterable[SeriesData], end: float,
                interval: float) -> dict[tuple[str, str], set[str]]:
    """(node, server) -> the GPUs its processes use now: ``server_gpu_info`` series live
    at ``end`` whose newest value is 1."""
    out: dict[tuple[str, str], set[str]] = defaultdict(set)
    for series in info:
        if not is_live(series, end, interval) or aggregate(series, "last", end, end) != 1.0:
            continue
        labels = series.label_map
        out[_key(labels, "server")].add(labels.get("gpu", ""))
    return dict(out)


def gpu_values(series: Iterable[SeriesData], end: float) -> dict[GpuKey, GpuValue]:
    """(node, gpu) -> the newest value at or before ``end`` of a GPU signal, with the
    GPU's model label."""
    out: dict[GpuKey, GpuValue] = {}
    for s in series:
        ts, vs = in_window(s, -math.inf, end)
        known = np.flatnonzero(~np.isnan(vs))
        if not known.size:
            continue
        at, value = float(ts[known[-1]]), float(vs[known[-1]])
        key = _key(s.label_map, "gpu")
        if key not in out or at > out[key].at:
            out[key] = GpuValue(value, s.label_map.get("model", ""), at)
    return out


def _node_gpus(gpus: Mapping[GpuKey, GpuValue], node: str) -> list[GpuValue]:
    return [v for (n, _), v in sorted(gpus.items()) if n == node]


def _rates(counters: Iterable[SeriesData], start: float,
           end: float) -> dict[Labels, float]:
    """``rate()`` of each counter that has one, computed for all of them at once."""
    series = list(counters)
    return {s.labels: rate for s, rate in zip(series, rates(series, start, end), strict=True)
            if rate is not None}


def bandwidth_utilization(read: Iterable[SeriesData], write: Iterable[SeriesData],
                          info: Iterable[SeriesData], peak: Iterable[SeriesData],
                          *, start: float, end: float, interval: float) -> Values:
    """``memory_bandwidth_utilization_ratio``: one value per GPU of each server (see the
    module docstring for the join and the fallback without ``server_gpu_info``)."""
    writes = _rates(write, start, end)
    gpus_of = server_gpus(info, end, interval)
    peaks = gpu_values(peak, end)
    out: Values = []
    for labels, read_rate in _rates(read, start, end).items():
        write_rate = writes.get(labels)
        if write_rate is None:
            continue
        moved = read_rate + write_rate
        node, server = _key(dict(labels), "server")
        gpus = gpus_of.get((node, server))
        if gpus is None:  # fallback: one value if the node's GPUs share one peak
            node_peaks = {v.value for v in _node_gpus(peaks, node)}
            if len(node_peaks) == 1 and (only := node_peaks.pop()) > 0:
                out.append((labels, moved / only))
            continue
        for gpu in sorted(gpus):
            match = peaks.get((node, gpu))
            if match is not None and match.value > 0:
                out.append((make_labels(dict(labels), gpu=gpu), moved / match.value))
    return out


def _mean_peak(models: Sequence[str]) -> float | None:
    peaks = [peak_bf16_flops(m) for m in models]
    known = [p for p in peaks if p is not None]
    if not known or len(known) != len(peaks):
        return None
    return sum(known) / len(known)


def flops_utilization(flops: Iterable[SeriesData], info: Iterable[SeriesData],
                      memory_total: Iterable[SeriesData], *, start: float,
                      end: float, interval: float) -> Values:
    """``model_flops_utilization_ratio``: the per-GPU FLOP rate over the mean peak of the
    server's GPUs, their models read from ``gpu_memory_total_bytes``'s model label."""
    gpus_of = server_gpus(info, end, interval)
    models = gpu_values(memory_total, end)
    out: Values = []
    for labels, rate in _rates(flops, start, end).items():
        node, server = _key(dict(labels), "server")
        gpus = gpus_of.get((node, server))
        if gpus is None:  # fallback: the node's GPUs, if all of one model
            names = {v.model for v in _node_gpus(models, node)}
            peak = _mean_peak(sorted(names)) if len(names) == 1 else None
        else:
            found = [models.get((node, gpu)) for gpu in sorted(gpus)]
            peak = None if any(m is None for m in found) else _mean_peak(
                [m.model for m in found if m is not None])
        if peak is not None:
            out.append((labels, rate / peak))
    return out


def cost_per_million_tokens(tokens: Iterable[SeriesData], info: Iterable[SeriesData],
                            price: Iterable[SeriesData], *, start: float, end: float,
                            interval: float) -> Values:
    """``cost_per_million_tokens_usd``: the server's share of its GPUs' hourly price,
    per second, over its generated tokens per second, x 1e6."""
    gpus_of = server_gpus(info, end, interval)
    sharing: dict[GpuKey, int] = defaultdict(int)
    for (node, _), used in gpus_of.items():
        for gpu in used:
            sharing[node, gpu] += 1
    prices = gpu_values(price, end)
    out: Values = []
    for labels, rate in _rates(tokens, start, end).items():
        node, server = _key(dict(labels), "server")
        gpus = gpus_of.get((node, server))
        if not gpus or rate <= 0:
            continue
        shares = [prices.get((node, gpu)) for gpu in sorted(gpus)]
        if any(p is None for p in shares):
            continue
        per_hour = sum(p.value / sharing[node, gpu]
                       for p, gpu in zip(shares, sorted(gpus), strict=True) if p is not None)
        out.append((labels, per_hour / 3600.0 / rate * 1e6))
    return out
