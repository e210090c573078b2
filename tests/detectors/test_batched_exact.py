"""Detectors that compute every server's value in one go (``quantiles_by_histogram``,
``rates``) find exactly what they found one server at a time: the per-server loops they
replaced are kept here as the reference."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.composite import PreemptionsRising
from gpuwarden.detectors.condition import classify, is_live_in, live_series
from gpuwarden.detectors.latency import QuantileDetector, bucket_note
from gpuwarden.model import SeriesData, make_labels
from gpuwarden.promql.buckets import by_histogram, finite_bounds
from gpuwarden.promql.quantile import window_quantile
from gpuwarden.promql.windows import counter_rate

from .helpers import NOW, rule, series

EDGES = (0.05, 0.1, 0.15, 0.2, 0.5)


class OneByOneQuantile(QuantileDetector):
    """``QuantileDetector.evaluate`` as it was: one ``window_quantile`` per histogram."""

    def evaluate(self, window: Window) -> list[Finding]:
        start = window.now - self.rule.window
        out = []
        for labels, buckets in by_histogram(window.series(self.bucket_signal)).items():
            if not any(is_live_in(window, b) for b in buckets):
                continue
            value = window_quantile(self.q, buckets, start, window.now)
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


class OneByOneRate(PreemptionsRising):
    """``PreemptionsRising.evaluate`` as it was: one ``counter_rate`` per series."""

    def evaluate(self, window: Window) -> list[Finding]:
        now, w = window.now, self.rule.window
        out = []
        for s in live_series(window, "preemptions_total"):
            rate = counter_rate(s, now - w, now)
            if rate is None:
                continue
            status = classify(rate, self.rule.op, self.threshold, self.rule.clear)
            if status is not None:
                text = f"{rate:.3g} preemptions/s ({rate * w:.0f} in {w:g} s)"
                out.append(Finding(s.labels, rate, status, (("description", text),)))
        return out


@st.composite
def servers(draw: st.DrawFn, signal: str, buckets: bool) -> list[SeriesData]:
    """Up to four servers' series over the last ~90 s: gaps, resets, stale ones, odd
    bounds (no ``+Inf``, a bound twice), NaN samples, idle and busy windows."""
    out: list[SeriesData] = []
    for k in range(draw(st.integers(0, 4))):
        labels = make_labels(node="n1", server=f"vllm-{k}", model="m")
        n = draw(st.integers(1, 90))
        step = draw(st.sampled_from([0.5, 1.0, 1.0, 2.5]))
        end = NOW - draw(st.sampled_from([0.0, 0.0, 0.4, 3.0, 30.0]))  # 30 s: stale
        ts = end - step * np.arange(n)[::-1]
        edges = draw(st.sampled_from([EDGES, EDGES[:1], (0.1, 0.1, 0.2), ()]))
        les = [f"{e:g}" for e in edges] + (["+Inf"] if draw(st.booleans()) or not edges
                                           else [])
        rates = draw(st.lists(st.sampled_from([0.0, 0.0, 1.0, 3.0, 0.5]),
                              min_size=len(les), max_size=len(les)))
        total = np.zeros(len(les))
        rows = []
        reset_at = draw(st.integers(-1, n - 1))
        for i in range(n):
            total = np.zeros(len(les)) if i == reset_at else total + np.asarray(rates)
            rows.append(np.cumsum(total))
        per = np.asarray(rows).reshape(n, len(les))
        if n > 2 and draw(st.booleans()):
            per[draw(st.integers(0, n - 1)), :] = math.nan
        if buckets:
            out += [series(signal, make_labels(dict(labels), le=le), ts, per[:, b])
                    for b, le in enumerate(les)]
        else:
            out.append(series(signal, labels, ts, per[:, -1] if les else np.zeros(n)))
    return out


@settings(max_examples=300, deadline=None)
@given(servers("itl_seconds_bucket", buckets=True),
       st.sampled_from(["itl_p95_seconds", "itl_p50_seconds"]),
       st.sampled_from([0.0, 0.12, 0.3]), st.sampled_from([">", "<"]))
def test_quantiles_in_one_go_equal_one_by_one(data: list[SeriesData], signal: str,
                                              threshold: float, op: str) -> None:
    r = rule(signal=signal, threshold=threshold, op=op, window=60.0)
    window = Window(now=NOW, interval=1.0, data={"itl_seconds_bucket": data})
    assert repr(QuantileDetector(r).evaluate(window)) == repr(
        OneByOneQuantile(r).evaluate(window))


@settings(max_examples=300, deadline=None)
@given(servers("preemptions_total", buckets=False), st.sampled_from([0.0, 0.1, 2.0]))
def test_rates_in_one_go_equal_one_by_one(data: list[SeriesData], threshold: float) -> None:
    r = rule(signal="preemptions_total", detector="composite:PreemptionsRising", op=">",
             threshold=threshold, window=60.0)
    window = Window(now=NOW, interval=1.0, data={"preemptions_total": data})
    assert repr(PreemptionsRising(r).evaluate(window)) == repr(OneByOneRate(r).evaluate(window))
