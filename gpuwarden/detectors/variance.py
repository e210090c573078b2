"""Spread of mean GPU utilisation across a node's GPUs (the "straggler" detector).

Why means over a window, not instantaneous values: in tensor/data-parallel serving all
GPUs of a replica wait for each other, so their utilisation should track together;
instantaneous NVML utilisation is a 1/6 s to 1 s sampled duty cycle and jitters by
tens of points. Averaging each GPU over the window (default 2 min) and then taking max
minus min across GPUs separates a GPU that is systematically slower or idle (thermal
throttling, a wedged worker, an unbalanced shard) from noise.

Why the straggler is an annotation, not a label: the GPU furthest from the median can
change from one evaluation to the next when the node splits into two groups (four GPUs
at 0.9, four at 0.6); as a label it would change the alert's identity, restart its
``for`` clock and the alert might never fire. The alert is per node; the straggler is
context.

``utilization_spread`` is also what ``derived.py`` exports as
``gpuwarden_gpu_utilization_spread_ratio{node}``, so the dashboard shows the number the
rule compares.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.threshold import OPS, classify, stale_after, values_in
from gpuwarden.detectors.trend import median
from gpuwarden.model import SeriesData

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

DEFAULT_SIGNAL = "gpu_utilization_ratio"


class Spread(NamedTuple):
    node: str
    spread: float  # max - min of the per-GPU means
    stdev: float  # population standard deviation of the per-GPU means
    straggler: str  # the GPU whose mean is furthest from the median of the means


def _gpu_name(labels: Mapping[str, str]) -> str:
    return labels.get("gpu") or labels.get("uuid") or ",".join(f"{k}={v}" for k, v in
                                                              sorted(labels.items()))


def gpu_means(
    series: Sequence[SeriesData], start: float, end: float, *, stale_after: float | None = None
) -> dict[str, dict[str, float]]:
    """node -> GPU -> mean utilisation over ``[start, end]`` of the live series."""
    out: dict[str, dict[str, float]] = defaultdict(dict)
    for s in series:
        if not len(s):
            continue
        if stale_after is not None and float(s.timestamps[-1]) < end - stale_after:
            continue  # a GPU that stopped reporting is GPULost's business, not a straggler
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


def utilization_spread(
    series: Sequence[SeriesData], start: float, end: float, *, stale_after: float | None = None
) -> list[Spread]:
    """Per node: (node, spread, stdev, straggler) of the GPUs' mean utilisation.

    Pure: used by the spread detector and by ``derived.derive`` for ``/metrics``. Nodes
    with fewer than two GPUs reporting in the window have no spread and are left out.
    """
    out = []
    for node, means in sorted(gpu_means(series, start, end, stale_after=stale_after).items()):
        spread = spread_of(node, means)
        if spread is not None:
            out.append(spread)
    return out


class SpreadDetector:
    """BREACH when a node's utilisation spread ``op threshold`` (default ``> 0.15``)."""

    def __init__(self, rule: RuleConfig) -> None:
        if rule.op not in OPS:
            raise ValueError(f"rule {rule.name}: unknown op {rule.op!r}")
        self.rule = rule
        self.signal = rule.signal or DEFAULT_SIGNAL
        self.threshold = 0.15 if rule.threshold is None else float(rule.threshold)
        self.inputs: Mapping[str, float] = {self.signal: rule.window}

    def evaluate(self, window: Window) -> list[Finding]:
        start = window.now - self.rule.window
        means_by_node = gpu_means(window.series(self.signal), start, window.now,
                                  stale_after=stale_after(window.interval))
        out = []
        for node, means in sorted(means_by_node.items()):
            spread = spread_of(node, means)
            if spread is None or math.isnan(spread.spread):
                continue
            status = classify(spread.spread, self.rule.op, self.threshold, self.rule.clear)
            if status is None:
                continue
            per_gpu = ", ".join(f"{g}={means[g]:.2f}" for g in sorted(means))
            annotations = (
                ("straggler_gpu", spread.straggler),
                ("spread", f"{spread.spread:.3f}"),
                ("stdev", f"{spread.stdev:.3f}"),
                ("gpu_means", per_gpu),
                ("description",
                 f"mean utilisation over {self.rule.window:g} s differs by "
                 f"{spread.spread:.0%} across {len(means)} GPUs (stdev {spread.stdev:.3f}); "
                 f"GPU {spread.straggler} is furthest from the median ({per_gpu})"),
            )
            out.append(Finding((("node", node),), spread.spread, status, annotations))
        return out
