"""Threshold detector, and the comparison/staleness/aggregation helpers every detector shares.

Why one place for these: "is this value beyond the threshold", "is this series still
alive" and "what does hysteresis mean for op <" must be answered the same way by every
rule, or two rules on the same signal would disagree at the edges an operator looks at.

Semantics (the README's "Rules and alerts", with Netdata-style hysteresis):

* ``op`` is one of ``> >= < <= == !=``; a NaN never compares true (as in PromQL).
* With ``clear`` set, a value beyond ``threshold`` is a BREACH; a value beyond ``clear``
  but not beyond ``threshold`` is a HOLD (keeps a raised alert, starts none); anything
  else is no finding. "Beyond clear" is ``value > clear`` for ``>``/``>=`` and
  ``value < clear`` for ``<``/``<=``. ``==``/``!=`` have no direction, so ``clear`` is
  ignored for them (``validate_rules`` reports it).
* Staleness: a series whose newest sample is older than ``max(3 * interval, 5 s)`` (or
  three of its own last sample spacings, for slow series like quality canaries) is
  treated as absent. A dead server's last KV value must not keep an alert alive
  forever; ``ServerDown`` is the rule that speaks for it.
* Aggregation over ``[now - window, now]``: ``last`` (window only bounds staleness),
  ``mean``, ``max``, ``min``; NaN samples are skipped.

Derived window signals (``generation_tokens_per_second``, ``prefix_cache_hit_ratio``,
``gpu_utilization_spread_ratio``) are not stored, only exported; a threshold rule on
one of them computes it from the stored counters over the rule's window, exactly as
``derived.py`` does for ``/metrics``, so the alert and the dashboard agree.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np

from gpuwarden.detectors import Finding, Status, Window
from gpuwarden.model import Labels, SeriesData
from gpuwarden.promql.windows import counter_rate, ratio_of_increases
from gpuwarden.signals import resolve_rule_signal

if TYPE_CHECKING:
    from gpuwarden.detectors import Detector
    from gpuwarden.detectors.rule import RuleConfig

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
#: Shortest lookback any detector asks for, so staleness can be judged on "last" rules.
MIN_LOOKBACK = 60.0
#: Derived signals a threshold rule may name, and the stored inputs they come from.
DERIVED_INPUTS: dict[str, tuple[str, ...]] = {
    "generation_tokens_per_second": ("generation_tokens_total",),
    "prefix_cache_hit_ratio": ("prefix_cache_hits_total", "prefix_cache_queries_total"),
    "gpu_utilization_spread_ratio": ("gpu_utilization_ratio",),
}


def stale_after(interval: float) -> float:
    """Age beyond which a series' newest sample no longer counts as its current value."""
    return max(3.0 * interval, 5.0)


def is_live(series: SeriesData, window: Window) -> bool:
    """True when ``series`` has a sample recent enough to speak for ``window.now``.

    The limit is ``max(3 * interval, 5 s)``, widened to three of the series' own last
    sample spacings: quality canaries run once a minute, and their result must not be
    "absent" for 55 s of every minute.
    """
    n = len(series)
    if n == 0:
        return False
    ts = series.timestamps
    limit = stale_after(window.interval)
    if n >= 2:
        limit = max(limit, 3.0 * float(ts[-1] - ts[-2]))
    return float(ts[-1]) >= window.now - limit


def live_series(window: Window, signal: str) -> Iterator[SeriesData]:
    for series in window.series(signal):
        if is_live(series, window):
            yield series


def compare(value: float, op: str, threshold: float) -> bool:
    """``value op threshold``, never true for NaN."""
    if math.isnan(value):
        return False
    return OPS[op](value, threshold)


def beyond_clear(value: float, op: str, clear: float) -> bool:
    """Whether ``value`` is still on the alerting side of the hysteresis ``clear`` level."""
    if op in (">", ">="):
        return value > clear
    if op in ("<", "<="):
        return value < clear
    return False


def classify(value: float, op: str, threshold: float, clear: float | None) -> Status | None:
    """BREACH, HOLD (inside the hysteresis band) or None for one value."""
    if math.isnan(value):
        return None
    if compare(value, op, threshold):
        return Status.BREACH
    if clear is not None and beyond_clear(value, op, clear):
        return Status.HOLD
    return None


def values_in(series: SeriesData, start: float, end: float) -> np.ndarray:
    """The series' non-NaN values with ``start <= ts <= end``."""
    ts = series.timestamps
    lo = int(np.searchsorted(ts, start, side="left"))
    hi = int(np.searchsorted(ts, end, side="right"))
    vs = series.values[lo:hi]
    if vs.size and np.isnan(vs).any():
        vs = vs[~np.isnan(vs)]
    return vs


def aggregate(series: SeriesData, aggregation: str, start: float, end: float) -> float | None:
    """``last``/``mean``/``max``/``min`` of the window; None when it holds no value."""
    if aggregation == "last":
        vs = values_in(series, -math.inf, end)
        return float(vs[-1]) if vs.size else None
    vs = values_in(series, start, end)
    if not vs.size:
        return None
    if aggregation == "mean":
        return float(vs.mean())
    if aggregation == "max":
        return float(vs.max())
    if aggregation == "min":
        return float(vs.min())
    raise ValueError(f"unknown aggregation {aggregation!r}")


def by_labels(series: Sequence[SeriesData]) -> dict[Labels, SeriesData]:
    return {s.labels: s for s in series}


class ThresholdDetector:
    """``signal op threshold`` per series, with optional hysteresis and aggregation."""

    def __init__(self, rule: RuleConfig) -> None:
        if rule.threshold is None:
            raise ValueError(f"rule {rule.name}: threshold detector needs a threshold")
        if rule.op not in OPS:
            raise ValueError(f"rule {rule.name}: unknown op {rule.op!r}")
        self.rule = rule
        self.threshold = float(rule.threshold)
        lookback = max(rule.window, MIN_LOOKBACK)
        self.derived = rule.signal in DERIVED_INPUTS
        names = DERIVED_INPUTS.get(rule.signal, (rule.signal,))
        self.inputs: Mapping[str, float] = dict.fromkeys(names, lookback)

    def _values(self, window: Window) -> Iterator[tuple[Labels, float]]:
        rule = self.rule
        start = window.now - rule.window
        if rule.signal == "generation_tokens_per_second":
            for s in live_series(window, "generation_tokens_total"):
                rate = counter_rate(s, start, window.now)
                if rate is not None:
                    yield s.labels, rate
        elif rule.signal == "prefix_cache_hit_ratio":
            queries = by_labels(window.series("prefix_cache_queries_total"))
            for hits in live_series(window, "prefix_cache_hits_total"):
                den = queries.get(hits.labels)
                if den is not None:
                    ratio = ratio_of_increases(hits, den, start, window.now)
                    if ratio is not None:
                        yield hits.labels, ratio
        elif rule.signal == "gpu_utilization_spread_ratio":
            from gpuwarden.detectors.variance import utilization_spread

            for spread in utilization_spread(
                window.series("gpu_utilization_ratio"), start, window.now,
                stale_after=stale_after(window.interval),
            ):
                yield (("node", spread.node),), spread.spread
        else:
            for s in live_series(window, rule.signal):
                value = aggregate(s, rule.aggregation, start, window.now)
                if value is not None:
                    yield s.labels, value

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
        from gpuwarden.detectors.latency import QuantileDetector

        return QuantileDetector(rule)
    return ThresholdDetector(rule)
