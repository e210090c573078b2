"""The detector table: every name builds, an unknown name is an error naming the rule."""

from __future__ import annotations

import pytest

from gpuwarden.detectors import build_detector
from gpuwarden.detectors.registry import DETECTORS

from .helpers import rule


def test_every_registered_detector_loads() -> None:
    for name in DETECTORS:
        assert callable(DETECTORS.load(name)), name


def test_names_are_sorted_as_the_error_lists_them() -> None:
    assert list(DETECTORS.names()) == sorted(DETECTORS.names())


def test_unknown_detector_names_the_rule_and_the_known_ones() -> None:
    with pytest.raises(ValueError) as err:
        build_detector(rule(name="R", detector="nope", threshold=1.0))
    known = ", ".join(sorted(DETECTORS.names()))
    assert str(err.value) == f"rule R: unknown detector 'nope' (known: {known})"
    assert "composite:QueueGrowing" in known and "threshold" in known


def test_threshold_on_a_quantile_signal_builds_the_quantile_detector() -> None:
    det = build_detector(rule(signal="itl_p95_seconds", threshold=0.13))
    assert type(det).__name__ == "QuantileDetector"
