"""Health detectors: lost GPUs, XID errors, servers down.

``GPULost`` (``gpu_up == 0``) and ``ServerDown`` (``server_up == 0``) are plain threshold
rules: the NVML collector keeps reporting a lost GPU as ``gpu_up 0`` with its cached
labels, and the scraper reports a failed scrape as ``server_up 0``, so the condition is
an ordinary value, not an absence. A dedicated detector would add nothing but a second
way of comparing numbers.

``XIDError`` needs its own detector (``detector = "increase"``): the XID counter counts
events since the collector started, so a daemon restart resets it to zero and a plain
"last - first > 0" would miss errors that straddle the restart and a plain
"value > 0" would fire forever after the first error. ``increase()`` as PromQL computes
it (``promql/windows.py``: counter-reset correction, extrapolation to the window edges)
answers "were there new errors in the window". With the default ``> 0`` the alert
stays active for one window after the last error, then resolves by itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.condition import MIN_LOOKBACK, classify, live_series, require_op
from gpuwarden.promql.windows import increase

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig


class IncreaseDetector:
    """``increase(signal[window]) op threshold`` per series (default ``> 0``)."""

    def __init__(self, rule: RuleConfig) -> None:
        require_op(rule)
        self.rule = rule
        self.threshold = 0.0 if rule.threshold is None else float(rule.threshold)
        self.inputs: Mapping[str, float] = {rule.signal: max(rule.window, MIN_LOOKBACK)}

    def evaluate(self, window: Window) -> list[Finding]:
        start = window.now - self.rule.window
        out = []
        for s in live_series(window, self.rule.signal):
            inc = increase(s.timestamps, s.values, start, window.now)
            if inc is None:
                continue
            status = classify(inc, self.rule.op, self.threshold, self.rule.clear)
            if status is not None:
                text = f"{self.rule.signal} increased by {inc:.3g} over {self.rule.window:g} s"
                out.append(Finding(s.labels, inc, status, (("description", text),)))
        return out
