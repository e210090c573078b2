"""Falling-ratio detector: a hit or acceptance ratio down against the window before.

``detector = "falling"`` watches a ratio of two counters, a derived signal whose
``signals.DERIVED_INPUTS`` are a numerator and a denominator counter
(``prefix_cache_hit_ratio``, ``kv_offload_hit_ratio``, ``spec_decode_acceptance_ratio``).
It computes the ratio over the last ``window`` and over the window before it, each
``increase(num) / increase(den)`` exactly as PromQL would (``promql/windows.py``, counter
resets included), and compares the drop, before minus now in ratio points (0.2 = 20
points), with ``op threshold`` (default ``> 0.2``) and ``clear``. Per server and model;
series that went stale are skipped.

Why against the window before, not against a fixed floor: what a good ratio is depends
on the workload, and for speculative decoding on the draft model and the number of
speculative tokens: an acceptance of 0.35 is normal for one deployment and a collapse
for another. A drop says that something changed: a new traffic mix, a new draft or
target model, a prefix cache or an offload tier that evicts what it used to keep.

Why a minimum of ``MIN_TOKENS`` in the denominator of each window: a ratio over a
handful of tokens is noise, and an idle server has no ratio at all.

What it cannot see: a level. Once both windows lie after the drop the alert resolves,
though the ratio stays low (a threshold rule on the ratio itself watches a level); a
slow slide of less than ``threshold`` per window never fires.

``composite:PrefixCacheHitFalling``, the name default rules and configs used before this
detector existed, is this detector on the prefix-cache hit ratio.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, NamedTuple

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.condition import classify, live_pairs, require_op
from gpuwarden.detectors.rule import counter_ratio_inputs
from gpuwarden.model import SeriesData
from gpuwarden.promql.windows import increase, ratio_of_increases

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

DEFAULT_THRESHOLD = 0.2
MIN_TOKENS = 1000.0


class Wording(NamedTuple):
    key: str  # annotation key of the current ratio (``<key>_before``: the previous one)
    what: str  # the ratio in words
    meaning: str  # what a drop means for the server


WORDING: dict[str, Wording] = {
    "prefix_cache_hit_ratio": Wording(
        "hit_ratio", "prefix-cache hit ratio", "context is recomputed instead of reused"),
    "kv_offload_hit_ratio": Wording(
        "hit_ratio", "offload-tier hit ratio",
        "KV blocks are recomputed instead of loaded from the offload tier"),
    "spec_decode_acceptance_ratio": Wording(
        "acceptance_ratio", "speculative-decoding acceptance ratio",
        "the target model rejects more of the draft's tokens, so each emitted token costs "
        "more compute"),
}


class RatioFalling:
    """BREACH when a counter ratio fell by more than ``threshold`` against the window before."""

    signal: str | None = None  # a fixed signal (the composite name), else the rule's

    def __init__(self, rule: RuleConfig) -> None:
        require_op(rule)
        self.rule = rule
        signal = self.signal or rule.signal
        inputs = counter_ratio_inputs(signal)
        if inputs is None:
            raise ValueError(f"rule {rule.name}: the falling detector needs a ratio of two "
                             f"counters, not {signal!r}")
        self.num, self.den = inputs
        self.wording = WORDING.get(signal, Wording("ratio", signal, "the ratio fell"))
        self.threshold = DEFAULT_THRESHOLD if rule.threshold is None else float(rule.threshold)
        self.inputs: Mapping[str, float] = {self.num: 2 * rule.window,
                                            self.den: 2 * rule.window}

    def evaluate(self, window: Window) -> list[Finding]:
        now, w = window.now, self.rule.window
        key, what, meaning = self.wording
        out = []
        for num, den in live_pairs(window, self.num, self.den):
            if not (_increase_at_least(den, now - w, now, MIN_TOKENS)
                    and _increase_at_least(den, now - 2 * w, now - w, MIN_TOKENS)):
                continue
            recent = ratio_of_increases(num, den, now - w, now)
            before = ratio_of_increases(num, den, now - 2 * w, now - w)
            if recent is None or before is None:
                continue
            drop = before - recent
            status = classify(drop, self.rule.op, self.threshold, self.rule.clear)
            if status is not None:
                text = (f"{what} {recent:.0%} over the last {w:g} s, {before:.0%} before: "
                        f"{meaning}")
                out.append(Finding(num.labels, drop, status, (
                    (key, f"{recent:.3f}"), (f"{key}_before", f"{before:.3f}"),
                    ("description", text))))
        return out


class PrefixCacheHitFalling(RatioFalling):
    """``composite:PrefixCacheHitFalling``: the prefix-cache hit ratio, whatever the rule's
    signal says (as the composite always did)."""

    signal = "prefix_cache_hit_ratio"


def _increase_at_least(series: SeriesData, start: float, end: float, minimum: float) -> bool:
    inc = increase(series.timestamps, series.values, start, end)
    return inc is not None and inc >= minimum
