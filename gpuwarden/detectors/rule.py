"""A rule as the detectors read it: what to watch, how to compare, when to fire.

The config parser builds these from ``[[rules]]`` tables (and the defaults in
``detectors/defaults.py`` are these); detectors, the alert engine and backtest read them.
Defined here, below the config, so that the detectors never import the TOML parser.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpuwarden.signals import DERIVED_INPUTS, SIGNALS, Kind

RULE_OPS = (">", ">=", "<", "<=", "==", "!=")
#: ``node``: evaluated by each daemon over its own samples; ``fleet``: by the fleet's
#: leader over every node's samples in a shared PostgreSQL store (``gpuwarden/fleet/``).
SCOPES = ("node", "fleet")
AGGREGATIONS = ("last", "mean", "max", "min")
SEVERITIES = ("info", "warning", "critical", "page")


@dataclass(frozen=True, slots=True)
class RuleConfig:
    name: str
    signal: str
    op: str = ">"
    threshold: float | None = None
    clear: float | None = None
    for_: float = 0.0
    keep_firing_for: float = 0.0
    window: float = 60.0
    aggregation: str = "last"
    severity: str = "warning"
    actions: tuple[str, ...] = ()
    enabled: bool = True
    detector: str = "threshold"
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    summary: str | None = None
    limit: float | None = None  # trend: the level whose crossing is forecast
    horizon: float = 300.0  # trend: fire when the limit is forecast within this time
    min_points: int = 10  # trend: fewer samples in the window never fire
    every: float = 0.0  # evaluate at most this often (0: every cycle), for costly windows
    scope: str = "node"  # one of SCOPES


def counter_ratio_inputs(signal: str) -> tuple[str, str] | None:
    """(numerator, denominator) counters of a derived ratio signal (hits / queries,
    accepted / draft tokens); None for any other signal.

    What the falling detector needs, answered from the catalogue alone, so the config
    check can ask without importing a detector.
    """
    inputs = DERIVED_INPUTS.get(signal, ())
    if len(inputs) != 2 or any(SIGNALS[name].kind is not Kind.COUNTER for name in inputs):
        return None
    return inputs[0], inputs[1]
