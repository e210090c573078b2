"""The memory budget per GPU and the capacity per server, as a capacity review reads them.

``gpuwarden budget`` and ``/api/v1/budget`` answer "will this GPU hold its workload?"
from the store alone (``build_budget`` reads through the ``SeriesSource`` protocol of
``promql/derived.py``, so the store, a backtest's prefetched windows or a test's table
all serve):

* per GPU, ``gpu_memory_budget_bytes{part}`` (KV cache, the servers' other memory,
  other processes, free: they sum to the total), each in bytes, GiB and % of the total,
  and the headroom (``gpu_memory_headroom_ratio``) against the 15 % planning target;
* per server, the KV cache in tokens and in sequences at the p50 and p95 prompt +
  generation length of the requests that finished in the last hour (``quantile.py``'s
  ``histogram_quantile``, the p95 exactly as ``kv_cache_capacity_sequences`` computes it),
  what another ``gpu_memory_utilization`` would give (:func:`what_if`), the peak of
  running + waiting requests over the last 10 minutes against the sequences that fit,
  and the derived efficiency figures (bandwidth, FLOP utilisation, cost per million
  tokens) over a window the caller chooses (an hour by default, stated in the output).

Gauges are read as their newest value within the peak window (10 minutes): a GPU or a
server that stopped reporting longer ago is not in today's budget. A figure the store
cannot give is None, with the reason in the row's ``missing`` (name -> why), so the
text can say "n/a (server does not export kv_cache_memory_bytes)" instead of a guess.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from typing import NamedTuple

from gpuwarden.capacity.reading import (
    GpuKey,
    Reader,
    ServerKey,
    gpu_key,
    gpu_order,
    server_key,
    window_text,
)
from gpuwarden.capacity.what_if import WhatIf, what_if
from gpuwarden.promql.aggregation import peak_of_sum
from gpuwarden.promql.derived import LENGTHS_WINDOW
from gpuwarden.promql.prefetch import SeriesSource

GIB = float(1 << 30)
#: Free memory a GPU should keep: planning practice for inference (issue 13).
HEADROOM_TARGET = 0.15
#: The ``gpu_memory_utilization`` the what-if computes: the production ceiling vLLM
#: deployments keep (0.95 leaves no room for long sequences).
WHAT_IF_UTILIZATION = 0.85
#: Running + waiting requests are compared with the KV capacity over this window, as the
#: KVCapacityTooSmall rule does by default; gauges are read as of their newest sample in it.
PEAK_WINDOW = 600.0
#: The window of the efficiency figures (rates over it), shortened to the stored history
#: when that is younger (:func:`stored_span`), but not below the floor.
EFFICIENCY_WINDOW = 3600.0
MIN_EFFICIENCY_WINDOW = 60.0
#: The history is younger than the window when it starts more than this share of the
#: window after the window's start.
YOUNG_GAP = 0.1
PARTS = ("kv_cache", "server_other", "other_processes", "free")
EFFICIENCY = ("memory_bandwidth_utilization_ratio", "model_flops_utilization_ratio",
              "cost_per_million_tokens_usd")
QUANTILES = ("p50", "p95")


def _pct(part: float | None, total: float | None) -> float | None:
    return None if part is None or not total else 100.0 * part / total


@dataclass
class GpuBudget:
    """One GPU's memory split; ``parts`` in bytes (None: not in the store)."""

    node: str
    gpu: str
    uuid: str
    model: str
    total_bytes: float | None
    parts: dict[str, float | None]
    headroom_ratio: float | None
    headroom_target_ratio: float
    peak_bandwidth_bytes_per_second: float | None
    cost_per_hour_usd: float | None
    servers: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def below_target(self) -> bool | None:
        if self.headroom_ratio is None:
            return None
        return self.headroom_ratio < self.headroom_target_ratio

    def to_json(self) -> dict[str, object]:
        total = self.total_bytes
        return {
            "node": self.node, "gpu": self.gpu, "uuid": self.uuid, "model": self.model,
            "total_bytes": total,
            "total_gib": None if total is None else total / GIB,
            "parts": {name: {"bytes": value,
                             "gib": None if value is None else value / GIB,
                             "percent": _pct(value, total)}
                      for name, value in self.parts.items()},
            "headroom_ratio": self.headroom_ratio,
            "headroom_target_ratio": self.headroom_target_ratio,
            "below_target": self.below_target,
            "peak_bandwidth_bytes_per_second": self.peak_bandwidth_bytes_per_second,
            "cost_per_hour_usd": self.cost_per_hour_usd,
            "servers": list(self.servers),
            "missing": dict(self.missing),
        }


