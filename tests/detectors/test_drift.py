"""CUSUM and KS drift detectors on synthetic canary streams: delay and false alarms.

Streams are one sample per canary per round (``ROUND`` seconds apart), as the canary
collector stores them; each evaluation sees what the engine would fetch: the slice
``[now - lookback, now]`` of every series.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from gpuwarden.detectors import Window
from gpuwarden.detectors.drift import (
    DEFAULT_H,
    CusumDetector,
    KsLengthDetector,
    baseline_stats,
    lower_cusum,
)
from gpuwarden.detectors.drift_rules import default_drift_rules
from gpuwarden.detectors.registry import DETECTORS
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.model import SeriesData, make_labels

ROUND = 60.0
T0 = 1_700_000_000.0
CANARIES = ("c0", "c1", "c2", "c3")


def cusum_rule(limit: float = 0.03) -> RuleConfig:
    return RuleConfig(name="QualityDriftCUSUM", signal="quality_canary_similarity",
                      detector="cusum", threshold=DEFAULT_H, limit=limit, window=6 * 3600.0,
                      min_points=20)


def ks_rule() -> RuleConfig:
    return RuleConfig(name="AnswerLengthShift", signal="quality_answer_length", detector="ks",
                      threshold=0.01, window=6 * 3600.0, min_points=20)


class Stream:
    """Per-canary samples of one signal, under one or more models over time."""

    def __init__(self, signal: str, server: str = "vllm-0") -> None:
        self.signal = signal
        self.server = server
        self.points: dict[tuple[str, str], list[tuple[float, float]]] = {}

    def add_round(self, r: int, model: str, values: Sequence[float]) -> None:
        for canary, v in zip(CANARIES, values, strict=True):
            self.points.setdefault((model, canary), []).append((T0 + r * ROUND, float(v)))

    def window(self, now: float, lookback: float) -> Window:
        series = []
        for (model, canary), pts in sorted(self.points.items()):
            arr = np.array([p for p in pts if now - lookback <= p[0] <= now])
            if arr.size:
                labels = make_labels(node="n1", server=self.server, model=model, canary=canary)
                series.append(SeriesData(self.signal, labels, arr[:, 0].copy(), arr[:, 1].copy()))
        return Window(now=now, interval=1.0, data={self.signal: series})


def similarity_round(rng: np.random.Generator, mean: float, sd: float = 0.01) -> np.ndarray:
    return np.clip(rng.normal(mean, sd, len(CANARIES)), 0.0, 1.0)


def at(r: int) -> float:
    return T0 + r * ROUND + 1.0  # evaluated a second after the round's answers


def test_registered_and_defaults_build() -> None:
    assert "cusum" in DETECTORS and "ks" in DETECTORS
    for rule in default_drift_rules():
        det = DETECTORS.load(rule.detector)(rule)
        assert det.inputs == {rule.signal: 6 * 3600.0}
    with pytest.raises(ValueError, match="cusum needs"):
        CusumDetector(cusum_rule(limit=0.0))


@pytest.mark.parametrize(("shift", "max_delay"), [(0.03, 12), (0.05, 6)])
def test_cusum_catches_a_small_sustained_drop(shift: float, max_delay: int) -> None:
    """0.97 -> 0.94: every round mean stays above QualityDrift's 0.92, CUSUM fires."""
    rng = np.random.default_rng(7)
    det = CusumDetector(cusum_rule())
    stream = Stream("quality_canary_similarity")
    means = []
    fired_at = None
    for r in range(40 + 60):
        mean = 0.97 if r < 40 else 0.97 - shift
        values = similarity_round(rng, mean)
        means.append(float(values.mean()))
        stream.add_round(r, "llama-a", values)
        findings = det.evaluate(stream.window(at(r), det.lookback))
        if r < 40:
            assert findings == [], f"false alarm at stable round {r}"
        elif findings and fired_at is None:
            fired_at = r
            f = findings[0]
            assert dict(f.labels) == {"node": "n1", "server": "vllm-0", "model": "llama-a"}
            ann = dict(f.annotations)
            assert float(ann["baseline_similarity"]) == pytest.approx(0.97, abs=0.01)
            assert f.value > DEFAULT_H
    assert fired_at is not None
    delay = fired_at - 40 + 1
    assert delay <= max_delay
    if shift == 0.03:
        assert min(means[40:]) > 0.92  # no single threshold at 0.92 ever sees it


def test_cusum_stable_stream_no_false_alarm_over_1000_rounds() -> None:
    rng = np.random.default_rng(11)
    det = CusumDetector(cusum_rule())
    stream = Stream("quality_canary_similarity")
    alarms = 0
    for r in range(1000):
        stream.add_round(r, "llama-a", similarity_round(rng, 0.97))
        if r % 10 == 9:
            alarms += len(det.evaluate(stream.window(at(r), det.lookback)))
    assert alarms == 0


