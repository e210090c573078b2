"""One line per rule saying what it does, for ``gpuwarden check-config``.

Why: an operator who writes one ``[[rules]]`` entry is running the defaults too (a
``[[rules]]`` entry with a default's name replaces it, ``enabled = false`` switches it
off, other names are added: ``detectors/defaults.py``), and "1 rules" hid that. The
lines name each active rule's signal, condition, threshold, hysteresis, ``for``,
severity and actions, in the words of the README's rules table, so the file can be
checked against what the on-call expects before it is deployed.

The words follow the detectors' semantics (``detectors/condition.py`` for ``clear``:
a value beyond ``clear`` but not beyond ``threshold`` keeps a raised alert, so the
alert resolves once the value is at or past ``clear``).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

from gpuwarden.detectors.defaults import DEFAULT_RULE_NAMES, effective_rules
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.detectors.thresholds import effective_threshold
from gpuwarden.durations import format_duration
from gpuwarden.signals import resolve_rule_signal

# Where a rule of the effective set comes from, as check-config prints it; OFF and
# ELSEWHERE are the file's rules this node does not evaluate (``enabled = false``, or
# enabled but left out by ``effective_rules``: a fleet rule, run by the fleet's leader).
DEFAULT, REPLACED, ADDED, OFF, ELSEWHERE = "default", "replaced", "added", "off", "fleet"
_RESOLVES_AT = {">": "<=", ">=": "<", "<": ">=", "<=": ">"}


@dataclass(frozen=True, slots=True)
class RuleLine:
    origin: str  # DEFAULT | REPLACED | ADDED | OFF | ELSEWHERE
    rule: RuleConfig


def rule_set(config_rules: Iterable[RuleConfig]) -> list[RuleLine]:
    """The effective rules in evaluation order with their origin, then the file's rules
    this node does not evaluate."""
    config_rules = tuple(config_rules)
    by_name = {r.name: r for r in config_rules}
    active = effective_rules(config_rules)
    lines = [
        RuleLine(REPLACED if rule.name in by_name and rule.name in DEFAULT_RULE_NAMES
                 else ADDED if rule.name in by_name else DEFAULT, rule)
        for rule in active
    ]
    names = {rule.name for rule in active}
    lines += [RuleLine(ELSEWHERE if r.enabled else OFF, r) for r in config_rules
              if r.name not in names]
    return lines


def _num(value: float | None) -> str:
    return "(default)" if value is None else f"{value:g}"


def _compared(rule: RuleConfig) -> str:
    """``op threshold`` plus where the alert resolves when ``clear`` is set."""
    text = f"{rule.op} {_num(effective_threshold(rule))}"
    if rule.clear is not None and rule.op in _RESOLVES_AT:
        text += f" (resolves at {_RESOLVES_AT[rule.op]} {rule.clear:g})"
    return text


def _value(rule: RuleConfig) -> str:
    """The number a threshold rule compares: the signal, a quantile over its window,
    or the signal aggregated over its window."""
    window = format_duration(rule.window)
    resolved = resolve_rule_signal(rule.signal)
    if resolved is not None and resolved[1] is not None:
        return f"{rule.signal} over {window}"
    if rule.aggregation != "last":
        return f"{rule.aggregation} of {rule.signal} over {window}"
    return rule.signal


def condition(rule: RuleConfig) -> str:
    """When the rule fires, in words (no ``for``, severity or actions)."""
    window = format_duration(rule.window)
    detector, compared = rule.detector, _compared(rule)
    if detector in ("threshold", "quantile"):
        return f"{_value(rule)} {compared}"
    if detector == "trend":
        way = "fall" if rule.op in ("<", "<=") else "rise"
        return (f"{rule.signal} forecast to {way} to {_num(rule.limit)} within "
                f"{format_duration(rule.horizon)} (Theil-Sen trend over {window}, "
                f">= {rule.min_points} points)")
    if detector in ("spread", "variance"):
        return f"max - min of per-GPU mean {rule.signal} over {window} {compared}"
    if detector == "increase":
        return f"increase of {rule.signal} over {window} {compared}"
    if detector in ("falling", "composite:PrefixCacheHitFalling"):
        return f"drop of {rule.signal} over {window} against the {window} before {compared}"
    if detector == "fleet:ModelQuantile":
        return (f"{rule.signal} of each model, all its servers' buckets summed, over "
                f"{window} {compared}")
    if detector == "fleet:NodeStraggler":
        return (f"a node's mean {rule.signal} over {window} below the mean of the nodes "
                f"serving its model by {compared}")
    if detector == "fleet:KVHeadroom":
        return (f"each model's {rule.signal} across its servers, weighted by their KV "
                f"capacity in tokens, {compared}")
    if detector == "composite:PreemptionsRising":
        return f"rate of {rule.signal} over {window} {compared} per second"
    if detector == "composite:QueueGrowing":
        return (f"requests_waiting grows over {window} by {compared} requests while "
                "requests_running stays flat")
    if detector == "composite:KVCapacityTooSmall":
        return (f"kv_cache_capacity_sequences / peak of requests_running + requests_waiting "
                f"over {window} {compared}")
    if detector == "composite:KVCacheBottleneck":
        from gpuwarden.detectors.composite import GPU_BUSY, KV_FULL

        return (f"tokens/s over {window} / tokens/s over the {window} before {compared}, "
                f"while the node's GPUs are > {GPU_BUSY:.0%} busy and the KV cache "
                f"> {KV_FULL:.0%} full")
    if detector == "cusum":
        return (f"lower CUSUM of {rule.signal} against its baseline, for a drop of "
                f"{_num(rule.limit)}, over {window} > {_num(rule.threshold)} sigma")
    if detector == "ks":
        return (f"KS test of {rule.signal} against its baseline over {window}: "
                f"p {compared}")
    return f"detector {detector} on {rule.signal} over {window} {compared}"


def timing(rule: RuleConfig) -> str:
    """``for`` and ``keep_firing_for``, as ``, for 30s, keeps firing 2m``."""
    text = f", for {format_duration(rule.for_)}" if rule.for_ else ""
    if rule.keep_firing_for:
        text += f", keeps firing {format_duration(rule.keep_firing_for)}"
    return text


def actions_text(rule: RuleConfig, defined: Collection[str] | None = None) -> str:
    """The rule's actions; with ``defined``, those the config lacks are marked: the
    alert is then only shown (API, /metrics), nothing is called."""
    if not rule.actions:
        return "no action (shown only)"
    if defined is None:
        return ", ".join(rule.actions)
    return ", ".join(name if name in defined else f"{name} (no such action: shown only)"
                     for name in rule.actions)


def describe(line: RuleLine, defined_actions: Collection[str], name_width: int) -> str:
    """One line of check-config's rule list."""
    rule = line.rule
    if line.origin == OFF:
        return f"  {OFF:<8}  {rule.name}"
    return (f"  {line.origin:<8}  {rule.name:<{name_width}}  {rule.severity:<8}  "
            f"{condition(rule)}{timing(rule)} -> {actions_text(rule, defined_actions)}")


