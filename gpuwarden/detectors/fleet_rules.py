"""The default fleet rules (``scope = "fleet"``), evaluated once for the whole fleet by
the leader of the daemons sharing a PostgreSQL store (``gpuwarden/fleet/``).

Kept apart from ``fleet.py`` (the detectors, which need numpy) for the reason
``drift_rules.py`` gives: every config load builds the default rule sets.
"""

from __future__ import annotations

from collections.abc import Iterable

from gpuwarden.detectors.rule import RuleConfig

FLEET = (("scope", "fleet"),)
#: Fleet rules read every node's samples from the database: a few seconds between
#: evaluations keeps that read cheap, and their ``for`` spans minutes.
FLEET_EVERY = 5.0

DEFAULT_FLEET_RULES: tuple[RuleConfig, ...] = (
    RuleConfig(
        name="NodeSilent", signal="node_silence_intervals", op=">", threshold=3.0,
        severity="critical", actions=("notify",), labels=FLEET, scope="fleet",
        summary="node {node} wrote nothing for {value:.1f} of its intervals: its daemon, "
                "host or network is down, and its own alerts with it",
    ),
    RuleConfig(
        name="ModelLatencyP95High", signal="itl_p95_seconds", detector="fleet:ModelQuantile",
        op=">", threshold=0.130, clear=0.120, window=60.0, for_=30.0, every=FLEET_EVERY,
        severity="critical", actions=("notify",), labels=FLEET, scope="fleet",
        summary="p95 inter-token latency of {model} across the fleet {value:.3f} s "
                "> {threshold:g} s",
    ),
    RuleConfig(
        name="NodeStraggler", signal="gpu_utilization_ratio", detector="fleet:NodeStraggler",
        op=">", threshold=0.15, clear=0.10, window=300.0, for_=60.0, every=FLEET_EVERY,
        severity="warning", actions=("notify",), labels=FLEET, scope="fleet",
        summary="node {node} GPU utilisation {value:.0%} below the mean of the nodes "
                "serving {model}",
    ),
    RuleConfig(
        name="FleetKVHeadroomLow", signal="kv_cache_usage_ratio", detector="fleet:KVHeadroom",
        op=">", threshold=0.85, clear=0.80, window=60.0, for_=600.0, every=FLEET_EVERY,
        severity="warning", actions=("notify",), labels=FLEET, scope="fleet",
        summary="{value:.0%} of {model}'s KV cache in use across the fleet: add replicas "
                "before users feel it",
    ),
)
DEFAULT_FLEET_RULE_NAMES = tuple(r.name for r in DEFAULT_FLEET_RULES)


def effective_fleet_rules(config_rules: Iterable[RuleConfig]) -> tuple[RuleConfig, ...]:
    """The active fleet rules: defaults, replaced or disabled by name, plus the config's
    own rules with ``scope = "fleet"``."""
    user = {r.name: r for r in config_rules}
    out: list[RuleConfig] = []
    for default in DEFAULT_FLEET_RULES:
        rule = user.pop(default.name, default)
        if rule.enabled:
            out.append(rule)
    out.extend(r for r in user.values() if r.enabled and r.scope == "fleet")
    return tuple(out)