def test_cusum_arl_of_the_statistic_itself() -> None:
    """The chart alone, 200 canary streams x 1000 stable rounds: alarm episodes counted."""
    rng = np.random.default_rng(3)
    episodes = 0
    delays = []
    for _ in range(200):
        base = np.clip(rng.normal(0.97, 0.01, 20), 0, 1)
        mu0, sigma = baseline_stats(base, 20)
        k = 0.015 / sigma
        stable = lower_cusum(np.clip(rng.normal(0.97, 0.01, 1000), 0, 1), mu0, sigma, k, 16.0)
        alarm = stable > DEFAULT_H
        episodes += int(alarm[0]) + int(np.sum(alarm[1:] & ~alarm[:-1]))
        drifted = lower_cusum(np.clip(rng.normal(0.94, 0.01, 100), 0, 1), mu0, sigma, k, 16.0)
        delays.append(int(np.argmax(drifted > DEFAULT_H)) + 1)
    assert episodes == 0
    assert float(np.median(delays)) <= 7 and float(np.percentile(delays, 95)) <= 11


def test_model_change_resets_baseline_and_rollback_clears() -> None:
    """A's history, then B drifts (fires for B only), then a rollback to A clears it."""
    rng = np.random.default_rng(5)
    det = CusumDetector(cusum_rule())
    stream = Stream("quality_canary_similarity")
    r = 0
    for _ in range(40):
        stream.add_round(r, "model-a", similarity_round(rng, 0.97))
        r += 1
    for i in range(60):  # B: its own baseline (0.96 is fine for B), then a drop
        stream.add_round(r, "model-b", similarity_round(rng, 0.96 if i < 30 else 0.92))
        r += 1
    findings = det.evaluate(stream.window(at(r - 1), det.lookback))
    assert [dict(f.labels)["model"] for f in findings] == ["model-b"]
    for _ in range(5):  # rollback to A
        stream.add_round(r, "model-a", similarity_round(rng, 0.97))
        r += 1
    assert det.evaluate(stream.window(at(r - 1), det.lookback)) == []


def test_a_steady_worse_model_is_the_threshold_rules_business_not_cusums() -> None:
    rng = np.random.default_rng(9)
    det = CusumDetector(cusum_rule())
    stream = Stream("quality_canary_similarity")
    for r in range(60):
        stream.add_round(r, "model-b", similarity_round(rng, 0.90))
    assert det.evaluate(stream.window(at(59), det.lookback)) == []


def test_cusum_recovery_clears_within_a_few_rounds() -> None:
    rng = np.random.default_rng(13)
    det = CusumDetector(cusum_rule())
    stream = Stream("quality_canary_similarity")
    for r in range(120):
        mean = 0.97 if r < 30 or r >= 90 else 0.93
        stream.add_round(r, "m", similarity_round(rng, mean))
        findings = det.evaluate(stream.window(at(r), det.lookback))
        if r == 89:
            assert findings
    assert findings == []
    cleared = [r for r in range(90, 120)
               if not det.evaluate(stream.window(at(r), det.lookback))]
    assert cleared and cleared[0] - 90 < 15


def test_deterministic_canaries_and_stale_series() -> None:
    """Temperature 0: identical scores (sigma floored); a stale series finds nothing."""
    det = CusumDetector(cusum_rule())
    stream = Stream("quality_canary_similarity")
    for r in range(30):
        stream.add_round(r, "m", [1.0] * 4)
    for r in range(30, 40):
        stream.add_round(r, "m", [0.95, 1.0, 1.0, 1.0])  # one canary changed its answer
    findings = det.evaluate(stream.window(at(39), det.lookback))
    assert findings and dict(findings[0].annotations)["drifting_canaries"] == "c0"
    assert dict(findings[0].annotations)["canaries_drifting"] == "1/4"
    # Ten minutes without answers (3 rounds' gap is the limit): stale, no finding.
    assert det.evaluate(stream.window(at(39) + 600, det.lookback)) == []


def lengths_round(rng: np.random.Generator, scale: float, jitter: float) -> np.ndarray:
    base = np.array([130.0, 140.0, 180.0, 160.0])
    return np.round(base * scale * (1 + rng.normal(0, jitter, 4)))


@pytest.mark.parametrize("jitter", [0.0, 0.03])
def test_ks_detects_truncated_answers(jitter: float) -> None:
    rng = np.random.default_rng(17)
    det = KsLengthDetector(ks_rule())
    stream = Stream("quality_answer_length")
    fired_at = None
    for r in range(60):
        stream.add_round(r, "m", lengths_round(rng, 1.0 if r < 40 else 0.5, jitter))
        findings = det.evaluate(stream.window(at(r), det.lookback))
        if r < 40:
            assert findings == []
        elif findings and fired_at is None:
            fired_at = r
            assert findings[0].value < 0.01
            assert float(dict(findings[0].annotations)["ks_statistic"]) >= 0.3
    assert fired_at is not None
    # Recent = each canary's last 20 answers: D >= 0.3 once ~30 % of them are short.
    assert fired_at - 40 + 1 <= 7


@pytest.mark.parametrize("jitter", [0.0, 0.03])
def test_ks_stable_lengths_no_false_alarm_over_1000_rounds(jitter: float) -> None:
    rng = np.random.default_rng(19)
    det = KsLengthDetector(ks_rule())
    stream = Stream("quality_answer_length")
    alarms = 0
    for r in range(1000):
        stream.add_round(r, "m", lengths_round(rng, 1.0, jitter))
        if r % 10 == 9:
            alarms += len(det.evaluate(stream.window(at(r), det.lookback)))
    assert alarms == 0
