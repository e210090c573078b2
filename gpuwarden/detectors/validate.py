"""What makes a rule runnable: the checks the config applies to every ``[[rules]]`` entry.

The config parser knows keys, types and ranges; whether a rule can run depends on the
detectors: which signals exist (and which are histograms that need a quantile), which
detector names are registered (``detectors/registry.py``, checked without importing a
detector), which fields each detector needs, on which side of the threshold ``clear``
may lie, and whether the ``summary`` template renders for the alerts the rule will
raise. These checks live here, once; the config reports what they find under the
rule's key path (``rules[2]: ...``) and ``validate_rules`` reports it for any list of
rules (the defaults, or the effective rules of a config).

A summary template is rendered once with sample values for exactly the fields
``render_summary`` fills (``defaults.summary_fields``; labels from
``alert_label_names``), so a broken one is a config error instead of a plain-text alert
at 3 a.m.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence

from gpuwarden.detectors import build_detector
from gpuwarden.detectors.defaults import summary_fields
from gpuwarden.detectors.registry import DETECTORS
from gpuwarden.detectors.rule import AGGREGATIONS, RULE_OPS, RuleConfig, counter_ratio_inputs
from gpuwarden.signals import DERIVED_INPUTS, SIGNALS, Kind, resolve_rule_signal

# Detectors that compare against ``threshold`` (a rule for them cannot run without one).
THRESHOLDED = ("threshold", "quantile", "fleet:KVHeadroom", "fleet:ModelQuantile",
               "fleet:NodeStraggler")
# Detectors of quantile signals: per server, or per model across the fleet.
_QUANTILE_DETECTORS = ("threshold", "quantile", "fleet:ModelQuantile")
# Read from the fleet's ``nodes`` table by the leader, never stored by a node.
_FLEET_ONLY_SIGNALS = ("node_silence_intervals",)
# Signals that are already a figure over a window: an aggregation over them means nothing.
_COMPOSITE = "composite:"


def signal_problem(signal: str) -> str | None:
    """Why ``signal`` names no signal a rule can watch, or None when it names one."""
    return None if resolve_rule_signal(signal) is not None else f"unknown signal {signal!r}"


def rule_problems(rule: RuleConfig) -> list[str]:
    """What keeps ``rule`` from running, one line each; [] when it can run or is disabled.

    The summary template is checked apart (``summary_problem``): it is only meaningful
    once everything else is right.
    """
    if not rule.enabled:
        return []
    problems: list[str] = []
    resolved = resolve_rule_signal(rule.signal)
    quantile = resolved is not None and resolved[1] is not None
    unknown_signal = signal_problem(rule.signal)
    if unknown_signal is not None:
        problems.append(unknown_signal)
    elif not quantile and SIGNALS[rule.signal].kind is Kind.HISTOGRAM:
        hint = f"{rule.signal.removesuffix('_seconds')}_p95_seconds"
        if resolve_rule_signal(hint) is not None:
            problems.append(f"signal {rule.signal!r} is a histogram: name a quantile, e.g. "
                            f"{hint}")
        else:  # the token-count histograms: no quantile signal (yet) names them
            problems.append(f"signal {rule.signal!r} is a histogram: rules name quantiles of "
                            "the latency histograms only (e.g. ttft_p95_seconds, "
                            "prefill_time_p95_seconds)")
    if rule.op not in RULE_OPS:
        problems.append(f"unknown op {rule.op!r}")
    if rule.aggregation not in AGGREGATIONS:
        problems.append(f"unknown aggregation {rule.aggregation!r}")
    if quantile and rule.aggregation != "last":
        problems.append("aggregation does not apply to a quantile signal: the quantile is "
                        "computed over `window` from the histogram")
    if quantile and rule.detector not in _QUANTILE_DETECTORS:
        problems.append(f"a quantile signal needs the threshold detector, not {rule.detector!r}")
    fleet_only = rule.detector.startswith("fleet:") or rule.signal in _FLEET_ONLY_SIGNALS
    if fleet_only and rule.scope != "fleet":
        problems.append(f"{rule.detector if rule.detector.startswith('fleet:') else rule.signal}"
                        " reads every node's samples: it needs scope = \"fleet\"")
    derived = rule.signal in DERIVED_INPUTS
    if derived and rule.detector == "threshold" and rule.aggregation != "last":
        problems.append(f"{rule.signal} is already a window figure: aggregation does not apply")
    if rule.detector in THRESHOLDED and rule.threshold is None:
        problems.append("threshold is required")
    problems.extend(_clear_problems(rule))
    if rule.detector == "falling" and counter_ratio_inputs(rule.signal) is None:
        ratios = ", ".join(s for s in DERIVED_INPUTS if counter_ratio_inputs(s) is not None)
        problems.append(f"the falling detector compares a ratio of two counters over two "
                        f"windows: {rule.signal!r} is not one ({ratios})")
    if rule.detector == "trend":
        if rule.limit is None:
            problems.append("a trend rule needs `limit` (the level whose crossing is forecast)")
        if rule.min_points < 3:
            problems.append("min_points must be at least 3 for a trend rule")
    unknown_detector = detector_problem(rule.detector)
    if unknown_detector is not None:
        problems.append(unknown_detector)
    for number, what in ((rule.threshold, "threshold"), (rule.clear, "clear"),
                         (rule.limit, "limit")):
        if number is not None and math.isnan(number):
            problems.append(f"{what} is NaN")
    if not problems:
        try:
            build_detector(rule)
        except ValueError as exc:
            problems.append(str(exc).removeprefix(f"rule {rule.name}: "))
    return problems


def _clear_problems(rule: RuleConfig) -> list[str]:
    """Hysteresis: ``clear`` lies on the side of the threshold where the alert resolves."""
    if rule.clear is None or rule.threshold is None:
        return []
    if rule.op in ("==", "!="):
        return [f"clear has no meaning with op {rule.op!r}"]
    if rule.op in (">", ">=") and not rule.clear <= rule.threshold:
        return [f"clear {rule.clear:g} must not be above threshold {rule.threshold:g} "
                f"for op {rule.op!r}"]
    if rule.op in ("<", "<=") and not rule.clear >= rule.threshold:
        return [f"clear {rule.clear:g} must not be below threshold {rule.threshold:g} "
                f"for op {rule.op!r}"]
    return []


def detector_problem(name: str) -> str | None:
    """Why ``name`` is no registered detector, or None when it is one (nothing imported)."""
    if name in DETECTORS:
        return None
    if not name.startswith(_COMPOSITE):
        return DETECTORS.unknown(name)
    known = sorted(n.removeprefix(_COMPOSITE) for n in DETECTORS if n.startswith(_COMPOSITE))
    return f"unknown composite {name.removeprefix(_COMPOSITE)!r} (known: {', '.join(known)})"


def validate_rules(rules: Sequence[RuleConfig]) -> list[str]:
    """One line per problem (``rule 'X': ...``) in the rules as they will run; [] when fine.

    Call it on ``effective_rules(config.rules)`` or on the defaults; a disabled rule (a
    stub that switches a default off) is skipped.
    """
    return [f"rule {rule.name!r}: {problem}" for rule in rules for problem in rule_problems(rule)]


# --- summaries ------------------------------------------------------------------------

# Labels some series of a signal carry beyond the catalogue's (collector/nvml.py, dcgm.py,
# sim.py: ECC errors by ``type``, process memory by ``pid``).
_EXTRA_LABELS: dict[str, tuple[str, ...]] = {
    "gpu_ecc_errors_total": ("type",),
    "gpu_process_memory_used_bytes": ("pid",),
}


def alert_label_names(rule: RuleConfig) -> tuple[str, ...]:
    """The labels an alert of ``rule`` carries (what the engine passes to the renderer).

    The series' labels (the node-wide spread has only ``node``; the drift tests group
    canaries per server and model), then the engine's ``node``, ``alertname`` and
    ``severity`` and the rule's own labels. Empty for an unknown signal.
    """
    resolved = resolve_rule_signal(rule.signal)
    if resolved is None:
        return ()
    stored = resolved[0]
    names = set(SIGNALS[stored].labels) | set(_EXTRA_LABELS.get(stored, ()))
    if rule.detector == "spread" or stored == "gpu_utilization_spread_ratio":
        names = {"node"}
    elif rule.detector in ("cusum", "ks"):
        names.discard("canary")
    names |= {"node", "alertname", "severity"} | {name for name, _ in rule.labels}
    return tuple(sorted(names))


_SAMPLE_VALUE = 0.5  # a Finding's value is a float; any float fits the same specs
_WIDE = re.compile(r"\d{4,}")


def summary_problem(rule: RuleConfig) -> str | None:
    """Why ``rule.summary`` cannot be rendered for its alerts, or None when it can.

    Renders the template as ``render_summary`` would, with a sample label value for
    each of ``alert_label_names`` and the rule's own numbers (a ``{threshold:.0%}`` on a
    rule without a threshold fails here as it would when the alert fires).
    """
    template = rule.summary
    if not template:
        return None
    shown = template if len(template) <= 60 else template[:60] + "..."
    try:
        parsed = [(name, spec) for _text, name, spec, _conv in string.Formatter().parse(template)
                  if name is not None]
    except ValueError as exc:
        return f"bad template {shown!r}: {exc}"
    labels = {name: f"<{name}>" for name in alert_label_names(rule)}
    fields = summary_fields(rule, _SAMPLE_VALUE, labels)
    for name, spec in parsed:
        if spec and _WIDE.search(spec):  # "{value:999999999}" would allocate a gigabyte
            return f"bad template {shown!r}: format spec {spec!r} is wider than 999"
        root = re.split(r"[.\[]", name, maxsplit=1)[0]
        if spec and root in fields and fields[root] is None:
            return f"{{{name}:{spec}}}: this rule sets no {root}, so there is nothing to format"
    try:
        template.format_map(fields)
    except KeyError as exc:
        return (f"{{{exc.args[0]}}} is not a field of this rule's alerts "
                f"(fields: {', '.join(fields)})")
    except (ValueError, TypeError, IndexError, AttributeError) as exc:
        return f"bad template {shown!r}: {exc}"
    return None
