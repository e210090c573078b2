"""Falling-ratio detector: speculative-decoding acceptance and hit ratios against the
window before; the prefix-cache composite is the same detector."""

from __future__ import annotations

import numpy as np
import pytest

from gpuwarden.detectors import Status, build_detector
from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.detectors.falling import RatioFalling
from gpuwarden.model import SeriesData

from .helpers import NOW, SRV, SRV2, detect, rule, sampled

RULES = {r.name: r for r in DEFAULT_RULES}
SPEC = RULES["SpecDecodeAcceptanceFalling"]
W = SPEC.window


def counters(num: str, den: str, den_rate: float, before: float, after: float, *,
             labels: tuple[tuple[str, str], ...] = SRV, change_at: float | None = None,
             w: float = W, end: float = NOW) -> list[SeriesData]:
    """``den`` at ``den_rate``/s; ``num`` at ``before`` x that until ``change_at`` (seconds
    relative to ``end``; default: one window ago), ``after`` x that since; three windows
    of history."""
    change = -w if change_at is None else change_at

    def num_at(t: float) -> float:
        if t < change:
            return before * den_rate * (t + 3 * w)
        return before * den_rate * (change + 3 * w) + after * den_rate * (t - change)

    return [sampled(den, labels, lambda t: den_rate * (t + 3 * w), start=end - 3 * w, end=end),
            sampled(num, labels, num_at, start=end - 3 * w, end=end)]


def spec(den_rate: float, before: float, after: float, **kw: object) -> list[SeriesData]:
    return counters("spec_decode_accepted_tokens_total", "spec_decode_draft_tokens_total",
                    den_rate, before, after, **kw)  # type: ignore[arg-type]


def test_acceptance_falling_fires_on_the_drop_in_points() -> None:
    # 3 draft tokens a step at ~480 steps/s; acceptance 0.70 -> 0.35 (a new target model
    # the old draft no longer matches)
    (found,) = detect(SPEC, *spec(1450.0, 0.70, 0.35))
    assert found.labels == SRV and found.status is Status.BREACH
    assert found.value == pytest.approx(0.35)
    notes = dict(found.annotations)
    assert (notes["acceptance_ratio"], notes["acceptance_ratio_before"]) == ("0.350", "0.700")
    assert notes["description"].startswith(
        "speculative-decoding acceptance ratio 35% over the last 600 s, 70% before")


@pytest.mark.parametrize(("den_rate", "before", "after"), [
    (1450.0, 0.70, 0.70),  # steady
    (1450.0, 0.70, 0.55),  # 15 points: a traffic mix, not a broken draft
    (1450.0, 0.35, 0.70),  # rising
    (1.0, 0.70, 0.0),  # 600 draft tokens a window: too few to say
])
def test_acceptance_falling_negative(den_rate: float, before: float, after: float) -> None:
    assert detect(SPEC, *spec(den_rate, before, after)) == []


def test_drop_half_way_into_the_window_and_hysteresis() -> None:
    """A change 400 s ago: 2/3 of the recent window after it (drop 0.7 - 0.467)."""
    data = spec(1450.0, 0.70, 0.35, change_at=-400.0)
    (found,) = detect(SPEC, *data)
    assert found.value == pytest.approx(0.35 * 400 / 600)
    held = detect(rule(signal=SPEC.signal, detector="falling", threshold=0.3, clear=0.2,
                       window=W), *data)
    assert [f.status for f in held] == [Status.HOLD]


def test_a_server_restart_is_no_drop() -> None:
    """Counters back to zero 100 s ago, the same 70 % acceptance: increase() sees no fall."""
    restarted = []
    for s in spec(1450.0, 0.70, 0.70):
        after = s.timestamps >= NOW - 100
        values = np.where(after, s.values - s.values[after][0], s.values)
        restarted.append(SeriesData(s.signal, s.labels, s.timestamps, values))
    assert detect(SPEC, *restarted) == []


def test_each_server_its_own_and_stale_servers_skipped() -> None:
    data = [*spec(1450.0, 0.70, 0.30), *spec(1450.0, 0.70, 0.30, labels=SRV2, end=NOW - 60)]
    assert [f.labels for f in detect(SPEC, *data)] == [SRV]


def test_offload_hit_ratio_falling() -> None:
    """The offload tier found 60 % of what it was asked, 20 % in the last 5 minutes."""
    r = rule(signal="kv_offload_hit_ratio", detector="falling", window=300.0)
    data = counters("kv_offload_hits_total", "kv_offload_queries_total", 500.0, 0.6, 0.2,
                    w=300.0)
    (found,) = detect(r, *data)
    assert found.value == pytest.approx(0.4)
    assert dict(found.annotations)["hit_ratio_before"] == "0.600"
    assert "loaded from the offload tier" in dict(found.annotations)["description"]
    assert build_detector(r).inputs == {"kv_offload_hits_total": 600.0,
                                        "kv_offload_queries_total": 600.0}


def test_only_ratios_of_two_counters() -> None:
    with pytest.raises(ValueError, match="rule R: the falling detector needs a ratio of two "
                                         "counters, not 'generation_tokens_per_second'"):
        build_detector(rule("R", signal="generation_tokens_per_second", detector="falling"))


def test_prefix_cache_composite_is_the_falling_detector() -> None:
    det = build_detector(RULES["PrefixCacheHitFalling"])
    assert isinstance(det, RatioFalling)
    assert det.inputs == {"prefix_cache_hits_total": 600.0, "prefix_cache_queries_total": 600.0}
    # the composite watches the prefix cache whatever signal a config rule names
    odd = build_detector(rule(signal="kv_cache_usage_ratio",
                              detector="composite:PrefixCacheHitFalling"))
    assert set(odd.inputs) == {"prefix_cache_hits_total", "prefix_cache_queries_total"}
