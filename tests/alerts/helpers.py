"""Stub detectors and sources for engine tests (the real detectors live elsewhere).

A :class:`Scripted` detector answers from a dict ``now -> findings`` that the test
fills in, so each state transition is driven explicitly, one evaluation at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from gpuwarden.detectors import Detector, Finding, Status, Window
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.model import Labels, SeriesData, make_labels

GPU0 = make_labels(node="n1", gpu="0")
GPU1 = make_labels(node="n1", gpu="1")


def rule(name: str = "Hot", **kw: Any) -> RuleConfig:
    kw.setdefault("signal", "gpu_temperature_celsius")
    kw.setdefault("threshold", 80.0)
    return RuleConfig(name=name, **kw)


def breach(labels: Labels = GPU0, value: float = 90.0) -> Finding:
    return Finding(labels, value)


def hold(labels: Labels = GPU0, value: float = 78.0) -> Finding:
    return Finding(labels, value, Status.HOLD)


class Scripted:
    """A detector whose findings the test sets before each evaluation."""

    def __init__(self, rule: RuleConfig, inputs: Mapping[str, float] | None = None) -> None:
        self.rule = rule
        self.inputs: Mapping[str, float] = inputs or {"gpu_temperature_celsius": 60.0}
        self.findings: list[Finding] = []
        self.raises: Exception | None = None
        self.windows: list[Window] = []

    def evaluate(self, window: Window) -> list[Finding]:
        self.windows.append(window)
        if self.raises is not None:
            raise self.raises
        return list(self.findings)


class Factory:
    """Builds (and remembers) one Scripted detector per rule name."""

    def __init__(self) -> None:
        self.built: dict[str, Scripted] = {}

    def __call__(self, rule: RuleConfig) -> Detector:
        det = Scripted(rule)
        self.built[rule.name] = det
        return det

    def __getitem__(self, name: str) -> Scripted:
        return self.built[name]


class EmptySource:
    """A source with no data; counts queries per signal."""

    def __init__(self) -> None:
        self.queries: list[tuple[str, float, float]] = []

    def query(self, signal: str, matchers: Mapping[str, str] | None = None,
              start: float = 0.0, end: float = 0.0) -> list[SeriesData]:
        self.queries.append((signal, start, end))
        return []


class Threshold:
    """A tiny real-data detector: last value of a signal vs the rule's threshold/clear."""

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.inputs = {rule.signal: max(rule.window, 5.0)}

    def evaluate(self, window: Window) -> list[Finding]:
        out = []
        for s in window.series(self.rule.signal):
            if not len(s) or s.timestamps[-1] < window.now - 3 * window.interval:
                continue
            v = float(s.values[-1])
            assert self.rule.threshold is not None
            if v > self.rule.threshold:
                out.append(Finding(s.labels, v))
            elif self.rule.clear is not None and v > self.rule.clear:
                out.append(Finding(s.labels, v, Status.HOLD))
        return out


def threshold_factory(rule: RuleConfig) -> Detector:
    return Threshold(rule)


def replace(rule: RuleConfig, **kw: Any) -> RuleConfig:
    return dataclasses.replace(rule, **kw)


Step = Callable[[float], None]
