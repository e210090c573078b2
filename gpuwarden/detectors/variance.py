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

The spread itself (per-GPU means, max minus min, the straggler) is computed in
``promql/derived.py``, which also exports it as
``gpuwarden_gpu_utilization_spread_ratio{node}``, so the dashboard shows the number the
rule compares.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.condition import classify, require_op
from gpuwarden.promql.derived import gpu_means, spread_of

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

DEFAULT_SIGNAL = "gpu_utilization_ratio"


class SpreadDetector:
    """BREACH when a node's utilisation spread ``op threshold`` (default ``> 0.15``)."""

    def __init__(self, rule: RuleConfig) -> None:
        require_op(rule)
        self.rule = rule
        self.signal = rule.signal or DEFAULT_SIGNAL
        self.threshold = 0.15 if rule.threshold is None else float(rule.threshold)
        self.inputs: Mapping[str, float] = {self.signal: rule.window}

    def evaluate(self, window: Window) -> list[Finding]:
        start = window.now - self.rule.window
        means_by_node = gpu_means(window.series(self.signal), start, window.now,
                                  interval=window.interval)
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
