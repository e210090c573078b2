"""The trend fit's shortcuts change no bit: ``theil_sen``, its tie count and ``forecast``
against the implementations they replaced, kept here as the reference."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.detectors import trend
from gpuwarden.detectors.trend import (
    MAX_JUMP_SHARE,
    RISE_NOISE_FACTOR,
    Z_99,
    Fit,
    Forecast,
    forecast,
    noise_scale,
    theil_sen,
)
from gpuwarden.model import FloatArray

# --- the reference: trend.py's fit and forecast before the shortcuts --------------------


def ref_tie_term(sorted_values: FloatArray) -> float:
    changes = np.diff(sorted_values) != 0
    if changes.all():
        return 0.0
    bounds = np.concatenate(([0], np.flatnonzero(changes) + 1, [len(sorted_values)]))
    t = np.diff(bounds).astype(np.float64)
    t = t[t > 1]
    return float(np.sum(t * (t - 1.0) * (2.0 * t + 5.0)))


def ref_median_sorted(s: FloatArray) -> float:
    n = len(s)
    h = n // 2
    return float(s[h]) if n % 2 else float((s[h - 1] + s[h]) / 2.0)


def ref_theil_sen(x: FloatArray, y: FloatArray, z: float = Z_99) -> Fit:
    n = len(x)
    if n < 2:
        raise ValueError("theil_sen needs at least two points")
    i, j = np.triu_indices(n, 1)
    dx = x[j] - x[i]
    dy = y[j] - y[i]
    keep = dx > 0
    slopes = dy / dx if keep.all() else dy[keep] / dx[keep]
    if not slopes.size:
        raise ValueError("theil_sen needs two distinct x values")
    slopes.sort()
    nt = len(slopes)
    slope = ref_median_sorted(slopes)
    sx, sy = np.sort(x), np.sort(y)
    intercept = ref_median_sorted(sy) - slope * ref_median_sorted(sx)
    var = (n * (n - 1) * (2 * n + 5) - ref_tie_term(sx) - ref_tie_term(sy)) / 18.0
    sigma = math.sqrt(max(var, 0.0))
    upper = min(round((nt + z * sigma) / 2.0), nt - 1)
    lower = max(round((nt - z * sigma) / 2.0) - 1, 0)
    return Fit(slope, intercept, float(slopes[lower]), float(slopes[upper]))


def ref_forecast(ts: FloatArray, vs: FloatArray, now: float, limit: float, horizon: float, *,
                 min_points: int, falling: bool = False) -> Forecast | None:
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
    x = ts - now
    fit = ref_theil_sen(x, y)
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


# --- comparing bit for bit ---------------------------------------------------------------


def bits(result: NamedTuple | None) -> object:
    """Every float by its exact representation (NaN equals NaN, -0.0 differs from 0.0)."""
    if result is None:
        return None
    return tuple(float(v).hex() for v in result)


def outcome(fn, *args: object, **kw: object) -> object:  # type: ignore[no-untyped-def]
    """``fn``'s result in :func:`bits`, or the error it raised."""
    try:
        with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
            return bits(fn(*args, **kw))
    except ValueError as exc:
        return f"ValueError: {exc}"


LEVELS = st.sampled_from([0.0, -0.0, 0.25, 0.5, 0.5000000000000001, 0.9, 1.0, 1.5,
                          math.inf, -math.inf, math.nan])
VALUES = st.one_of(LEVELS, st.floats(-2.0, 2.0, allow_nan=False).map(lambda v: round(v, 2)),
                   st.floats(-1e6, 1e6, allow_nan=False))


@st.composite
def xy(draw: st.DrawFn, max_n: int = 40) -> tuple[FloatArray, FloatArray]:
    n = draw(st.integers(2, max_n))
    steps = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 1.0, 1.0, 1.003, 7.0]),
                          min_size=n, max_size=n))
    x = np.cumsum(np.asarray(steps, dtype=np.float64)) - 1000.0
    if draw(st.booleans()):  # unsorted x (a caller's, not timestamps)
        x = x[np.asarray(draw(st.permutations(range(n))))]
    y = np.asarray(draw(st.lists(VALUES, min_size=n, max_size=n)), dtype=np.float64)
    return x, y


