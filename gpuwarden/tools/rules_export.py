"""gpuwarden's rules as Prometheus alerting rules, over gpuwarden's exported metrics.

Why export at all: many sites already route every page through Prometheus and
Alertmanager, and want the same conditions evaluated centrally (across nodes, with
their silences and inhibitions) rather than, or as well as, on the node. Translating
the configured rules (defaults included) keeps both in step with one source of truth.

The translation is faithful where PromQL can say the same thing and says so where it
cannot:

* threshold rules -> ``gpuwarden_<signal> <op> <threshold>`` (``avg/max/min_over_time``
  when the rule aggregates over its window), ``for`` and ``keep_firing_for`` kept;
* quantile signals -> the exported window quantile, ``gpuwarden_itl_seconds{quantile=
  "0.95"}`` (computed by gpuwarden over 60 s; raw buckets are not exported);
* counters -> ``increase(gpuwarden_<signal>[window]) <op> <threshold>``;
* trend rules -> ``predict_linear(gpuwarden_<signal>[window], horizon) >= limit``;
* the utilisation spread -> max minus min of each GPU's ``avg_over_time`` by node;
* a falling ratio (``detector = "falling"``, ``composite:PrefixCacheHitFalling``) -> the
  ratio of the counters' increases over the window before (``offset``) minus the one
  over the window, where the denominator grew by the detector's minimum in both;
* ``composite:PreemptionsRising`` -> ``rate(gpuwarden_preemptions_total[window])``, the
  detector's own ``rate()`` (``promql/windows.py``);
* ``composite:KVCapacityTooSmall`` -> the exported ``kv_cache_capacity_sequences`` over
  the ``max_over_time`` of running + waiting requests (a subquery at the evaluation
  interval: Prometheus sees the gauges at its scrapes, gpuwarden at every cycle);
* ``clear`` (hysteresis) -> ``breach or (hold and ALERTS{alertstate="firing"})``: the
  alert stays firing while the value is between ``clear`` and ``threshold``, and a
  pending alert is dropped there, exactly as gpuwarden's engine does;
* anything else (the other composite diagnostics, the drift tests, unknown detectors)
  is left out rather than approximated into a rule that pages wrongly, and listed with
  the reason in comments at the top of the file (``UNEXPORTABLE``), where whoever loads
  the file into Prometheus reads it: those alerts exist on the node only.

No YAML library: the output is a small fixed structure. Every string value is written
as a YAML single-quoted scalar (only ``'`` needs escaping there), which keeps PromQL
and Go templates readable, and ``promtool check rules`` verifies the result in tests.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from gpuwarden import __version__
from gpuwarden.detectors.composite import GPU_BUSY, KV_FULL
from gpuwarden.detectors.falling import MIN_TOKENS, PrefixCacheHitFalling
from gpuwarden.detectors.rule import RuleConfig, counter_ratio_inputs
from gpuwarden.detectors.thresholds import effective_threshold
from gpuwarden.durations import format_duration
from gpuwarden.promql.derived import DEFAULT_WINDOW, QUANTILES
from gpuwarden.signals import SIGNALS, Kind, resolve_rule_signal

PREFIX = "gpuwarden_"
GROUP = "gpuwarden"
_AGG = {"mean": "avg_over_time", "max": "max_over_time", "min": "min_over_time"}
SPREAD_DETECTORS = ("variance", "spread")
# detector -> the ratio it watches (None: the rule's signal)
FALLING_DETECTORS = {"falling": None,
                     "composite:PrefixCacheHitFalling": PrefixCacheHitFalling.signal}
_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
PREEMPTIONS = "composite:PreemptionsRising"
# Why a detector has no Prometheus rule: what it computes that PromQL cannot, or has not
# been written as PromQL yet (said as such).
UNEXPORTABLE = {
    "composite:KVCacheBottleneck": (
        f"joins the node's mean GPU utilisation (> {GPU_BUSY:.0%}) with each server's KV "
        f"cache usage (> {KV_FULL:.0%}) and its token rate against the previous window; "
        "not written as PromQL yet"),
    "composite:QueueGrowing": (
        "Theil-Sen slopes of waiting and running requests with a 99 % confidence bound; "
        "PromQL has only the least-squares deriv()"),
    "cusum": (
        "a cumulative sum per canary against a baseline taken from the series' first "
        "samples: state that PromQL does not keep between evaluations"),
    "ks": (
        "a two-sample Kolmogorov-Smirnov test of answer lengths against their baseline: "
        "no PromQL function computes it"),
}


@dataclass(frozen=True, slots=True)
class Exported:
    """One rule's translation: a Prometheus rule, or the reason there is none."""

    name: str
    expr: str | None
    note: str | None = None  # a caveat (kept as a comment) or, with no expr, why omitted