@dataclass
class ServerBudget:
    """One server's KV capacity, load, efficiency and cost (None: not in the store)."""

    node: str
    server: str
    model: str
    gpus: list[str]
    kv_cache_capacity_tokens: float | None
    kv_cache_memory_bytes: float | None
    gpu_memory_utilization_config: float | None
    #: "p50"/"p95" -> {"prompt", "generation", "total"} tokens per request
    lengths: dict[str, dict[str, float | None]]
    #: "p50"/"p95" -> sequences the KV cache holds at that length
    sequences: dict[str, float | None]
    what_if: WhatIf | None
    peak_requests: float | None
    #: GPU ("" where the signal does not say) -> bandwidth used / peak
    memory_bandwidth_utilization_ratio: dict[str, float] | None
    model_flops_utilization_ratio: float | None
    cost_per_million_tokens_usd: float | None
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def capacity_over_peak(self) -> float | None:
        """Sequences that fit at p95 over the peak running + waiting (< 1: preemptions)."""
        fits = self.sequences.get("p95")
        if fits is None or not self.peak_requests:
            return None
        return fits / self.peak_requests

    def to_json(self) -> dict[str, object]:
        return {
            "node": self.node, "server": self.server, "model": self.model,
            "gpus": list(self.gpus),
            "kv_cache_capacity_tokens": self.kv_cache_capacity_tokens,
            "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
            "gpu_memory_utilization_config": self.gpu_memory_utilization_config,
            "lengths_tokens": {q: dict(v) for q, v in self.lengths.items()},
            "sequences": dict(self.sequences),
            "what_if": None if self.what_if is None else self.what_if.to_json(),
            "peak_requests": self.peak_requests,
            "capacity_over_peak": self.capacity_over_peak,
            "memory_bandwidth_utilization_ratio": (
                None if self.memory_bandwidth_utilization_ratio is None
                else dict(self.memory_bandwidth_utilization_ratio)),
            "model_flops_utilization_ratio": self.model_flops_utilization_ratio,
            "cost_per_million_tokens_usd": self.cost_per_million_tokens_usd,
            "missing": dict(self.missing),
        }


@dataclass
class Budget:
    """The whole page: every GPU, every server, and the windows the figures cover."""

    generated_at: float
    node: str | None
    lengths_window: float
    peak_window: float
    efficiency_window: float
    headroom_target_ratio: float
    what_if_utilization: float
    gpus: list[GpuBudget]
    servers: list[ServerBudget]

    def to_json(self) -> dict[str, object]:
        return {
            "generated_at": self.generated_at,
            "node": self.node,
            "windows": {
                "lengths_seconds": self.lengths_window,
                "peak_seconds": self.peak_window,
                "efficiency_seconds": self.efficiency_window,
            },
            "headroom_target_ratio": self.headroom_target_ratio,
            "what_if_gpu_memory_utilization": self.what_if_utilization,
            "gpus": [g.to_json() for g in self.gpus],
            "servers": [s.to_json() for s in self.servers],
        }


def build_budget(
    source: SeriesSource,
    now: float,
    *,
    node: str | None = None,
    lengths_window: float = LENGTHS_WINDOW,
    peak_window: float = PEAK_WINDOW,
    efficiency_window: float = EFFICIENCY_WINDOW,
    interval: float = 1.0,
    headroom_target: float = HEADROOM_TARGET,
    what_if_utilization: float = WHAT_IF_UTILIZATION,
) -> Budget:
    """The budget as of ``now`` over ``source`` (only ``node``'s series, if given).

    ``interval`` is the collection interval (the derived signals' staleness). Raises
    what the source raises (the store: ``StoreUnavailable``).
    """
    reader = Reader(source, now, node, recent=now - peak_window)
    gpus = _gpus(reader, headroom_target)
    users = reader.server_gpus()
    by_place = {(g.node, name): g for g in gpus for name in (g.gpu, g.uuid) if name}
    for (gnode, server), names in sorted(users.items()):
        for name in names:
            gpu = by_place.get((gnode, name))
            if gpu is not None and server not in gpu.servers:
                gpu.servers.append(server)
    efficiency_window = stored_span(reader, "generation_tokens_total", efficiency_window,
                                    floor=MIN_EFFICIENCY_WINDOW)
    windows = _Windows(lengths_window, peak_window, efficiency_window, interval)
    servers = _servers(reader, users, by_place, windows, what_if_utilization)
    return Budget(now, node, lengths_window, peak_window, efficiency_window, headroom_target,
                  what_if_utilization, gpus, servers)


