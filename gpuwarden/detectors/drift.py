"""Quality drift: a lower CUSUM on per-canary similarity, a KS test on answer lengths.

Why two more detectors besides ``QualityDrift`` (``quality_similarity < 0.92``): a
checkpoint that is slightly worse moves canary similarity from ~0.97 to ~0.94, which
never crosses a threshold set low enough not to page on noise, yet is a real
regression; and a decoding problem (early EOS, runaway generation) moves answer
*lengths* before it moves similarity much.

Baselines, derived from the window (detectors are pure, ARCHITECTURE.md convention 3): every
stored series of ``quality_canary_similarity`` / ``quality_answer_length`` carries
``server``, ``model`` and ``canary`` labels, so the series of one canary under one
model *is* the per-model history. Its baseline is its first ``min_points`` samples in
the lookback (by default: the first 20 rounds after that model appeared). A model
change starts new series, hence a new baseline; a rollback to the previous model goes
back to that model's own series, whose baseline is its healthy past, and the bad
model's series go stale and stop producing findings. Limitation, stated plainly: once
a model has served for longer than the lookback, the baseline is the oldest part of
the window, so a drift slower than the lookback (default 6 h) is absorbed; the plain
``QualityDrift`` threshold still guards the absolute level. Cost: the engine reads the
whole lookback once per signal per evaluation, mostly from stored chunks; 6 h of
one-per-minute canaries, 2 servers x 10 canaries, measured ~100 ms per signal on
SQLite (the evaluation itself ~5 ms). The data changes once per round, so evaluating
these rules every ``[quality] every`` rather than every cycle loses nothing; a shorter
``window`` (e.g. "2h") cuts the read proportionally at the price of the baseline.

CUSUM (``detector = "cusum"``; Page, Biometrika 1954, as in river's
``drift/cusum.py``): on standardised values ``z = (x - mu0) / sigma`` with ``mu0``,
``sigma`` from the baseline (``sigma`` floored at ``SIGMA_FLOOR``: canaries at
temperature 0 are nearly deterministic and a zero spread would make any wobble an
alarm), ``S_t = min(cap, max(0, S_{t-1} - z_t - k))``, breach while ``S > h``.
``limit`` is the drop to detect in similarity units (default 0.03, so k = limit / 2
per the classical "half the shift"), ``threshold`` is ``h`` in sigmas (default 8:
higher than the textbook 5 because every canary of every server runs its own chart,
so false alarms add up; see tests/detectors/test_drift.py for delay and ARL figures).
``S`` is capped at ``2 h`` so that a recovered model clears within a few rounds.
One finding per (node, server, model), value = the largest ``S``, annotations naming
the drifting canaries (ids only) and baseline vs recent mean.

KS (``detector = "ks"``): per (node, server, model), each answer length divided by its
canary's baseline median (so canaries of different lengths pool), baseline = the first
``min_points`` answers of each canary, recent = its last ``min_points`` answers (fewer
while it has fewer beyond the baseline); ``scipy.stats.ks_2samp`` (imported on
first use), breach when ``p < threshold`` (default 0.01), the KS statistic
``D >= MIN_KS_STATISTIC`` (0.3) and both samples hold at least ``MIN_KS_SAMPLES``.
The effect-size gate is there because the test is re-run on overlapping windows every
evaluation: with p alone, a stable stream with 2-5 % length jitter dipped below 0.01
two to three times per 1000 rounds in simulation; with the gate, never in 10 000
(Evidently and NannyML likewise gate drift on a distance).
Value = the p-value.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.drift_rules import (
    DEFAULT_H,
    DEFAULT_LOOKBACK,
    DEFAULT_P,
    DEFAULT_SHIFT,
    LENGTH_SIGNAL,
    SIMILARITY_SIGNAL,
)
from gpuwarden.model import Labels, SeriesData
from gpuwarden.promql.aggregation import median, values_in
from gpuwarden.promql.staleness import is_live, median_spacing

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

MIN_LOOKBACK = 3600.0  # a shorter rule window (the 60 s default) is taken as unset
SIGMA_FLOOR = 0.01
MIN_KS_SAMPLES = 20
MIN_KS_STATISTIC = 0.3  # effect size: with hundreds of samples KS flags trivia


def lookback_of(rule: RuleConfig) -> float:
    return rule.window if rule.window >= MIN_LOOKBACK else DEFAULT_LOOKBACK


def target_labels(labels: Labels) -> Labels:
    """The alert's labels: the series' without ``canary`` (one alert per server+model)."""
    return tuple((k, v) for k, v in labels if k != "canary")


def is_live_canary(series: SeriesData, window: Window) -> bool:
    """Newest sample within 3 typical gaps: canaries arrive per round, not per cycle.

    The typical gap is the median one, so one late round does not widen the limit.
    """
    return is_live(series, window.now, window.interval, spacing=median_spacing)


def _values_until(series: SeriesData, now: float) -> np.ndarray:
    """Every non-NaN value up to ``now``, oldest first: the baseline starts at the first."""
    return values_in(series, -math.inf, now)


def baseline_stats(values: np.ndarray, n: int) -> tuple[float, float]:
    """Mean and (floored) standard deviation of the first ``n`` values."""
    base = values[:n]
    sigma = float(base.std(ddof=1)) if base.size > 1 else 0.0
    return float(base.mean()), max(sigma, SIGMA_FLOOR)


def lower_cusum(values: np.ndarray, mu0: float, sigma: float, k: float, cap: float
                ) -> np.ndarray:
    """The path of the one-sided lower CUSUM ``S`` (in sigmas) over ``values``."""
    path = np.empty(values.size)
    s = 0.0
    for i, x in enumerate(((mu0 - values) / sigma - k).tolist()):
        s = min(cap, max(0.0, s + x))
        path[i] = s
    return path


@dataclass(frozen=True, slots=True)
class _CanaryState:
    canary: str
    s: float
    baseline: float
    recent: float


class CusumDetector:
    """One-sided lower CUSUM per canary series; see the module docstring."""

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.signal = rule.signal if rule.signal == SIMILARITY_SIGNAL else SIMILARITY_SIGNAL
        self.shift = float(rule.limit) if rule.limit is not None else DEFAULT_SHIFT
        self.h = float(rule.threshold) if rule.threshold is not None else DEFAULT_H
        if self.shift <= 0 or self.h <= 0:
            raise ValueError(f"rule {rule.name}: cusum needs limit > 0 and threshold > 0")
        self.baseline_n = max(2, rule.min_points)
        self.lookback = lookback_of(rule)
        self.inputs: Mapping[str, float] = {self.signal: self.lookback}

    def canary_state(self, series: SeriesData, now: float) -> _CanaryState | None:
        """S at ``now`` for one canary series; None while the baseline is incomplete."""
        values = _values_until(series, now)
        if values.size <= self.baseline_n:
            return None
        mu0, sigma = baseline_stats(values, self.baseline_n)
        monitored = values[self.baseline_n:]
        path = lower_cusum(monitored, mu0, sigma, self.shift / 2 / sigma, 2 * self.h)
        recent = float(monitored[-min(monitored.size, self.baseline_n):].mean())
        return _CanaryState(series.label_map.get("canary", ""), float(path[-1]), mu0, recent)

    def evaluate(self, window: Window) -> list[Finding]:
        groups: dict[Labels, list[_CanaryState]] = defaultdict(list)
        for series in window.series(self.signal):
            if not is_live_canary(series, window):
                continue
            state = self.canary_state(series, window.now)
            if state is not None:
                groups[target_labels(series.labels)].append(state)
        out = []
        for labels, states in sorted(groups.items()):
            drifting = sorted((s for s in states if s.s > self.h), key=lambda s: -s.s)
            if not drifting:
                continue
            base = sum(s.baseline for s in drifting) / len(drifting)
            recent = sum(s.recent for s in drifting) / len(drifting)
            annotations = (
                ("drifting_canaries", ",".join(s.canary for s in drifting)),
                ("canaries_drifting", f"{len(drifting)}/{len(states)}"),
                ("baseline_similarity", f"{base:.4f}"),
                ("recent_similarity", f"{recent:.4f}"),
            )
            out.append(Finding(labels, drifting[0].s, annotations=annotations))
        return out


class KsLengthDetector:
    """Two-sample KS on relative answer lengths, baseline vs recent; see module doc."""

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.signal = rule.signal if rule.signal == LENGTH_SIGNAL else LENGTH_SIGNAL
        self.p = float(rule.threshold) if rule.threshold is not None else DEFAULT_P
        if not 0 < self.p < 1:
            raise ValueError(f"rule {rule.name}: ks threshold is a p-value in (0, 1)")
        self.baseline_n = max(2, rule.min_points)
        self.lookback = lookback_of(rule)
        self.inputs: Mapping[str, float] = {self.signal: self.lookback}

    def samples(self, series_list: Sequence[SeriesData], now: float
                ) -> tuple[np.ndarray, np.ndarray]:
        """Pooled relative lengths (baseline, recent) of one server+model's canaries."""
        base: list[np.ndarray] = []
        recent: list[np.ndarray] = []
        for series in series_list:
            values = _values_until(series, now)
            if values.size <= self.baseline_n:
                continue
            mid = median(values[:self.baseline_n])
            scale = mid if mid > 0 else 1.0
            base.append(values[:self.baseline_n] / scale)
            recent.append(values[max(self.baseline_n, values.size - self.baseline_n):] / scale)
        if not base:
            return np.empty(0), np.empty(0)
        return np.concatenate(base), np.concatenate(recent)

    def evaluate(self, window: Window) -> list[Finding]:
        groups: dict[Labels, list[SeriesData]] = defaultdict(list)
        for series in window.series(self.signal):
            if is_live_canary(series, window):
                groups[target_labels(series.labels)].append(series)
        out = []
        for labels, series_list in sorted(groups.items()):
            base, recent = self.samples(series_list, window.now)
            if base.size < MIN_KS_SAMPLES or recent.size < MIN_KS_SAMPLES:
                continue
            d, p = ks_test(base, recent)
            if p < self.p and d >= MIN_KS_STATISTIC:
                annotations = (
                    ("baseline_relative_length", f"{median(base):.3f}"),
                    ("recent_relative_length", f"{median(recent):.3f}"),
                    ("ks_statistic", f"{d:.3f}"),
                    ("samples", f"{base.size}/{recent.size}"),
                )
                out.append(Finding(labels, p, annotations=annotations))
        return out


def ks_test(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample KS (statistic D, p-value); equal constant samples: (0, 1)."""
    if a.size and b.size and np.ptp(a) == 0 and np.ptp(b) == 0 and a[0] == b[0]:
        return 0.0, 1.0
    from scipy.stats import ks_2samp  # deferred: scipy costs ~100 ms to import

    res = ks_2samp(a, b)
    d, p = float(res.statistic), float(res.pvalue)
    return (0.0, 1.0) if math.isnan(p) else (d, p)
