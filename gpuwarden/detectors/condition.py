"""What a rule's condition means, the same for every detector: the comparison with its
hysteresis band, and which series in a window are alive to be compared.

Why one place: "is this value beyond the threshold", "is this series still alive" and
"what does hysteresis mean for op <" must be answered the same way by every rule, or two
rules on the same signal would disagree at the edges an operator looks at.

Semantics (the README's "Rules and alerts", with Netdata-style hysteresis):

* ``op`` is one of ``> >= < <= == !=``; a NaN never compares true (as in PromQL).
* With ``clear`` set, a value beyond ``threshold`` is a BREACH; a value beyond ``clear``
  but not beyond ``threshold`` is a HOLD (keeps a raised alert, starts none); anything
  else is no finding. "Beyond clear" is ``value > clear`` for ``>``/``>=`` and
  ``value < clear`` for ``<``/``<=``. ``==``/``!=`` have no direction, so ``clear`` is
  ignored for them (``validate_rules`` reports it).
* A series whose newest sample is stale at ``Window.now`` (``promql/staleness.py``) is
  treated as absent; a derived signal is computed only for the live series of its first
  input (``derived_inputs``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from gpuwarden.detectors import Status, Window
from gpuwarden.model import SeriesData
from gpuwarden.promql.aggregation import by_labels
from gpuwarden.promql.staleness import is_live
from gpuwarden.signals import DERIVED_INPUTS

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
#: Shortest lookback any detector asks for, so staleness can be judged on "last" rules.
MIN_LOOKBACK = 60.0


def require_op(rule: RuleConfig) -> None:
    """``ValueError`` naming the rule when its ``op`` is not one of :data:`OPS`."""
    if rule.op not in OPS:
        raise ValueError(f"rule {rule.name}: unknown op {rule.op!r}")


def compare(value: float, op: str, threshold: float) -> bool:
    """``value op threshold``, never true for NaN."""
    if math.isnan(value):
        return False
    return OPS[op](value, threshold)


def beyond_clear(value: float, op: str, clear: float) -> bool:
    """Whether ``value`` is still on the alerting side of the hysteresis ``clear`` level."""
    if op in (">", ">="):
        return value > clear
    if op in ("<", "<="):
        return value < clear
    return False


def classify(value: float, op: str, threshold: float, clear: float | None) -> Status | None:
    """BREACH, HOLD (inside the hysteresis band) or None for one value."""
    if math.isnan(value):
        return None
    if compare(value, op, threshold):
        return Status.BREACH
    if clear is not None and beyond_clear(value, op, clear):
        return Status.HOLD
    return None


def is_live_in(window: Window, series: SeriesData) -> bool:
    """Whether ``series`` still speaks for ``window.now`` (``promql/staleness.py``)."""
    return is_live(series, window.now, window.interval)


def live_series(window: Window, signal: str) -> Iterator[SeriesData]:
    """The window's series of ``signal`` that are not stale."""
    for series in window.series(signal):
        if is_live(series, window.now, window.interval):
            yield series


def live_pairs(window: Window, signal: str,
               matched: str) -> Iterator[tuple[SeriesData, SeriesData]]:
    """Each live series of ``signal`` with the live series of ``matched`` of its labels
    (hits with queries, waiting with running requests: both must still be reported)."""
    by_own_labels = by_labels(window.series(matched))
    for series in live_series(window, signal):
        match = by_own_labels.get(series.labels)
        if match is not None and is_live_in(window, match):
            yield series, match


def derived_inputs(window: Window, signal: str) -> list[Iterable[SeriesData]]:
    """The window's series of each input of a derived signal, in ``DERIVED_INPUTS`` order,
    for ``promql.derived.derive_signal``: the first input's live ones only (a server that
    stopped reporting has no ratio or capacity now), the others all (matched to the
    first by labels, or read over a longer past)."""
    first, *rest = DERIVED_INPUTS[signal]
    return [list(live_series(window, first)), *(window.series(name) for name in rest)]
