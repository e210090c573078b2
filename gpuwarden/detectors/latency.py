"""Quantile detector: p95 TTFT / inter-token latency against an SLO.

The value compared is exactly Prometheus' ``histogram_quantile(q,
increase(<hist>_bucket[window]))`` per server and model (``promql/quantile.py``),
so it is the number the operator's Grafana shows for the same vLLM ``/metrics``.

Why the "interpolated" annotation: a classic histogram only knows how many requests
fell between two bucket edges. vLLM has no edge at 0.13 s (ITL SLO) or 2.0 s (TTFT SLO);
the p95 reported there is a linear guess inside (0.1, 0.15] or (1.0, 2.5]. An on-call
engineer deciding whether to restart a worker should know that "p95 = 0.131 s" means
"somewhere in (0.1, 0.15], probably near the top", not a measurement. And a quantile
landing in the ``+Inf`` bucket is reported as the largest finite edge: a floor, not
a value, which the annotation says too.

No requests in the window (NaN) is no finding: an idle server is not slow.

Why a "breakdown" annotation on a TTFT, ITL or end-to-end rule that rises (op ``>`` or
``>=``): the p95 says that latency grew, not where. The request phase histograms
(queue, prefill, decode) say which part of it grew; ``breakdown.py`` compares their
means with the minutes before and names the phase, and its docstring says which phases
each latency is made of. It is computed only for the label sets with a finding, so a
calm node pays only the read of the phases' ``_sum``/``_count`` series.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from gpuwarden.detectors import Finding, Window, breakdown
from gpuwarden.detectors.condition import classify, is_live_in, require_op
from gpuwarden.promql.buckets import by_histogram, finite_bounds
from gpuwarden.promql.quantile import quantiles_by_histogram
from gpuwarden.signals import resolve_rule_signal

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig


def _fmt(x: float) -> str:
    return f"{x:g}"


def bucket_note(value: float, edges: Sequence[float], threshold: float | None) -> str:
    """Where ``value`` sits in the histogram: which bucket it was interpolated inside.

    ``edges`` are the finite upper bounds, sorted. The natural lower bound of the first
    bucket is 0, as in ``histogram_quantile``.
    """
    if not edges:
        return "no finite bucket edges: the value is not interpolated"
    if value >= edges[-1]:
        return (
            f"at the largest finite bucket edge {_fmt(edges[-1])} s: the quantile lies in "
            f"the +Inf bucket, so the true value may be higher"
        )
    i = bisect.bisect_left(edges, value)
    upper = edges[i]
    lower = edges[i - 1] if i > 0 else 0.0
    note = f"interpolated inside the ({_fmt(lower)}, {_fmt(upper)}] s bucket"
    if threshold is not None and threshold not in edges:
        note += f": the server's histogram has no edge at {_fmt(threshold)} s"
    elif threshold is not None:
        note += f": the threshold {_fmt(threshold)} s is a bucket edge"
    return note


class QuantileDetector:
    """``histogram_quantile(q, increase(h_bucket[window])) op threshold`` per server/model."""

    def __init__(self, rule: RuleConfig) -> None:
        resolved = resolve_rule_signal(rule.signal)
        if resolved is None or resolved[1] is None:
            raise ValueError(f"rule {rule.name}: {rule.signal!r} does not name a quantile")
        if rule.threshold is None:
            raise ValueError(f"rule {rule.name}: a quantile rule needs a threshold")
        require_op(rule)
        self.rule = rule
        self.histogram, self.q = resolved[0], float(resolved[1])
        self.threshold = float(rule.threshold)
        self.bucket_signal = f"{self.histogram}_bucket"
        # Only a rising latency has a phase that grew: a rule firing on a latency below a
        # floor gets no breakdown.
        self.breakdown = rule.op in (">", ">=") and self.histogram in breakdown.PARTS
        self.inputs: Mapping[str, float] = {
            self.bucket_signal: rule.window,
            **(breakdown.inputs(self.histogram, rule.window) if self.breakdown else {}),
        }

    def evaluate(self, window: Window) -> list[Finding]:
        start = window.now - self.rule.window
        # A server whose scrapes stopped must not keep its last window's p95 alive.
        live = [(labels, buckets)
                for labels, buckets in by_histogram(window.series(self.bucket_signal)).items()
                if any(is_live_in(window, b) for b in buckets)]
        # Every server's quantile in one go (bit-identical to ``window_quantile`` per
        # histogram, ``promql/quantile.py``), in the order of ``live``.
        answers = quantiles_by_histogram(
            (self.q,), [s for _, buckets in live for s in buckets], start, window.now)
        out = []
        for (labels, buckets), (_, (value,)) in zip(live, answers, strict=True):
            if value is None or math.isnan(value):
                continue
            status = classify(value, self.rule.op, self.threshold, self.rule.clear)
            if status is None:
                continue
            note = bucket_note(value, finite_bounds(buckets), self.threshold)
            q = f"p{round(self.q * 100):d}"
            annotations = (
                ("interpolation", note),
                ("description",
                 f"{q} {self.histogram} {value:.4g} s over {self.rule.window:g} s; {note}"),
            )
            out.append(Finding(labels, value, status, annotations))
        return self._with_breakdown(window, out) if self.breakdown and out else out

    def _with_breakdown(self, window: Window, findings: list[Finding]) -> list[Finding]:
        """``findings`` with the phase breakdown of each (where the server has phases)."""
        phases = breakdown.index_phases(window.data)
        out = []
        for f in findings:
            pairs = phases.get(f.labels)
            found = breakdown.changes(pairs, window.now, self.rule.window) if pairs else []
            told = breakdown.describe(self.histogram, found, self.rule.window)
            if told is None:
                out.append(f)
                continue
            notes = dict(f.annotations)
            notes["breakdown"] = told.text
            notes["description"] += f"; {told.lead}"
            out.append(Finding(f.labels, f.value, f.status, tuple(notes.items())))
        return out
