"""The quality-drift rules' signals, defaults and default rules, without numpy.

Kept apart from ``drift.py`` (the detectors, which need numpy) because every config
load builds the default rule set, and ``gpuwarden run`` loads its config before the
first cycle: importing numpy there cost ~75 ms of the time to the first stored sample.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

SIMILARITY_SIGNAL = "quality_canary_similarity"
LENGTH_SIGNAL = "quality_answer_length"
DEFAULT_LOOKBACK = 6 * 3600.0
DEFAULT_SHIFT = 0.03
DEFAULT_H = 8.0
DEFAULT_P = 0.01


def default_drift_rules() -> tuple[RuleConfig, ...]:
    """Suggested default rules for ``detectors/defaults.py`` (notify, not rollback:
    a small sustained drift is worth a look, not an automatic checkpoint change)."""
    from gpuwarden.detectors.rule import RuleConfig

    return (
        RuleConfig(name="QualityDriftCUSUM", signal=SIMILARITY_SIGNAL, detector="cusum",
                   op="<", threshold=DEFAULT_H, limit=DEFAULT_SHIFT, window=DEFAULT_LOOKBACK,
                   min_points=20, severity="warning", actions=("notify",),
                   summary="Canary similarity on {server} ({model}) drifted below its "
                           "baseline: CUSUM {value:.1f} sigma > {threshold:g}"),
        RuleConfig(name="AnswerLengthShift", signal=LENGTH_SIGNAL, detector="ks", op="<",
                   threshold=DEFAULT_P, window=DEFAULT_LOOKBACK, min_points=20,
                   severity="warning", actions=("notify",),
                   summary="Canary answer lengths on {server} ({model}) changed "
                           "distribution: KS p = {value:.2g} < {threshold:g}"),
    )
