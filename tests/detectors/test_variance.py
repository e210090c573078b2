"""Spread detector and utilization_spread: means over the window, straggler, staleness."""

from __future__ import annotations

import numpy as np
import pytest

from gpuwarden.detectors import Status, build_detector
from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.detectors.variance import utilization_spread
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


def test_utilization_spread_function() -> None:
    data = node([0.9, 0.5, 0.8]) + node([0.4, 0.4], "b") + node([0.7], "c")
    out = utilization_spread(data, NOW - 60, NOW)
    assert [s.node for s in out] == ["b", "n1"]
    n1 = out[1]
    assert n1.spread == pytest.approx(0.4)
    assert n1.straggler == "1"
    assert n1.stdev == pytest.approx(float(np.std([0.9, 0.5, 0.8])))
    assert out[0].spread == 0.0
    stale = utilization_spread(node([0.9, 0.5], end=NOW - 60), NOW - 120, NOW, stale_after=5.0)
    assert stale == []


def test_derive_exports_spread() -> None:
    from gpuwarden.promql.derived import derive

    data = [*node([0.9, 0.7, 0.85]), const(U, gpu(3), 0.1, end=NOW - 30)]  # GPU 3 stopped

    class Source:
        def query(self, signal: str, matchers: None = None, start: float = 0.0,
                  end: float = 0.0) -> list[SeriesData]:
            return data if signal == U else []

    out = [s for s in derive(Source(), NOW) if s.signal == "gpu_utilization_spread_ratio"]
    assert [(s.labels, round(s.value, 6)) for s in out] == [(make_labels(node="n1"), 0.2)]