def summary(lines: list[RuleLine]) -> str:
    """``19 rules active (16 default, 1 replaced, 2 added; 1 off)``."""
    active = [ln for ln in lines if ln.origin not in (OFF, ELSEWHERE)]
    counts = [f"{sum(ln.origin == o for ln in active)} {o}" for o in (DEFAULT, REPLACED, ADDED)]
    off = sum(ln.origin == OFF for ln in lines)
    noun = "rule" if len(active) == 1 else "rules"
    text = f"{len(active)} {noun} active ({', '.join(counts)}; {off} off"
    fleet = sum(ln.origin == ELSEWHERE for ln in lines)
    return text + (f"; {fleet} for the fleet's leader)" if fleet else ")")


def render(config_rules: Iterable[RuleConfig], defined_actions: Collection[str], *,
           fleet: bool = False) -> list[str]:
    """check-config's rule section: the count, then one line per rule; with ``fleet`` (a
    shared PostgreSQL store) the fleet's rules follow, as its leader will run them."""
    config_rules = tuple(config_rules)
    lines = rule_set(config_rules)
    if fleet:
        lines = [ln for ln in lines if ln.origin != ELSEWHERE]  # listed below instead
    width = max((len(ln.rule.name) for ln in lines), default=0)
    out = [summary(lines) + ":", *(describe(ln, defined_actions, width) for ln in lines)]
    if fleet:
        from gpuwarden.detectors.fleet_rules import effective_fleet_rules

        rules = effective_fleet_rules(config_rules)
        width = max((len(r.name) for r in rules), default=0)
        out.append(f"{len(rules)} fleet rule{'s' if len(rules) != 1 else ''} (evaluated once "
                   "for every node of the shared store, by the fleet's leader):")
        out += [describe(RuleLine(ELSEWHERE, r), defined_actions, width) for r in rules]
    return out
