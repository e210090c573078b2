"""Trend detector: Theil-Sen port vs scipy, KV ramp lead time, silence on noise."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from gpuwarden.detectors import build_detector
from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.detectors.trend import Z_99, theil_sen

from .helpers import NOW, SRV, rule, series, window

KV = "kv_cache_usage_ratio"
SOON = next(r for r in DEFAULT_RULES if r.name == "KVCacheSaturationSoon")


@pytest.mark.parametrize("n", [3, 10, 31, 60, 121])
def test_theil_sen_matches_scipy(n: int) -> None:
    from scipy.stats import theilslopes

    rng = np.random.default_rng(n)
    for _ in range(20):
        x = np.sort(rng.uniform(0, 60, n))
        x[1] = x[0]  # a tie in x: that pair has no slope
        y = np.round(rng.normal(0.7, 0.05, n), 2)  # ties in y: variance correction
        for z, alpha in ((1.959963984540054, 0.95), (Z_99, 0.99)):
            ours = theil_sen(x, y, z)
            ref = theilslopes(y, x, alpha)
            assert ours == pytest.approx(
                (ref.slope, ref.intercept, ref.low_slope, ref.high_slope), rel=1e-9, abs=1e-12)


def first_fire(ts: np.ndarray, vs: np.ndarray, evals: np.ndarray) -> float | None:
    det = build_detector(SOON)
    for now in evals:
        k = int(np.searchsorted(ts, now, side="right"))
        if det.evaluate(window(series(KV, SRV, ts[:k], vs[:k]), now=float(now))):
            return float(now)
    return None


@pytest.mark.parametrize("step", [1.0, 0.5])
@pytest.mark.parametrize("history", [0.0, 600.0])
def test_kv_ramp_fires_20s_before_90_percent(step: float, history: float) -> None:
    """1 %/s from 50 % (after `history` s flat at 50 %): reaches 0.90 at t = 40 s."""
    ts = np.arange(-history, 60.0 + step / 2, step) + NOW
    t = ts - NOW
    vs = np.where(t < 0, 0.5, np.minimum(0.5 + 0.01 * t, 1.0))
    fired = first_fire(ts, vs, ts)
    assert fired is not None
    lead = NOW + 40.0 - fired
    print(f"step {step} s, history {history:.0f} s: lead {lead:.1f} s")
    assert lead >= 20.0


@pytest.mark.parametrize("seed", range(5))
def test_restart_step_is_not_a_trend(seed: int) -> None:
    """A restarted server: KV at 5 % for a minute, then one jump to 45 % and flat, with
    the incident corpus' background noise (tests/incidents server-crash trace)."""
    ts = np.arange(0.0, 180.0, 1.0) + NOW
    t = ts - NOW
    rng = np.random.default_rng(seed)
    vs = np.clip(np.where(t < 60, 0.05, 0.45) + rng.uniform(-0.03, 0.03, len(t)), 0, 1)
    assert first_fire(ts, vs, ts) is None


def test_annotations_slope_and_forecast() -> None:
    ts = np.arange(NOW - 20, NOW + 0.5, 1.0)
    vs = 0.5 + 0.01 * (ts - ts[0])
    (found,) = build_detector(SOON).evaluate(window(series(KV, SRV, ts, vs), now=NOW))
    ann = dict(found.annotations)
    assert float(ann["slope_per_minute"]) == pytest.approx(0.6)
    assert found.value == pytest.approx(30.0)  # 0.70 now, 0.30 to go at 1 %/s
    assert ann["forecast_seconds"] == "30"
    assert "reaches 1 in 30 s" in ann["description"]


def noisy_flat(kind: str, seed: int, seconds: int = 3600) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ts = NOW - seconds + np.arange(seconds, dtype=np.float64)
    if kind == "uniform":  # harsh: i.i.d. anywhere in 60-85 %
        vs = rng.uniform(0.60, 0.85, seconds)
    else:  # calm: around one level with 2 points of noise
        vs = np.clip(rng.normal(float(kind), 0.02, seconds), 0.0, 1.0)
    return ts, vs


@pytest.mark.parametrize(("kind", "seed"),
                         [("uniform", 1), ("uniform", 2), ("0.6", 3), ("0.72", 4), ("0.85", 5)])
def test_noisy_flat_series_never_fires(kind: str, seed: int) -> None:
    ts, vs = noisy_flat(kind, seed)
    assert first_fire(ts, vs, ts[40:]) is None


def test_already_at_limit_and_min_points() -> None:
    ts = np.arange(NOW - 20, NOW + 0.5, 1.0)
    full = build_detector(SOON).evaluate(window(series(KV, SRV, ts, np.ones_like(ts)), now=NOW))
    assert full[0].value == 0.0
    few = ts[-5:]
    assert not build_detector(SOON).evaluate(
        window(series(KV, SRV, few, 0.5 + 0.05 * (few - few[0])), now=NOW))


def test_falling_trend_with_op_less() -> None:
    r = rule(signal="quality_similarity", detector="trend", op="<", limit=0.92,
             window=120.0, horizon=600.0)
    ts = np.arange(NOW - 120, NOW + 0.5, 10.0)
    vs = 0.97 - 0.0001 * (ts - ts[0])  # -0.6 points/min: 0.958 now, 0.92 in ~380 s
    (found,) = build_detector(r).evaluate(
        window(series("quality_similarity", SRV, ts, vs), now=NOW))
    assert 300 < found.value < 600
    assert float(dict(found.annotations)["slope_per_minute"]) == pytest.approx(-0.006)


def test_dead_series_is_not_forecast() -> None:
    ts = np.arange(NOW - 60, NOW - 19.5, 1.0)
    vs = 0.5 + 0.01 * (ts - ts[0])
    assert not build_detector(SOON).evaluate(window(series(KV, SRV, ts, vs), now=NOW))


def test_scipy_not_imported_by_the_daemon_path() -> None:
    code = (
        "import sys, numpy as np\n"
        "from gpuwarden.detectors import Window, build_detector\n"
        "from gpuwarden.detectors.defaults import DEFAULT_RULES\n"
        "from gpuwarden.model import SeriesData\n"
        "ts = np.arange(0.0, 60.0); vs = 0.5 + 0.01 * ts\n"
        "s = SeriesData('kv_cache_usage_ratio', (('server', 'a'),), ts, vs)\n"
        "w = Window(now=59.0, interval=1.0, data={'kv_cache_usage_ratio': [s]})\n"
        "for r in DEFAULT_RULES: build_detector(r).evaluate(w)\n"
        "assert 'scipy' not in sys.modules, 'scipy imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
