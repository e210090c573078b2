"""Composite diagnostics: what single thresholds miss (``detector = "composite:<name>"``).

Each one names a mechanism an SRE would otherwise piece together from three graphs:

* ``KVCacheBottleneck`` — the GPU is busy (node mean utilisation > 0.9 over the window)
  yet generation throughput fell below ``threshold`` (default 0.5) of its rate over the
  previous window, while KV usage is > 0.9: the scheduler is thrashing the KV cache
  (preempting and recomputing) instead of decoding. The value is current / previous
  rate. GPUs are matched to servers by the ``node`` label (the collectors do not know
  which GPUs a server uses).
* ``PreemptionsRising`` — ``rate(preemptions_total[window])`` ``op threshold`` (default
  > 0.1/s, i.e. a dozen preemptions in two minutes; a few are normal under load).
* ``PrefixCacheHitFalling`` — the prefix-cache hit ratio over the last window is lower
  than over the window before by more than ``threshold`` (default 0.2 = 20 points):
  context is being recomputed instead of reused. It is the falling-ratio detector
  (``falling.py``) on that ratio, and lives there.
* ``QueueGrowing`` — ``requests_waiting`` rises over the window by more than
  ``threshold`` requests (default 5: both its range in the window and its Theil-Sen
  fitted change exceed it) with a significantly positive slope,
  while ``requests_running`` stays flat (its fitted change over the window is within
  ``max(1, 10 %)`` of its mean): requests arrive faster than the server admits them and
  it is not scaling its batch, typically because the KV cache is full.

* ``KVCapacityTooSmall`` — fewer sequences fit in the KV cache at the last hour's p95
  lengths (``kv_cache_capacity_sequences``, ``promql/derived.py``) than the peak of
  ``requests_running + requests_waiting`` over the window (10 min by default): the value
  is capacity / peak, compared ``op threshold`` (default ``< 1``). At such a peak the
  scheduler must preempt (evict and recompute) or keep requests waiting: preemptions
  are coming. A server restart empties the length histograms, so the p95 comes from the
  requests since; none at all (nothing finished within the hour) is no finding.

All are per server (``node, server, model``), use counters exactly as PromQL
would (``promql/windows.py``), and skip series that went stale.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.condition import (
    classify,
    derived_inputs,
    live_pairs,
    live_series,
    require_op,
)
from gpuwarden.detectors.trend import theil_sen
from gpuwarden.model import SeriesData
from gpuwarden.promql.aggregation import aggregate, in_window, peak_of_sum, values_in
from gpuwarden.promql.derived import derive_signal, input_lookbacks
from gpuwarden.promql.windows import counter_rate, rates

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

GPU_BUSY = 0.9
KV_FULL = 0.9
RUNNING_FLAT_FRACTION = 0.1
MIN_QUEUE_POINTS = 10

DEFAULT_THRESHOLDS: dict[str, float] = {
    "KVCacheBottleneck": 0.5,
    "PreemptionsRising": 0.1,
    "QueueGrowing": 5.0,
    "KVCapacityTooSmall": 1.0,
}


class Composite:
    """Base: rule, threshold with a per-diagnostic default, and declared inputs."""

    name = ""

    def __init__(self, rule: RuleConfig) -> None:
        require_op(rule)
        self.rule = rule
        default = DEFAULT_THRESHOLDS[self.name]
        self.threshold = default if rule.threshold is None else float(rule.threshold)
        self.inputs: Mapping[str, float] = self._inputs(rule.window)

    def _inputs(self, w: float) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, window: Window) -> list[Finding]:
        raise NotImplementedError


class KVCacheBottleneck(Composite):
    name = "KVCacheBottleneck"

    def _inputs(self, w: float) -> dict[str, float]:
        return {"gpu_utilization_ratio": w, "generation_tokens_total": 2 * w,
                "kv_cache_usage_ratio": max(w, 60.0)}

    def evaluate(self, window: Window) -> list[Finding]:
        now, w = window.now, self.rule.window
        util: dict[str, list[float]] = {}
        for s in live_series(window, "gpu_utilization_ratio"):
            mean = aggregate(s, "mean", now - w, now)
            if mean is not None:
                util.setdefault(s.label_map.get("node", ""), []).append(mean)
        kv = {s.labels: v for s in live_series(window, "kv_cache_usage_ratio")
              if (v := aggregate(s, "last", now - w, now)) is not None}
        out = []
        for s in live_series(window, "generation_tokens_total"):
            node_util = util.get(s.label_map.get("node", ""))
            usage = kv.get(s.labels)
            if not node_util or usage is None:
                continue
            busy = float(np.mean(node_util))
            if not (busy > GPU_BUSY and usage > KV_FULL):
                continue
            now_rate = counter_rate(s, now - w, now)
            before = counter_rate(s, now - 2 * w, now - w)
            if now_rate is None or before is None or not before > 0:
                continue
            ratio = now_rate / before
            if classify(ratio, "<", self.threshold, None) is None:
                continue
            text = (f"GPU utilisation {busy:.0%} and KV cache {usage:.0%}, but "
                    f"{now_rate:.1f} tokens/s now vs {before:.1f} tokens/s in the previous "
                    f"{w:g} s ({ratio:.0%})")
            out.append(Finding(s.labels, ratio, annotations=(
                ("gpu_utilization", f"{busy:.3f}"), ("kv_cache_usage", f"{usage:.3f}"),
                ("tokens_per_second", f"{now_rate:.4g}"),
                ("tokens_per_second_before", f"{before:.4g}"), ("description", text))))
        return out


class PreemptionsRising(Composite):
    name = "PreemptionsRising"

    def _inputs(self, w: float) -> dict[str, float]:
        return {"preemptions_total": w}

    def evaluate(self, window: Window) -> list[Finding]:
        now, w = window.now, self.rule.window
        live = list(live_series(window, "preemptions_total"))
        out = []
        # Every server's rate in one go: ``rates`` is ``counter_rate`` per series, vectorised.
        for s, rate in zip(live, rates(live, now - w, now), strict=True):
            if rate is None:
                continue
            status = classify(rate, self.rule.op, self.threshold, self.rule.clear)
            if status is not None:
                text = f"{rate:.3g} preemptions/s ({rate * w:.0f} in {w:g} s)"
                out.append(Finding(s.labels, rate, status, (("description", text),)))
        return out


class QueueGrowing(Composite):
    name = "QueueGrowing"

    def _inputs(self, w: float) -> dict[str, float]:
        return {"requests_waiting": w, "requests_running": w}

    def evaluate(self, window: Window) -> list[Finding]:
        now, w = window.now, self.rule.window
        out = []
        for s, run in live_pairs(window, "requests_waiting", "requests_running"):
            # Cheap exit first: a queue whose range in the window is within N requests
            # did not grow by N, whatever a fit says (most cycles: an empty queue).
            waiting = values_in(s, now - w, now)
            if waiting.size < MIN_QUEUE_POINTS or waiting.max() - waiting.min() <= self.threshold:
                continue
            growth = _fitted_change(s, now - w, now)
            if growth is None or growth[0] <= self.threshold or growth[1] <= 0:
                continue
            change = _fitted_change(run, now - w, now)
            if change is None:
                continue
            mean_running = float(np.mean(values_in(run, now - w, now)))
            if abs(change[0]) > max(1.0, RUNNING_FLAT_FRACTION * mean_running):
                continue
            text = (f"waiting requests grew by {growth[0]:.1f} over {w:g} s while "
                    f"~{mean_running:.0f} kept running (change {change[0]:+.1f})")
            out.append(Finding(s.labels, growth[0], annotations=(
                ("running_change", f"{change[0]:.3g}"), ("description", text))))
        return out


class KVCapacityTooSmall(Composite):
    name = "KVCapacityTooSmall"
    capacity = "kv_cache_capacity_sequences"

    def _inputs(self, w: float) -> dict[str, float]:
        return {**input_lookbacks(self.capacity, max(w, 60.0)), "requests_running": w,
                "requests_waiting": w}

    def evaluate(self, window: Window) -> list[Finding]:
        now, w = window.now, self.rule.window
        fits = dict(derive_signal(self.capacity, derived_inputs(window, self.capacity),
                                  now - w, now, interval=window.interval))
        out = []
        for run, wait in live_pairs(window, "requests_running", "requests_waiting"):
            sequences = fits.get(run.labels)
            peak = peak_of_sum(run, wait, now - w, now)
            if sequences is None or peak is None or not peak > 0:
                continue
            ratio = sequences / peak
            status = classify(ratio, self.rule.op, self.threshold, self.rule.clear)
            if status is not None:
                text = (f"{sequences:.1f} sequences fit in the KV cache at the last hour's p95 "
                        f"prompt + generation length, but {peak:.0f} requests were running or "
                        f"waiting at once in the last {w:g} s: the scheduler will preempt "
                        f"(evict and recompute) or keep them waiting")
                out.append(Finding(run.labels, ratio, status, (
                    ("capacity_sequences", f"{sequences:.4g}"),
                    ("peak_requests", f"{peak:.0f}"), ("description", text))))
        return out


def _fitted_change(series: SeriesData, start: float,
                   end: float) -> tuple[float, float] | None:
    """(Theil-Sen slope x span, lower 99 % slope bound) over the window, or None."""
    x, y = in_window(series, start, end)
    ok = ~np.isnan(y)
    x, y = x[ok], y[ok]
    if len(y) < MIN_QUEUE_POINTS or x[-1] <= x[0]:
        return None
    if y.min() == y.max():
        return 0.0, 0.0  # a constant series (an idle queue, a steady batch): no fit needed
    fit = theil_sen(x - end, y)
    return fit.slope * float(x[-1] - x[0]), fit.low_slope

