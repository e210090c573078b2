"""Fleet detectors: conditions over every node's samples in a shared PostgreSQL store.

They run in one daemon of the fleet, the leader (``gpuwarden/fleet/``), over windows
that hold the series of all nodes (``fleet/source.py``); the node a series comes from
is its ``node`` label. Like every detector they do no I/O and keep no state.

* ``fleet:ModelQuantile`` -- a model's latency quantile across all its servers:
  ``histogram_quantile(q, sum by (model, le) (increase(h_bucket[window])))``, the
  number a fleet-wide Grafana panel shows. One slow server among many moves it only as
  much as its share of the requests, which is what the model's users feel.
* ``fleet:NodeStraggler`` -- a node whose mean GPU utilisation over the window is more
  than ``threshold`` below the mean of the nodes serving the same model (the model a
  node serves: the ``model`` label of its servers' ``kv_cache_usage_ratio``). A node
  serving two models is compared within each.
* ``fleet:KVHeadroom`` -- a model's KV-cache usage across its servers, weighted by each
  server's capacity in tokens (``kv_cache_capacity_tokens``; equal weights where no
  server reports one): the fraction of the fleet's KV cache for that model in use.
* ``node_silence_intervals`` (a threshold rule) -- how many of its own intervals ago a
  running node last wrote (``fleet/source.py`` reads it from the ``nodes`` table).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.condition import classify, is_live_in, require_op
from gpuwarden.promql.buckets import le_of
from gpuwarden.promql.quantile import histogram_quantile
from gpuwarden.promql.windows import increase
from gpuwarden.signals import resolve_rule_signal

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

#: The signal a node's served models are read from (every server kind maps it).
SERVED_MODEL_SIGNAL = "kv_cache_usage_ratio"


def _need_threshold(rule: RuleConfig) -> float:
    if rule.threshold is None:
        raise ValueError(f"rule {rule.name}: needs a threshold")
    require_op(rule)
    return float(rule.threshold)


class ModelQuantile:
    """``histogram_quantile(q, sum by (model, le)(increase(h_bucket[w]))) op threshold``."""

    def __init__(self, rule: RuleConfig) -> None:
        resolved = resolve_rule_signal(rule.signal)
        if resolved is None or resolved[1] is None:
            raise ValueError(f"rule {rule.name}: {rule.signal!r} does not name a quantile")
        self.rule = rule
        self.threshold = _need_threshold(rule)
        self.q = float(resolved[1])
        self.bucket_signal = f"{resolved[0]}_bucket"
        self.inputs: Mapping[str, float] = {self.bucket_signal: rule.window}

    def evaluate(self, window: Window) -> list[Finding]:
        start = window.now - self.rule.window
        summed: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
        servers: dict[str, set[tuple[str, str]]] = defaultdict(set)
        for s in window.series(self.bucket_signal):
            labels = s.label_map
            le, model = le_of(s.labels), labels.get("model", "")
            if le is None or not is_live_in(window, s):
                continue
            inc = increase(s.timestamps, s.values, start, window.now)
            if inc is None:
                continue
            summed[model][le] += inc
            servers[model].add((labels.get("node", ""), labels.get("server", "")))
        out = []
        for model, buckets in sorted(summed.items()):
            value = histogram_quantile(self.q, sorted(buckets.items()))
            if math.isnan(value):
                continue  # no request in the window: an idle model is not slow
            status = classify(value, self.rule.op, self.threshold, self.rule.clear)
            if status is None:
                continue
            nodes = sorted({n for n, _ in servers[model]})
            note = (f"p{round(self.q * 100)} over {len(servers[model])} servers on "
                    f"{len(nodes)} nodes ({', '.join(nodes)}) in {self.rule.window:g} s")
            out.append(Finding((("model", model),), value, status, (("description", note),)))
        return out


def _models_by_node(window: Window) -> dict[str, set[str]]:
    served: dict[str, set[str]] = defaultdict(set)
    for s in window.series(SERVED_MODEL_SIGNAL):
        labels = s.label_map
        if is_live_in(window, s) and labels.get("model"):
            served[labels.get("node", "")].add(labels["model"])
    return served


class NodeStraggler:
    """A node's mean GPU utilisation more than ``threshold`` below its model's nodes'."""

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.threshold = _need_threshold(rule)
        self.inputs: Mapping[str, float] = {"gpu_utilization_ratio": rule.window,
                                            SERVED_MODEL_SIGNAL: rule.window}

    def evaluate(self, window: Window) -> list[Finding]:
        start = window.now - self.rule.window
        per_node: dict[str, list[float]] = defaultdict(list)
        for s in window.series("gpu_utilization_ratio"):
            if not is_live_in(window, s):
                continue
            keep = (s.timestamps >= start) & (s.timestamps <= window.now)
            if keep.any():
                per_node[s.label_map.get("node", "")].extend(s.values[keep].tolist())
        node_mean = {n: float(np.mean(v)) for n, v in per_node.items() if v}
        by_model: dict[str, list[str]] = defaultdict(list)
        for node, models in _models_by_node(window).items():
            if node in node_mean:
                for model in models:
                    by_model[model].append(node)
        out = []
        for model, nodes in sorted(by_model.items()):
            if len(nodes) < 2:
                continue  # a model on one node has no peers to straggle behind
            fleet_mean = float(np.mean([node_mean[n] for n in nodes]))
            for node in sorted(nodes):
                gap = fleet_mean - node_mean[node]
                status = classify(gap, self.rule.op, self.threshold, self.rule.clear)
                if status is None:
                    continue
                note = (f"node {node} GPU utilisation {node_mean[node]:.0%} vs {fleet_mean:.0%} "
                        f"mean of the {len(nodes)} nodes serving {model} over "
                        f"{self.rule.window:g} s")
                out.append(Finding((("model", model), ("node", node)), gap, status,
                                   (("description", note),)))
        return out


class KVHeadroom:
    """A model's capacity-weighted KV-cache usage across its servers ``op threshold``."""

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.threshold = _need_threshold(rule)
        self.inputs: Mapping[str, float] = {SERVED_MODEL_SIGNAL: rule.window,
                                            "kv_cache_capacity_tokens": rule.window}

    def evaluate(self, window: Window) -> list[Finding]:
        capacity = {}
        for s in window.series("kv_cache_capacity_tokens"):
            if len(s) and is_live_in(window, s):
                capacity[s.labels] = float(s.values[-1])
        used: dict[str, list[tuple[float, float]]] = defaultdict(list)
        for s in window.series(SERVED_MODEL_SIGNAL):
            if not len(s) or not is_live_in(window, s):
                continue
            model = s.label_map.get("model", "")
            used[model].append((float(s.values[-1]), capacity.get(s.labels, math.nan)))
        out = []
        for model, pairs in sorted(used.items()):
            weighted = all(c > 0 for _, c in pairs)
            weights = [c if weighted else 1.0 for _, c in pairs]
            value = sum(u * w for (u, _), w in zip(pairs, weights, strict=True)) / sum(weights)
            status = classify(value, self.rule.op, self.threshold, self.rule.clear)
            if status is None:
                continue
            basis = (f"{sum(weights):.0f} tokens of KV cache" if weighted
                     else "servers weighted equally (no capacity reported)")
            note = f"{value:.0%} of {model}'s KV cache in use across {len(pairs)} servers, {basis}"
            out.append(Finding((("model", model),), value, status, (("description", note),)))
        return out
