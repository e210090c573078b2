"""Spread detector: means over the window, straggler, staleness (the spread itself:
tests/promql/test_derived.py)."""

from __future__ import annotations

import numpy as np
import pytest

from gpuwarden.detectors import Status, build_detector
from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.model import SeriesData, make_labels

from .helpers import NOW, const, detect, gpu, rule, sampled, window

U = "gpu_utilization_ratio"
SPREAD = next(r for r in DEFAULT_RULES if r.name == "GPUUtilizationSpread")


def node(means: list[float], name: str = "n1", **kw: float) -> list[SeriesData]:
    return [const(U, gpu(i, name), m, **kw) for i, m in enumerate(means)]


def test_straggler_named_and_spread_computed() -> None:
    means = [0.92, 0.90, 0.91, 0.60, 0.93, 0.89, 0.90, 0.91]
    (found,) = detect(SPREAD, *node(means))
    ann = dict(found.annotations)
    assert found.labels == make_labels(node="n1")
    assert found.value == pytest.approx(0.33)
    assert ann["straggler_gpu"] == "3"
    assert float(ann["stdev"]) == pytest.approx(float(np.std(means)),
                                                abs=1e-3)
    assert "3=0.60" in ann["gpu_means"] and "GPU 3" in ann["description"]


def test_uses_means_not_instant_values() -> None:
    # GPU 1 alternates 0.5 / 1.0 every second (mean 0.75) -> instant spread 0.5 or 0.25,
    # mean spread 0.0 against a GPU steady at 0.75
    jitter = sampled(U, gpu(1), lambda t: 0.5 if int(t) % 2 else 1.0, start=NOW - 200)
    steady = const(U, gpu(0), 0.75)
    assert not build_detector(SPREAD).evaluate(window(steady, jitter))


def test_below_threshold_hold_and_nothing() -> None:
    assert detect(SPREAD, *node([0.9, 0.78]))[0].status is Status.HOLD  # 0.12 in (0.10, 0.15]
    assert not detect(SPREAD, *node([0.9, 0.82]))
    assert detect(SPREAD, *node([0.9, 0.70]))[0].status is Status.BREACH


def test_needs_two_live_gpus() -> None:
    assert not detect(SPREAD, *node([0.9]))
    dead = const(U, gpu(1), 0.1, end=NOW - 30)
    assert not detect(SPREAD, const(U, gpu(0), 0.9), dead)


def test_per_node() -> None:
    found = detect(SPREAD, *node([0.9, 0.9], "a"), *node([0.9, 0.5], "b"))
    assert [f.labels for f in found] == [make_labels(node="b")]


def test_op_and_threshold_from_rule() -> None:
    r = rule(signal=U, detector="spread", op="<", threshold=0.05)
    assert detect(r, *node([0.9, 0.88]))
    assert not detect(r, *node([0.9, 0.5]))
