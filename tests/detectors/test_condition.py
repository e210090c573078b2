"""Rule conditions: comparison, hysteresis band, op check, live series of a window."""

from __future__ import annotations

import math

import pytest

from gpuwarden.detectors import Status
from gpuwarden.detectors.condition import (
    classify,
    is_live_in,
    live_pairs,
    live_series,
    require_op,
)

from .helpers import NOW, SRV, SRV2, const, rule, window


def test_without_clear_no_hold() -> None:
    assert classify(0.89, ">", 0.90, None) is None
    assert classify(math.nan, ">", 0.90, 0.5) is None
    assert classify(0.5, "==", 0.0, -1.0) is None  # no direction: clear ignored


def test_hold_inside_the_band_either_direction() -> None:
    assert classify(0.91, ">", 0.90, 0.85) is Status.BREACH
    assert classify(0.87, ">", 0.90, 0.85) is Status.HOLD
    assert classify(0.93, "<", 0.92, 0.94) is Status.HOLD
    assert classify(0.95, "<", 0.92, 0.94) is None


def test_unknown_op_names_the_rule() -> None:
    require_op(rule(op="<="))
    with pytest.raises(ValueError, match=r"rule Bad: unknown op '=>'"):
        require_op(rule("Bad", op="=>"))


def test_live_series_leaves_stale_ones_out() -> None:
    dead, live = const("x", SRV, 1.0, end=NOW - 10), const("x", SRV2, 1.0)
    w = window(dead, live)
    assert [s.labels for s in live_series(w, "x")] == [SRV2]
    assert not is_live_in(w, dead) and is_live_in(w, live)


def test_live_pairs_need_both_sides_live() -> None:
    hits = [const("hits", SRV, 1.0), const("hits", SRV2, 1.0)]
    queries = [const("queries", SRV, 2.0), const("queries", SRV2, 2.0, end=NOW - 10)]
    pairs = list(live_pairs(window(*hits, *queries), "hits", "queries"))
    assert [(h.labels, q.signal) for h, q in pairs] == [(SRV, "queries")]