@settings(max_examples=400, deadline=None)
@given(xy(), st.sampled_from([Z_99, 1.959963984540054]))
def test_theil_sen_equals_reference(data: tuple[FloatArray, FloatArray], z: float) -> None:
    x, y = data
    assert outcome(theil_sen, x, y, z) == outcome(ref_theil_sen, x, y, z)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from([0.0, -0.0, 0.1, 0.2, 0.2, 0.3, math.inf, math.inf, -math.inf,
                                 math.nan, math.nan]), min_size=1, max_size=260),
       st.floats(-1.0, 1.0, allow_nan=False))
def test_tie_term_equals_reference(values: list[float], shift: float) -> None:
    """Both ways of counting (a Python loop up to ``_TIES_IN_PYTHON`` values, numpy
    beyond): ties of zeros of both signs, of infinities (not ties), of NaNs (neither)."""
    s = np.sort(np.asarray(values, dtype=np.float64) + shift)
    with np.errstate(invalid="ignore"):
        assert trend._tie_term(s) == ref_tie_term(s)


@pytest.mark.parametrize("n", [trend._TIES_IN_PYTHON, trend._TIES_IN_PYTHON + 1, 600])
def test_tie_term_on_both_sides_of_the_python_loop(n: int) -> None:
    rng = np.random.default_rng(n)
    s = np.sort(np.round(rng.normal(0.7, 0.05, n), 2))
    assert trend._tie_term(s) == ref_tie_term(s) > 0


@st.composite
def windows(draw: st.DrawFn) -> tuple[FloatArray, FloatArray]:
    n = draw(st.integers(1, 45))
    ts = 1_000_000.0 - n + np.cumsum(np.asarray(
        draw(st.lists(st.sampled_from([0.5, 1.0, 1.0, 1.002]), min_size=n, max_size=n))))
    shape = draw(st.sampled_from(["flat", "ramp", "noisy", "steps", "any"]))
    level = draw(LEVELS)
    if shape == "flat":
        vs = np.full(n, level)
    elif shape == "ramp":
        vs = 0.3 + draw(st.sampled_from([0.01, -0.01, 0.002])) * np.arange(n)
    elif shape == "noisy":
        rng = np.random.default_rng(draw(st.integers(0, 2**16)))
        vs = np.round(0.6 + 0.01 * np.arange(n) + rng.normal(0, 0.02, n), 3)
    elif shape == "steps":
        vs = np.where(np.arange(n) < n // 2, 0.05, 0.45)
    else:
        vs = np.asarray(draw(st.lists(VALUES, min_size=n, max_size=n)), dtype=np.float64)
    if n and draw(st.booleans()):  # a gap or a stale marker in the window
        vs = vs.copy()
        vs[draw(st.integers(0, n - 1))] = draw(st.sampled_from([math.nan, level]))
    return ts, vs.astype(np.float64)


@settings(max_examples=500, deadline=None)
@given(windows(), st.sampled_from([1.0, 0.9, 0.0]), st.booleans(),
       st.sampled_from([3, 10]), st.sampled_from([300.0, 1e9]))
def test_forecast_equals_reference(data: tuple[FloatArray, FloatArray], limit: float,
                                   falling: bool, min_points: int, horizon: float) -> None:
    ts, vs = data
    args = (ts, vs, 1_000_000.0, limit, horizon)
    assert (outcome(forecast, *args, min_points=min_points, falling=falling)
            == outcome(ref_forecast, *args, min_points=min_points, falling=falling))


@pytest.mark.parametrize("level", [0.0, -0.0, 0.42, -0.42])
@pytest.mark.parametrize("falling", [False, True])
def test_a_flat_window_forecasts_nothing_like_the_fit_said(level: float, falling: bool) -> None:
    ts = np.arange(30.0) + 1_000_000.0 - 29.0
    vs = np.full(30, level)
    limit = -1.0 if falling else 1.0
    assert forecast(ts, vs, 1_000_000.0, limit, 300.0, min_points=10, falling=falling) is None
    assert ref_forecast(ts, vs, 1_000_000.0, limit, 300.0, min_points=10,
                        falling=falling) is None
