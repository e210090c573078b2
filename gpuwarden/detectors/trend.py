"""Trend detector: forecast when a series reaches a limit (KVCacheSaturationSoon).

Why a robust fit: KV-cache usage moves in steps as requests arrive and finish; an
ordinary least-squares line is dragged by one burst. Theil-Sen (median of pairwise
slopes) ignores up to ~29 % outlying points.

Why guards on top of the fit: over a short window, noise alone yields a slightly
positive slope half of the time, and any positive slope forecasts *some* crossing. A
calm series at 85 % with a chance slope of 0.05 %/s "reaches 100 % in 5 minutes". So
the detector fires only when the rise is real:

1. the slope is significantly positive: the lower end of the 99 % confidence interval
   of the Theil-Sen slope (Sen 1968, the interval ``scipy.stats.theilslopes`` gives) is
   above zero, and the forecast uses that *lower* slope (the slowest rise consistent
   with the data);
2. the rise over the window (slope x span) stands out of the noise: at least
   ``RISE_NOISE_FACTOR`` robust standard deviations of it (``noise_scale``);
3. the rise is spread over the window, not one jump: no single sample-to-sample step
   makes up more than ``MAX_JUMP_SHARE`` of it. A server that restarts and comes back
   with its KV cache jumping from 5 % to 45 % is a step, not a trend; forecasting
   saturation from it paged on every restart (tests/incidents server-crash trace).

Measured with the defaults of KVCacheSaturationSoon (window 30 s, horizon 5 min, limit
1.0, sampled every 1 s / 0.5 s): a ramp at 1 %/s from 50 % fires 26 / 27 s before it
reaches 90 % after ten minutes flat at 50 %, 31 / 35.5 s when the series starts with
the ramp; i.i.d. noise spanning 60-85 % never fired in 16 simulated hours, evaluated
every second (tests/detectors/test_trend.py replays two of those hours and three calm
levels).
A longer window is steadier but slower: after a long flat history the robust fit
treats the start of a ramp as outliers until it covers ~30 % of the window.

Why numpy and not ``scipy.stats.theilslopes`` itself: scipy spends ~1 ms per 60-point
fit (interval bookkeeping in Python), a fifth of the whole per-cycle rule budget for
one series; this port computes the same slope, intercept and interval (checked against
scipy in the tests) in ~15 us for 30 points, and keeps scipy out of the daemon's memory.
Two shortcuts, bit for bit the same fit (tests/detectors/test_trend_exact.py keeps the
plain version to compare): timestamps are already sorted and without ties, and ties
among 30-60 values are counted in a Python loop, cheaper there than numpy's calls. A
flat window (an idle server's KV cache at 0) is not fitted at all: every slope is 0.

``op`` ``<``/``<=`` forecasts a *falling* series reaching ``limit`` from above (e.g.
quality similarity trending to a floor); anything else forecasts a rise.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from functools import lru_cache
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import numpy.typing as npt

from gpuwarden.detectors import Finding, Window
from gpuwarden.detectors.condition import live_series
from gpuwarden.model import FloatArray
from gpuwarden.promql.aggregation import in_window, median

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

#: Two-sided 99 % normal quantile: the confidence of "the slope is really positive".
Z_99 = 2.5758293035489004
RISE_NOISE_FACTOR = 4.0
MAX_JUMP_SHARE = 0.5
MAD_TO_SIGMA = 1.4826
DEFAULT_LIMIT = 1.0


class Fit(NamedTuple):
    slope: float
    intercept: float
    low_slope: float
    high_slope: float


@lru_cache(maxsize=32)
def _pairs(n: int) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    i, j = np.triu_indices(n, 1)
    return i, j


def _median_sorted(s: FloatArray) -> float:
    n = len(s)
    h = n // 2
    return float(s[h]) if n % 2 else float((s[h - 1] + s[h]) / 2.0)


#: Up to this many values the ties are counted in a Python loop: over the 30-60 points
#: of a rule's window that is a few times cheaper than the half dozen numpy calls.
_TIES_IN_PYTHON = 200


def _tie_term(sorted_values: FloatArray) -> float:
    """Sum of t(t-1)(2t+5) over groups of t tied values (Kendall variance correction).

    Neighbours are tied when their difference is 0 (so two infinities, or NaNs, are
    not). Every term is an integer, so the sum is exact in either way of counting.
    """
    if len(sorted_values) <= _TIES_IN_PYTHON:
        values = sorted_values.tolist()
        total = 0
        run = 1
        for a, b in itertools.pairwise(values):
            if b - a == 0:
                run += 1
            elif run > 1:
                total += run * (run - 1) * (2 * run + 5)
                run = 1
        if run > 1:
            total += run * (run - 1) * (2 * run + 5)
        return float(total)
    changes = np.diff(sorted_values) != 0
    if changes.all():
        return 0.0
    bounds = np.concatenate(([0], np.flatnonzero(changes) + 1, [len(sorted_values)]))
    t = np.diff(bounds).astype(np.float64)
    t = t[t > 1]
    return float(np.sum(t * (t - 1.0) * (2.0 * t + 5.0)))


def theil_sen(x: FloatArray, y: FloatArray, z: float = Z_99) -> Fit:
    """Theil-Sen slope, intercept and confidence interval, as ``scipy.stats.theilslopes``.

    Same definitions as scipy (``method="separate"``): slope = median of the slopes of
    all pairs with distinct x; intercept = median(y) - slope * median(x); interval =
    Sen's order statistics of the sorted slopes with the tie-corrected Kendall variance.
    ``z`` is the normal quantile of the interval (1.96 gives scipy's default 95 %).
    """
    n = len(x)
    if n < 2:
        raise ValueError("theil_sen needs at least two points")
    i, j = _pairs(n)
    dx = x[j] - x[i]
    dy = y[j] - y[i]
    keep = dx > 0
    # Every pair rising in x: x is strictly increasing (timestamps always are), so it is
    # its own sorted copy and has no ties.
    increasing = bool(keep.all())
    slopes = dy / dx if increasing else dy[keep] / dx[keep]
    if not slopes.size:
        raise ValueError("theil_sen needs two distinct x values")
    slopes.sort()
    nt = len(slopes)
    slope = _median_sorted(slopes)
    sx = x if increasing else np.sort(x)
    sy = np.sort(y)
    intercept = _median_sorted(sy) - slope * _median_sorted(sx)
    x_ties = 0.0 if increasing else _tie_term(sx)
    var = (n * (n - 1) * (2 * n + 5) - x_ties - _tie_term(sy)) / 18.0
    sigma = math.sqrt(max(var, 0.0))
    upper = min(round((nt + z * sigma) / 2.0), nt - 1)
    lower = max(round((nt - z * sigma) / 2.0) - 1, 0)
    return Fit(slope, intercept, float(slopes[lower]), float(slopes[upper]))


def _mad_sigma(a: FloatArray) -> float:
    return MAD_TO_SIGMA * median(np.abs(a - median(a)))


def noise_scale(y: FloatArray, residuals: FloatArray) -> float:
    """Robust standard deviation of the noise around the trend.

    Two estimates, the larger wins: the MAD of the residuals from the fit, and the MAD
    of successive differences (divided by sqrt 2), which no trend can inflate. Either
    alone can come out small by chance over 30 points of wide noise (points clustered
    near the line), and then a chance slope "stands out".
    """
    diffs = np.diff(y)
    return max(_mad_sigma(residuals), _mad_sigma(diffs) / math.sqrt(2.0))


class Forecast(NamedTuple):
    seconds: float  # until the limit is reached (0 when already there)
    slope: float  # per second, in the series' own direction
    level: float  # fitted value at now


def forecast(
    ts: FloatArray, vs: FloatArray, now: float, limit: float, horizon: float, *,
    min_points: int, falling: bool = False,
) -> Forecast | None:
    """The time until ``vs`` reaches ``limit`` when that is within ``horizon``, else None."""
    ok = ~np.isnan(vs)
    if not ok.all():
        ts, vs = ts[ok], vs[ok]
    if len(vs) < max(min_points, 3) or ts[-1] <= ts[0]:
        return None
    sign = -1.0 if falling else 1.0
    y = sign * vs
    lim = sign * limit
    if y[-1] >= lim:
        return Forecast(0.0, sign * 0.0, float(vs[-1]))
    if y[0] == y[-1] and math.isfinite(y[0]) and y.min() == y.max():
        return None  # flat (an idle server's KV cache): every slope is 0, no rise
    x = ts - now  # centred on now: the intercept is the fitted level now
    fit = theil_sen(x, y)
    if fit.slope <= 0 or fit.low_slope <= 0:
        return None
    rise = fit.slope * float(x[-1] - x[0])
    if rise < RISE_NOISE_FACTOR * noise_scale(y, y - (fit.intercept + fit.slope * x)):
        return None
    if float(np.max(np.diff(y))) > MAX_JUMP_SHARE * rise:
        return None
    level = fit.intercept
    seconds = max((lim - level) / fit.low_slope, 0.0)
    if seconds > horizon:
        return None
    return Forecast(seconds, sign * fit.slope, sign * level)


class TrendDetector:
    """BREACH when ``signal`` is forecast to reach ``limit`` within ``horizon``."""

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.limit = DEFAULT_LIMIT if rule.limit is None else float(rule.limit)
        self.falling = rule.op in ("<", "<=")
        self.inputs: Mapping[str, float] = {rule.signal: rule.window}

    def evaluate(self, window: Window) -> list[Finding]:
        rule = self.rule
        start = window.now - rule.window
        out = []
        for s in live_series(window, rule.signal):
            ts, vs = in_window(s, start, window.now)
            fc = forecast(ts, vs, window.now, self.limit,
                          rule.horizon, min_points=rule.min_points, falling=self.falling)
            if fc is None:
                continue
            per_min = fc.slope * 60.0
            if fc.seconds == 0.0:
                text = f"already at {fc.level:.4g} (limit {self.limit:g})"
            else:
                text = (f"{per_min:+.4g}/min from {fc.level:.4g}: reaches {self.limit:g} in "
                        f"{fc.seconds:.0f} s (forecast from the slowest rise consistent with "
                        f"the last {rule.window:g} s)")
            annotations = (
                ("slope_per_minute", f"{per_min:.4g}"),
                ("forecast_seconds", f"{fc.seconds:.0f}"),
                ("description", text),
            )
            out.append(Finding(s.labels, fc.seconds, annotations=annotations))
        return out