def stored_span(reader: Reader, signal: str, window: float, *, floor: float) -> float:
    """``window``, shortened to the stored history of ``signal`` where that is younger
    (a daemon started ten minutes ago): a rate divides the increase by the whole range,
    as Prometheus' ``rate`` does, so an hour's window over ten minutes of samples would
    read six times low. Never below ``floor``."""
    starts = [float(s.timestamps[0]) for s in reader.query(signal, reader.now - window)
              if len(s)]
    if not starts:
        return window
    span = reader.now - min(starts)
    if span >= (1 - YOUNG_GAP) * window:  # a gap of a few samples is extrapolated over
        return window
    return max(span, min(floor, window))


def _gpus(reader: Reader, target: float) -> list[GpuBudget]:
    parts: dict[GpuKey, dict[str, float]] = defaultdict(dict)
    for labels, value in reader.latest("gpu_memory_budget_bytes").items():
        part = dict(labels).get("part", "")
        if part in PARTS:
            parts[gpu_key(labels)][part] = value
    totals = reader.latest_by("gpu_memory_total_bytes", gpu_key)
    headroom = reader.latest_by("gpu_memory_headroom_ratio", gpu_key)
    bandwidth = reader.latest_by("gpu_memory_bandwidth_peak_bytes_per_second", gpu_key)
    cost = reader.latest_by("gpu_cost_per_hour_usd", gpu_key)
    out = []
    for key in sorted(set(parts) | set(totals), key=gpu_order):
        split: dict[str, float | None] = {p: parts[key].get(p) for p in PARTS}
        missing: dict[str, str] = {}
        total = totals.get(key)
        if total is None and all(v is not None for v in split.values()):
            total = sum(v for v in split.values() if v is not None)  # the parts sum to it
        for p, v in split.items():
            if v is None:
                missing[f"parts.{p}"] = ("the daemon stores no gpu_memory_budget_bytes"
                                         f"{{part=\"{p}\"}} for this GPU")
        ratio = headroom.get(key)
        free = split["free"]
        if ratio is None and free is not None and total:
            ratio = free / total  # the same definition: free over total
        if ratio is None:
            missing["headroom_ratio"] = "neither gpu_memory_headroom_ratio nor the free part"
        if key not in bandwidth:
            missing["peak_bandwidth_bytes_per_second"] = (
                "no gpu_memory_bandwidth_peak_bytes_per_second (NVML gives the bus width and "
                "the maximum memory clock on real GPUs only)")
        if key not in cost:
            missing["cost_per_hour_usd"] = "no [cost] gpu_hour_usd in the config for this GPU"
        out.append(GpuBudget(*key, total_bytes=total, parts=split, headroom_ratio=ratio,
                             headroom_target_ratio=target,
                             peak_bandwidth_bytes_per_second=bandwidth.get(key),
                             cost_per_hour_usd=cost.get(key), missing=missing))
    return out


class _Windows(NamedTuple):
    lengths: float
    peak: float
    efficiency: float
    interval: float


