"""Pushed samples: bounded while they wait, taken once, shown on /metrics for a while."""

from __future__ import annotations

import pytest

from gpuwarden.daemon.pushed import MAX_PUSHED_SAMPLES, PUSHED_TTL_S, PushedSamples
from gpuwarden.model import Sample, make_labels


def score(server: str, ts: float, value: float = 0.9) -> Sample:
    return Sample("quality_similarity", make_labels(node="n", server=server, model="m"),
                  value, ts)


def test_taken_once_and_latest_kept_until_the_ttl() -> None:
    pushed = PushedSamples()
    pushed.push([score("a", 100.0, 0.5)])
    pushed.push([score("a", 101.0, 0.7), score("b", 101.0)])
    assert [s.value for s in pushed.take()] == [0.5, 0.7, 0.9]
    assert pushed.take() == []
    assert sorted((s.labels, s.value) for s in pushed.recent(102.0)) == sorted(
        [(score("a", 0).labels, 0.7), (score("b", 0).labels, 0.9)])
    assert pushed.recent(101.0 + PUSHED_TTL_S + 1) == []


def test_too_many_waiting_is_refused() -> None:
    pushed = PushedSamples()
    pushed.push([score("a", 1.0)] * MAX_PUSHED_SAMPLES)
    with pytest.raises(OverflowError):
        pushed.push([score("b", 1.0)])
    assert len(pushed.take()) == MAX_PUSHED_SAMPLES
