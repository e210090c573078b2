"""When a series' newest sample stops speaking for "now" (Prometheus' staleness, adapted).

Why: a dead server's last KV value must not keep an alert alive forever, nor a stopped
GPU's utilisation stay in a node's spread; ``ServerDown`` and ``GPULost`` are the rules
that speak for them. Prometheus marks a series stale after 5 minutes without a sample;
gpuwarden collects every ``interval`` seconds and knows its own cadence, so its limit is
much shorter: ``max(3 * interval, 5 s)``, widened to three of the series' own sample
spacings for series slower than the cycle (quality canaries run once a minute, and their
result must not be "absent" for 55 s of every minute).

How the series' spacing is estimated is the caller's choice: its last spacing (the
default: follows a cadence change at once) or the median of its spacings (the drift
detectors: one late canary round does not widen the limit).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gpuwarden.model import SeriesData
from gpuwarden.promql.aggregation import median


def stale_after(interval: float, spacing: float = 0.0) -> float:
    """Age beyond which a series' newest sample no longer counts as its current value.

    ``interval`` is the collection interval, ``spacing`` the series' own typical spacing
    between samples (0: judged on the interval alone).
    """
    return max(3.0 * interval, 5.0, 3.0 * spacing)


def no_spacing(series: SeriesData) -> float:
    """Judge on the collection interval alone (series sampled every cycle)."""
    return 0.0


def last_spacing(series: SeriesData) -> float:
    """The time between the series' two newest samples (0 with fewer than two)."""
    ts = series.timestamps
    return float(ts[-1] - ts[-2]) if len(ts) >= 2 else 0.0


def median_spacing(series: SeriesData) -> float:
    """The median time between the series' samples (0 with fewer than three)."""
    ts = series.timestamps
    return median(np.diff(ts)) if len(ts) >= 3 else 0.0


def is_live(series: SeriesData, now: float, interval: float, *,
            spacing: Callable[[SeriesData], float] = last_spacing) -> bool:
    """True when ``series`` has a sample recent enough to speak for ``now``."""
    if not len(series):
        return False
    limit = stale_after(interval, spacing(series))
    return float(series.timestamps[-1]) >= now - limit
