"""The threshold a rule's detector compares against when the rule names none.

A composite diagnostic or a falling ratio has a default of its own (``composite.py``'s
``DEFAULT_THRESHOLDS``, ``falling.py``'s ``DEFAULT_THRESHOLD``); the texts that say what
a rule does (``gpuwarden check-config``, ``gpuwarden rules export``) must name the number
the detector really uses. The detectors' modules are imported on use: they need numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

#: The falling-ratio detectors (``falling.py``), the prefix-cache one a composite by name.
FALLING = ("falling", "composite:PrefixCacheHitFalling")


def effective_threshold(rule: RuleConfig) -> float | None:
    """The rule's threshold, else its detector's default; None where there is neither."""
    if rule.threshold is not None:
        return rule.threshold
    if rule.detector in FALLING:
        from gpuwarden.detectors.falling import DEFAULT_THRESHOLD

        return DEFAULT_THRESHOLD
    if rule.detector.startswith("composite:"):
        from gpuwarden.detectors.composite import DEFAULT_THRESHOLDS

        return DEFAULT_THRESHOLDS.get(rule.detector.partition(":")[2])
    return None