def load_rules(config_path: str | None) -> list[RuleConfig]:
    """The rules gpuwarden would run: defaults merged with the config's ``[[rules]]``."""
    from gpuwarden.config import load_config

    rules: tuple[RuleConfig, ...] = ()
    if config_path is not None:
        rules = load_config(config_path).rules
    try:
        defaults = importlib.import_module("gpuwarden.detectors.defaults")
    except ImportError:  # no default rules in this build: only the config's
        return [r for r in rules if r.enabled]
    merged: list[RuleConfig] = list(defaults.effective_rules(rules))
    return [r for r in merged if r.enabled]


def _num(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if value != int(value) else str(int(value))


def signal_expr(rule: RuleConfig) -> tuple[str, str | None] | None:
    """The PromQL vector the rule compares, with a caveat; None if not expressible."""
    resolved = resolve_rule_signal(rule.signal)
    if resolved is None:
        return None
    signal, quantile = resolved
    spec = SIGNALS[signal]
    window = format_duration(rule.window)
    if quantile is not None:
        if quantile not in QUANTILES:
            return None
        note = None
        if rule.window != DEFAULT_WINDOW:
            note = (f"window {window} approximated by gpuwarden's exported "
                    f"{format_duration(DEFAULT_WINDOW)} window quantile")
        base = f'{PREFIX}{signal}{{quantile="{quantile:g}"}}'
        return _aggregate(base, rule, window), note
    if signal == "gpu_utilization_spread_ratio" or (
            rule.detector in SPREAD_DETECTORS and signal == "gpu_utilization_ratio"):
        means = f"avg_over_time({PREFIX}gpu_utilization_ratio[{window}])"
        return f"(max by (node) ({means}) - min by (node) ({means}))", None
    if spec.kind is Kind.COUNTER:
        return f"increase({PREFIX}{signal}[{window}])", None
    if spec.kind is Kind.HISTOGRAM:
        return None
    return _aggregate(PREFIX + signal, rule, window), None


def falling_expr(rule: RuleConfig) -> str | None:
    """The drop of a counter ratio against the window before, as the falling detector
    computes it (``detectors/falling.py``); None when the signal is no such ratio."""
    inputs = counter_ratio_inputs(FALLING_DETECTORS.get(rule.detector) or rule.signal)
    if inputs is None:
        return None
    num, den = (PREFIX + name for name in inputs)
    w = format_duration(rule.window)
    now = f"increase({num}[{w}]) / increase({den}[{w}])"
    before = f"increase({num}[{w}] offset {w}) / increase({den}[{w}] offset {w})"
    enough = (f"increase({den}[{w}]) >= {_num(MIN_TOKENS)} and "
              f"increase({den}[{w}] offset {w}) >= {_num(MIN_TOKENS)}")
    return f"(({before}) - ({now}) and {enough})"


def capacity_expr(rule: RuleConfig) -> str:
    """KV capacity in sequences over the window's peak of running + waiting requests."""
    demand = f"{PREFIX}requests_running + {PREFIX}requests_waiting"
    return (f"({PREFIX}kv_cache_capacity_sequences / "
            f"max_over_time(({demand})[{format_duration(rule.window)}:]))")


CAPACITY = "composite:KVCapacityTooSmall"


def _aggregate(base: str, rule: RuleConfig, window: str) -> str:
    func = _AGG.get(rule.aggregation)
    return f"{func}({base}[{window}])" if func else base


def translate(rule: RuleConfig) -> Exported:
    """Translate one rule (see the module docstring for the mapping)."""
    vector = signal_expr(rule)
    if rule.detector in FALLING_DETECTORS:
        drop = falling_expr(rule)
        vector = None if drop is None else (drop, None)
    elif rule.detector == CAPACITY:
        vector = (capacity_expr(rule), None)
    elif rule.detector == PREEMPTIONS:
        vector = (f"rate({PREFIX}preemptions_total[{format_duration(rule.window)}])", None)
    if rule.detector in UNEXPORTABLE:
        return Exported(rule.name, None, UNEXPORTABLE[rule.detector])
    if vector is None:
        return Exported(rule.name, None, f"signal {rule.signal!r} has no exported metric "
                                         "PromQL can compare")
    expr, note = vector
    if rule.detector == "trend":
        limit = rule.limit if rule.limit is not None else rule.threshold
        if limit is None:
            return Exported(rule.name, None, "trend rule without a limit")
        base = expr if expr.startswith(PREFIX) else None
        if base is None:
            return Exported(rule.name, None, "trend over a derived signal")
        op = ">=" if rule.op in (">", ">=") else "<="
        horizon = _num(rule.horizon)
        window = format_duration(rule.window)
        expr = f"predict_linear({base}[{window}], {horizon}) {op} {_num(limit)}"
        if rule.min_points > 2:  # as the detector: a forecast from a handful of points lies
            expr += f" and count_over_time({base}[{window}]) >= {rule.min_points}"
        return Exported(rule.name, expr, note)
    if rule.detector in SPREAD_DETECTORS and not expr.startswith("(max by (node)"):
        return Exported(rule.name, None, f"spread over {rule.signal!r}: only GPU "
                                         "utilisation spread is translated")
    if rule.detector not in ("threshold", "latency", "drift", "increase", *SPREAD_DETECTORS,
                             *FALLING_DETECTORS, CAPACITY, PREEMPTIONS):
        return Exported(rule.name, None, f"detector {rule.detector!r} (a composite or custom "
                                         "diagnostic) has no faithful PromQL equivalent")
    threshold = effective_threshold(rule)
    if threshold is None:
        return Exported(rule.name, None, "no threshold")
    breach = f"{expr} {rule.op} {_num(threshold)}"
    if rule.clear is None or rule.op in ("==", "!="):
        return Exported(rule.name, breach, note)
    hold = f"{expr} {rule.op} {_num(rule.clear)}"
    ignored = ", ".join(["alertname", "alertstate", *(k for k, _ in _labels(rule))])
    firing = f"ALERTS{{alertname={_q(rule.name, double=True)}, alertstate=\"firing\"}}"
    return Exported(rule.name, f"{breach} or ({hold} and ignoring ({ignored}) {firing})", note)


_FIELD = re.compile(r"\{(\w+)(?::([^{}]*))?\}")
_RULE_FIELDS = ("threshold", "clear", "limit", "horizon", "window")


def _go_template(summary: str, rule: RuleConfig) -> str:
    """The rule's Python summary (``str.format_map`` over labels and value, see
    detectors/defaults.py) as a Prometheus annotation template: ``{server}`` becomes
    ``{{ $labels.server }}``, ``{value:.0%}`` ``{{ $value | humanizePercentage }}``,
    rule constants their number, so Alertmanager shows the same sentence."""

    def field(m: re.Match[str]) -> str:
        name, spec = m[1], m[2] or ""
        if name == "value":
            return ("{{ $value | humanizePercentage }}" if spec.endswith("%")
                    else "{{ $value | humanize }}")
        if name in _RULE_FIELDS:
            value = getattr(rule, name)
            if value is None:
                return ""
            try:
                return format(value, spec) if spec else _num(value)
            except (TypeError, ValueError):
                return _num(value)
        if name == "rule":
            return rule.name
        return "{{ $labels." + name + " }}"

    return _FIELD.sub(field, summary)


def _labels(rule: RuleConfig) -> list[tuple[str, str]]:
    out = {"severity": rule.severity}
    out.update(dict(rule.labels))
    return sorted(out.items())


def _annotations(rule: RuleConfig) -> list[tuple[str, str]]:
    what = rule.signal
    if rule.detector == "trend":
        limit = rule.limit if rule.limit is not None else rule.threshold
        cond = f"{what} forecast to reach {_num(limit or 0)} within {format_duration(rule.horizon)}"
    elif rule.detector == CAPACITY:
        cond = (f"kv_cache_capacity_sequences / peak running + waiting over "
                f"{format_duration(rule.window)} {rule.op} {_num(effective_threshold(rule) or 0)}")
    elif rule.detector == PREEMPTIONS:
        cond = (f"rate of preemptions_total over {format_duration(rule.window)} {rule.op} "
                f"{_num(effective_threshold(rule) or 0)}/s")
    elif rule.detector in FALLING_DETECTORS:
        cond = (f"{FALLING_DETECTORS[rule.detector] or what} down {rule.op} "
                f"{_num(effective_threshold(rule) or 0)} against the previous "
                f"{format_duration(rule.window)}")
    else:
        cond = f"{what} {rule.op} {_num(rule.threshold or 0)}"
    if rule.for_:
        cond += f" for {format_duration(rule.for_)}"
    where = "{{ $labels.node }}{{ with $labels.server }}/{{ . }}{{ end }}" \
            "{{ with $labels.gpu }} gpu {{ . }}{{ end }}"
    out = {
        # A trend's PromQL value is the predicted level, not the detector's seconds-to-
        # limit, so its Python summary would mislabel it.
        "summary": (_go_template(rule.summary, rule)
                    if rule.summary and rule.detector != "trend"
                    else f"{rule.name} on {where}: {cond}"),
        "description": f"{cond} (value {{{{ $value | humanize }}}}). gpuwarden rule "
                       f"{rule.name}" + (f"; gpuwarden actions: {', '.join(rule.actions)}"
                                        if rule.actions else "") + ".",
    }
    out.update(dict(rule.annotations))
    return list(out.items())


def _q(text: str, *, double: bool = False) -> str:
    """A YAML single-quoted scalar (or a PromQL/JSON double-quoted string)."""
    if double or "\n" in text:
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return "'" + text.replace("'", "''") + "'"


def _key(name: str) -> str:
    return name if _LABEL_NAME.match(name) else _q(name)


def render(rules: Sequence[RuleConfig], *, source: str = "defaults") -> str:
    """The whole rule file as text (header comment, the rules left out, one group)."""
    exported = [(rule, translate(rule)) for rule in rules]
    left_out = [(rule, e) for rule, e in exported if e.expr is None]
    lines = [
        f"# Prometheus alerting rules exported by gpuwarden {__version__} "
        "(`gpuwarden rules export`).",
        f"# Source: {source}. They read gpuwarden's /metrics, so scrape it first (see",
        "# dashboards/prometheus/scrape-config.example.yml). Check: promtool check rules FILE",
        f"# Exported: {len(exported) - len(left_out)} of {len(exported)} rules.",
    ]
    if left_out:
        lines += [f"# Not exported ({len(left_out)}; these alerts exist only in gpuwarden on the "
                  "node, its", "# /api/v1/alerts and actions):"]
        lines += [f"#   {rule.name} ({rule.detector}): {e.note}." for rule, e in left_out]
    lines += ["groups:", f"  - name: {GROUP}", "    rules:"]
    if len(left_out) == len(exported):
        lines[-1] = "    rules: []"
    for rule, e in exported:
        if e.expr is None:
            continue
        if e.note:
            lines.append(f"      # {rule.name}: {e.note}.")
        lines += [f"      - alert: {_key(rule.name)}", f"        expr: {_q(e.expr)}"]
        if rule.for_:
            lines.append(f"        for: {format_duration(rule.for_)}")
        if rule.keep_firing_for:
            lines.append(f"        keep_firing_for: {format_duration(rule.keep_firing_for)}")
        lines.append("        labels:")
        lines += [f"          {_key(k)}: {_q(v)}" for k, v in _labels(rule)]
        lines.append("        annotations:")
        lines += [f"          {_key(k)}: {_q(v)}" for k, v in _annotations(rule)]
    return "\n".join(lines) + "\n"


def export(config_path: str | None = None) -> str:
    rules = load_rules(config_path)
    source = f"defaults merged with {config_path}" if config_path else "built-in defaults"
    return render(rules, source=source)


def omitted(rules: Iterable[RuleConfig]) -> list[Exported]:
    """The rules that have no Prometheus translation (for a warning on stderr)."""
    return [e for e in map(translate, rules) if e.expr is None]