def _servers(reader: Reader, users: dict[tuple[str, str], list[str]],
             by_place: dict[tuple[str, str], GpuBudget], windows: _Windows,
             target: float) -> list[ServerBudget]:
    lengths_window, peak_window, efficiency_window, interval = windows
    tokens = reader.latest_by("kv_cache_capacity_tokens", server_key)
    kv_bytes = reader.latest_by("kv_cache_memory_bytes", server_key)
    fraction = reader.latest_by("server_gpu_memory_utilization_config", server_key)
    running = reader.series_by("requests_running", server_key)
    waiting = reader.series_by("requests_waiting", server_key)
    start = reader.now - lengths_window
    prompt = reader.quantiles("prompt_length_tokens", start)
    generation = reader.quantiles("generation_length_tokens", start)
    derived = {name: reader.derived(name, efficiency_window, interval) for name in EFFICIENCY}
    fraction_of = {(k[0], k[1]): v for k, v in fraction.items()}
    keys: set[ServerKey] = set()
    for table in (tokens, kv_bytes, fraction, running, waiting, prompt, generation):
        keys.update(table)
    out = []
    for key in sorted(keys):
        missing: dict[str, str] = {}
        gpus = users.get(key[:2], [])
        for name, table in (("kv_cache_capacity_tokens", tokens),
                            ("kv_cache_memory_bytes", kv_bytes),
                            ("server_gpu_memory_utilization_config", fraction)):
            if key not in table:
                missing[name] = f"server does not export {name}"
        lengths, lengths_why = _lengths(prompt.get(key), generation.get(key),
                                        window_text(lengths_window))
        cap = tokens.get(key)
        sequences: dict[str, float | None] = {}
        for q in QUANTILES:
            length = lengths[q]["total"]
            sequences[q] = cap / length if cap is not None and length else None
            if sequences[q] is None:
                missing[f"sequences.{q}"] = (missing.get("kv_cache_capacity_tokens")
                                             or lengths_why.get(q, "no length"))
        if lengths_why:
            missing["lengths_tokens"] = "; ".join(dict.fromkeys(lengths_why.values()))
        if not gpus:
            missing["gpus"] = ("no server_gpu_info: neither NVML processes nor the config's "
                               "gpus = [...] say which GPUs the server uses")
        places = [by_place[(key[0], g)] for g in gpus if (key[0], g) in by_place]
        totals = [g.total_bytes for g in places if g.total_bytes is not None]
        neighbours = sorted({(s, fraction_of.get((key[0], s))) for g in places
                             for s in g.servers if s != key[1]}, key=lambda p: p[0])
        change, why_not = what_if(target, tokens=cap, kv_bytes=kv_bytes.get(key),
                                  configured=fraction.get(key),
                                  gpu_total=min(totals) if totals else None,
                                  sequences_p95=sequences["p95"], neighbours=neighbours)
        if why_not:
            missing["what_if"] = why_not
        peak = None
        if key in running and key in waiting:
            peak = peak_of_sum(running[key], waiting[key], reader.now - peak_window, reader.now)
        if peak is None:
            missing["peak_requests"] = (
                f"no requests_running + requests_waiting in the last "
                f"{window_text(peak_window)}")
        figures: dict[str, dict[str, float]] = {}
        for name in EFFICIENCY:
            values, reason = derived[name]
            got = values.get(key)
            if got:
                figures[name] = got
            else:
                missing[name] = reason or (f"no value for this server over the last "
                                           f"{window_text(efficiency_window)}")
        out.append(ServerBudget(
            *key, gpus=list(gpus), kv_cache_capacity_tokens=cap,
            kv_cache_memory_bytes=kv_bytes.get(key),
            gpu_memory_utilization_config=fraction.get(key), lengths=lengths,
            sequences=sequences, what_if=change, peak_requests=peak,
            memory_bandwidth_utilization_ratio=figures.get(EFFICIENCY[0]),
            model_flops_utilization_ratio=_one(figures.get(EFFICIENCY[1])),
            cost_per_million_tokens_usd=_one(figures.get(EFFICIENCY[2])),
            missing=missing))
    return out


def _one(values: dict[str, float] | None) -> float | None:
    """A per-server figure: its one value (the largest, should a signal carry a GPU)."""
    return max(values.values()) if values else None


def _lengths(prompt: tuple[float | None, ...] | None,
             generation: tuple[float | None, ...] | None,
             window: str) -> tuple[dict[str, dict[str, float | None]], dict[str, str]]:
    """p50/p95 prompt, generation and total lengths, and why a quantile is missing."""
    out: dict[str, dict[str, float | None]] = {}
    why: dict[str, str] = {}
    for i, q in enumerate(QUANTILES):
        row: dict[str, float | None] = {}
        reasons = []
        for name, got in (("prompt", prompt), ("generation", generation)):
            value = None if got is None else got[i]
            if got is None:
                reasons.append(f"server does not export {name}_length_tokens")
            elif value is None:
                reasons.append(f"fewer than two samples of {name}_length_tokens in the last "
                               f"{window}")
            elif math.isnan(value):
                reasons.append(f"no request finished in the last {window}")
            row[name] = None if value is None or math.isnan(value) else value
        a, b = row["prompt"], row["generation"]
        row["total"] = a + b if a is not None and b is not None else None
        out[q] = row
        if reasons:
            why[q] = "; ".join(dict.fromkeys(reasons))
    return out, why

