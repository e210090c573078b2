"""Histogram buckets as PromQL reads them: the ``le`` bound of a bucket series, and the
identity of the histogram it belongs to (every label but ``le``).

One reading for the collectors (which sum buckets across replicas), the window
functions (``histogram_quantile``), the exposition's quantiles and the quantile detector
(which group buckets per histogram), so that a bucket PromQL ignores (no ``le``, or one
that is not a number) is ignored everywhere alike.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable

from gpuwarden.model import Labels, SeriesData


def parse_le(text: str | None) -> float | None:
    """The bound of ``le="text"`` (``+Inf`` included); None when absent or not a number."""
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def le_of(labels: Iterable[tuple[str, str]]) -> float | None:
    """The ``le`` bound of a bucket series' labels; see :func:`parse_le`."""
    for key, value in labels:
        if key == "le":
            return parse_le(value)
    return None


def without_le(labels: Labels) -> Labels:
    """The histogram a bucket series belongs to: its labels without ``le``."""
    return tuple(pair for pair in labels if pair[0] != "le")


#: ``split_le`` answers by label set; cleared when full (label sets churn as servers and
#: models come and go, and a cleared cache only costs re-parsing).
_SPLIT: dict[Labels, tuple[Labels, float | None]] = {}
_SPLIT_MAX = 1 << 14


def split_le(labels: Labels) -> tuple[Labels, float | None]:
    """``(without_le(labels), le_of(labels))``, remembered per label set: the same bucket
    series are grouped and their bounds parsed every few seconds, and a dictionary look-up
    costs a fraction of the tuple rebuild and the float parse."""
    got = _SPLIT.get(labels)
    if got is None:
        if len(_SPLIT) >= _SPLIT_MAX:
            _SPLIT.clear()
        got = _SPLIT[labels] = (without_le(labels), le_of(labels))
    return got


def by_histogram(bucket_series: Iterable[SeriesData]) -> dict[Labels, list[SeriesData]]:
    """Bucket series grouped per histogram (labels without ``le``), as ``by (le)`` keeps."""
    groups: dict[Labels, list[SeriesData]] = defaultdict(list)
    for series in bucket_series:
        groups[split_le(series.labels)[0]].append(series)
    return groups


def finite_bounds(bucket_series: Iterable[SeriesData]) -> list[float]:
    """The finite ``le`` bounds of one histogram's buckets, sorted (``+Inf`` left out)."""
    return sorted(le for s in bucket_series
                  if (le := le_of(s.labels)) is not None and math.isfinite(le))
