"""Detectors: pure functions from a window of stored samples to findings.

A detector is built from one rule (``RuleConfig``) and declares which stored signals it
reads and how far back (``inputs``); the alert engine fetches those once per
evaluation into a :class:`Window` and calls ``evaluate(window)``. Detectors do no I/O
and keep no state between calls (ARCHITECTURE.md, convention 3): the same window always gives
the same findings, which is what makes ``gpuwarden backtest`` and accelerated-time
tests faithful to the live daemon.

A detector returns a :class:`Finding` only for label sets where its condition holds
("breach"), or where an already-raised alert must stay raised under hysteresis
("hold": beyond ``clear`` but not beyond ``threshold``). A label set with no finding
is inactive, as a series missing from a Prometheus rule's result is.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Protocol

from gpuwarden.detectors.registry import DETECTORS
from gpuwarden.model import Labels, SeriesData

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig


class Status(StrEnum):
    BREACH = "breach"  # the firing condition holds: start (or keep) an alert
    HOLD = "hold"  # between clear and threshold: keep a raised alert, start none


@dataclass(frozen=True, slots=True)
class Finding:
    """One label set for which a rule's condition holds at ``Window.now``."""

    labels: Labels  # identifying labels of the target (node, server, model, gpu, ...)
    value: float  # the value compared (for annotations and /api/v1/alerts)
    status: Status = Status.BREACH
    annotations: tuple[tuple[str, str], ...] = ()  # extra context: straggler, forecast


@dataclass(frozen=True, slots=True)
class Window:
    """What a detector may look at: stored series per signal, up to ``now``.

    ``data[signal]`` holds every stored series of that signal covering at least
    ``[now - lookback, now]`` for the lookback the detector declared. ``interval`` is
    the collection interval, so detectors can tell a stale last value from a live one.
    """

    now: float
    interval: float
    data: Mapping[str, Sequence[SeriesData]] = field(default_factory=dict)

    def series(self, signal: str) -> Sequence[SeriesData]:
        return self.data.get(signal, ())


class Detector(Protocol):
    rule: RuleConfig
    inputs: Mapping[str, float]  # stored signal -> seconds of history needed

    def evaluate(self, window: Window) -> list[Finding]: ...


DetectorFactory = Callable[["RuleConfig"], Detector]


def build_detector(rule: RuleConfig) -> Detector:
    """The detector for ``rule``; ``ValueError`` naming the rule when it cannot be built.

    The detector's module is imported here, on the first rule that names it
    (``detectors/registry.py``).
    """
    if rule.detector not in DETECTORS:
        raise ValueError(f"rule {rule.name}: {DETECTORS.unknown(rule.detector)}")
    return DETECTORS.load(rule.detector)(rule)
