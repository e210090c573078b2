"""Every detector a rule may name (``detector = "<name>"``), as one lazily loaded table.

The config checks a rule's detector name against this table (``name in DETECTORS``)
without importing numpy or any detector module, which keeps the path from ``gpuwarden
run`` to its first stored sample light; ``build_detector`` (``detectors/__init__.py``)
imports the detector's module the first time a rule needs it. Adding a detector is one
line here (gpuwarden/registry.py describes the pattern).

The names are listed in sorted order: an unknown name's error lists them in table order,
and a sorted list is the one an operator scans fastest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpuwarden.registry import Registry

if TYPE_CHECKING:
    from gpuwarden.detectors import DetectorFactory

DETECTORS: Registry[DetectorFactory] = Registry("detector", {
    "composite:KVCacheBottleneck": "gpuwarden.detectors.composite:KVCacheBottleneck",
    "composite:KVCapacityTooSmall": "gpuwarden.detectors.composite:KVCapacityTooSmall",
    "composite:PreemptionsRising": "gpuwarden.detectors.composite:PreemptionsRising",
    "composite:PrefixCacheHitFalling": "gpuwarden.detectors.falling:PrefixCacheHitFalling",
    "composite:QueueGrowing": "gpuwarden.detectors.composite:QueueGrowing",
    "cusum": "gpuwarden.detectors.drift:CusumDetector",
    "falling": "gpuwarden.detectors.falling:RatioFalling",
    "fleet:KVHeadroom": "gpuwarden.detectors.fleet:KVHeadroom",
    "fleet:ModelQuantile": "gpuwarden.detectors.fleet:ModelQuantile",
    "fleet:NodeStraggler": "gpuwarden.detectors.fleet:NodeStraggler",
    "increase": "gpuwarden.detectors.health:IncreaseDetector",
    "ks": "gpuwarden.detectors.drift:KsLengthDetector",
    "quantile": "gpuwarden.detectors.latency:QuantileDetector",
    "spread": "gpuwarden.detectors.variance:SpreadDetector",
    "threshold": "gpuwarden.detectors.threshold:threshold_or_quantile",
    "trend": "gpuwarden.detectors.trend:TrendDetector",
})
