"""Threshold detector: ``signal op threshold`` per series, the default of every rule.

The comparison, hysteresis and staleness are the rule semantics every detector shares
(``condition.py``). What is compared per series:

* a stored signal: its ``aggregation`` over ``[now - window, now]`` (``last``, the
  default, where the window only bounds staleness; ``mean``, ``max``, ``min``; NaN
  samples skipped: ``promql/aggregation.py``);
* a derived signal (``signals.DERIVED_INPUTS``: tokens per second, the hit and
  acceptance ratios, the GPU utilisation spread), which is not stored, only exported:
  computed from the stored inputs over the rule's window by the same function that
  computes it for ``/metrics`` (``promql/derived.py``, ``derive_signal``), so the alert
  and the dashboard agree. The first input's stale series are left out (a server that
  stopped reporting has no tokens/s or hit ratio now: ``condition.derived_inputs``);
* a quantile signal (``itl_p95_seconds``): not here, :func:`threshold_or_quantile`
  hands it to ``latency.QuantileDetector``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.condition import (
    MIN_LOOKBACK,
    classify,
    derived_inputs,
    live_series,
    require_op,
)
from gpuwarden.detectors.latency import QuantileDetector
from gpuwarden.promql.aggregation import aggregate
from gpuwarden.promql.derived import LabelledValue, derive_signal, input_lookbacks
from gpuwarden.signals import DERIVED_INPUTS, resolve_rule_signal

if TYPE_CHECKING:
    from gpuwarden.detectors import Detector
    from gpuwarden.detectors.rule import RuleConfig


class ThresholdDetector:
    """``signal op threshold`` per series, with optional hysteresis and aggregation."""

    def __init__(self, rule: RuleConfig) -> None:
        if rule.threshold is None:
            raise ValueError(f"rule {rule.name}: threshold detector needs a threshold")
        require_op(rule)
        self.rule = rule
        self.threshold = float(rule.threshold)
        lookback = max(rule.window, MIN_LOOKBACK)
        self.derived = rule.signal in DERIVED_INPUTS
        self.names = DERIVED_INPUTS.get(rule.signal, (rule.signal,))
        self.inputs: Mapping[str, float] = dict.fromkeys(self.names, lookback)
        if self.derived:  # some read further back (the hour of kv_cache_capacity_sequences)
            self.inputs = input_lookbacks(rule.signal, lookback)

    def _values(self, window: Window) -> list[LabelledValue]:
        signal = self.rule.signal
        start, now = window.now - self.rule.window, window.now
        if self.derived:
            return derive_signal(signal, derived_inputs(window, signal), start, now,
                                 interval=window.interval)
        values: list[LabelledValue] = []
        for s in live_series(window, signal):
            value = aggregate(s, self.rule.aggregation, start, now)
            if value is not None:
                values.append((s.labels, value))
        return values

    def evaluate(self, window: Window) -> list[Finding]:
        out = []
        for labels, value in self._values(window):
            status = classify(value, self.rule.op, self.threshold, self.rule.clear)
            if status is not None:
                out.append(Finding(labels, value, status))
        return out


def threshold_or_quantile(rule: RuleConfig) -> Detector:
    """The default detector; a quantile signal (``itl_p95_seconds``) goes to ``quantile``."""
    resolved = resolve_rule_signal(rule.signal)
    if resolved is not None and resolved[1] is not None:
        return QuantileDetector(rule)
    return ThresholdDetector(rule)
