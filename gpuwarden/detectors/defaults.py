"""The default rules (README, "Rules and alerts"), how config rules merge with them, checks.

Why defaults live in code and not in a shipped TOML: a node with no ``[[rules]]`` must
still watch the field's known failure modes (KV cache full, p95 latency over SLO, lost
GPU), and an upgrade that improves a default reaches everyone who did not override it.
``effective_rules`` is the one place that decides what is active:

* a ``[[rules]]`` entry with a default's name replaces that default entirely (no field
  merging: what the operator wrote is what runs);
* ``enabled = false`` (with only a name) switches a default off;
* entries with new names are added after the defaults, in config order.

Summaries are ``str.format_map`` templates over the alert's labels plus ``value``,
``threshold``, ``clear``, ``limit``, ``horizon``, ``window`` and ``rule``; e.g.
``"KV cache {value:.0%} on {server} ({model}) > {threshold:.0%}"``. The config check
renders each template once with sample values for exactly the fields ``render_summary``
fills (``summary_fields``; labels from ``alert_label_names``), so a broken one is a config
error (``summary_problem``). At run time a template that still does not fit (a label a
series lacks) falls back to the plain text (``KVCacheNearFull: value 0.93 > 0.9``): a
summary must never cost an alert.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from gpuwarden.detectors import Finding, build_detector
from gpuwarden.detectors.drift_rules import default_drift_rules
from gpuwarden.detectors.rule import AGGREGATIONS, RULE_OPS, RuleConfig
from gpuwarden.signals import SIGNALS, Kind, resolve_rule_signal

NOTIFY = ("notify",)
# Rules over minute-long windows of histograms and rates are evaluated every 5 s, not
# every cycle: their value cannot move much in a second, their `for` is 30-60 s, and
# they are the costly ones (PromQL-exact quantiles per server and model).
WINDOW_EVERY = 5.0

DEFAULT_RULES: tuple[RuleConfig, ...] = (
    RuleConfig(
        name="KVCacheNearFull", signal="kv_cache_usage_ratio", op=">", threshold=0.90,
        clear=0.85, for_=30.0, severity="warning", actions=NOTIFY,
        summary="KV cache {value:.0%} on {server} ({model}) > {threshold:.0%}",
    ),
    RuleConfig(
        name="KVCacheSaturationSoon", signal="kv_cache_usage_ratio", detector="trend",
        limit=1.0, horizon=300.0, window=30.0, min_points=10, severity="warning",
        actions=NOTIFY,
        summary="KV cache on {server} ({model}) forecast full in {value:.0f} s",
    ),
    RuleConfig(
        name="TokenLatencyP95High", signal="itl_p95_seconds", op=">", threshold=0.130,
        clear=0.120, window=60.0, for_=30.0, every=WINDOW_EVERY, severity="critical",
        actions=("warm-restart",),
        summary="p95 inter-token latency {value:.3f} s on {server} ({model}) > {threshold:g} s",
    ),
    RuleConfig(
        name="TTFTP95High", signal="ttft_p95_seconds", op=">", threshold=2.0, clear=1.5,
        window=60.0, for_=60.0, every=WINDOW_EVERY, severity="warning", actions=NOTIFY,
        summary="p95 time to first token {value:.2f} s on {server} ({model}) > {threshold:g} s",
    ),
    RuleConfig(
        name="GPUUtilizationSpread", signal="gpu_utilization_ratio", detector="spread",
        op=">", threshold=0.15, clear=0.10, window=60.0, for_=120.0, severity="warning",
        actions=NOTIFY,
        summary="GPU utilisation spread {value:.0%} on {node} > {threshold:.0%}",
    ),
    RuleConfig(
        # Canaries run every minute: the window only bounds the lookback so that the
        # latest canary result (and its spacing, for staleness) is in view.
        name="QualityDrift", signal="quality_similarity", op="<", threshold=0.92,
        clear=0.94, window=300.0, severity="critical", actions=("checkpoint-rollback",),
        summary="Output similarity {value:.3f} on {server} ({model}) < {threshold:g}",
    ),
    RuleConfig(
        name="GPULost", signal="gpu_up", op="==", threshold=0.0, severity="critical",
        actions=NOTIFY, summary="GPU {gpu} ({uuid}) on {node} is lost",
    ),
    RuleConfig(
        name="XIDError", signal="gpu_xid_errors_total", detector="increase", op=">",
        threshold=0.0, window=300.0, severity="warning", actions=NOTIFY,
        summary="{value:.0f} new XID error(s) on GPU {gpu} ({node}) in {window:.0f} s",
    ),
    RuleConfig(
        name="ServerDown", signal="server_up", op="==", threshold=0.0, for_=30.0,
        severity="critical", actions=NOTIFY,
        summary="Inference server {server} ({kind}) on {node} is not answering /metrics",
    ),
    RuleConfig(
        name="KVCacheBottleneck", signal="kv_cache_usage_ratio",
        detector="composite:KVCacheBottleneck", op="<", threshold=0.5, window=60.0,
        for_=30.0, every=WINDOW_EVERY, severity="warning", actions=NOTIFY,
        summary="{server} ({model}): GPUs busy, KV cache full, tokens/s down to "
                "{value:.0%} of the previous minute",
    ),
    RuleConfig(
        name="PreemptionsRising", signal="preemptions_total",
        detector="composite:PreemptionsRising", op=">", threshold=0.1, window=120.0,
        for_=60.0, severity="warning", actions=NOTIFY,
        summary="{value:.2f} preemptions/s on {server} ({model})",
    ),
    RuleConfig(
        name="PrefixCacheHitFalling", signal="prefix_cache_hit_ratio",
        detector="composite:PrefixCacheHitFalling", op=">", threshold=0.2, window=300.0,
        for_=60.0, every=WINDOW_EVERY, severity="info", actions=NOTIFY,
        summary="Prefix-cache hit ratio on {server} ({model}) fell by {value:.0%}",
    ),
    RuleConfig(
        name="QueueGrowing", signal="requests_waiting", detector="composite:QueueGrowing",
        op=">", threshold=5.0, window=60.0, for_=30.0, severity="warning", actions=NOTIFY,
        summary="Queue on {server} ({model}) grew by {value:.0f} requests with a flat batch",
    ),
    # Sequential drift tests over the quality canaries (detectors/drift.py): they catch
    # a small sustained drop (0.97 -> 0.94) the 0.92 floor never sees. Their windows span
    # hours of once-a-minute canary scores, so they are evaluated once a minute.
    *(replace(rule, every=60.0) for rule in default_drift_rules()),
)

DEFAULT_RULE_NAMES = tuple(r.name for r in DEFAULT_RULES)


def effective_rules(config_rules: Iterable[RuleConfig]) -> tuple[RuleConfig, ...]:
    """The active rules: defaults, replaced/disabled by name, plus the config's new ones."""
    user = {r.name: r for r in config_rules}
    out: list[RuleConfig] = []
    for default in DEFAULT_RULES:
        rule = user.pop(default.name, default)
        if rule.enabled:
            out.append(rule)
    out.extend(r for r in user.values() if r.enabled)
    return tuple(out)


# --- summaries ------------------------------------------------------------------------


def plain_text(rule: RuleConfig, value: float) -> str:
    if rule.threshold is None:
        return f"{rule.name}: value {value:.4g}"
    return f"{rule.name}: value {value:.4g} {rule.op} {rule.threshold:g}"


def summary_fields(rule: RuleConfig, value: float, labels: Mapping[str, str]) -> dict[str, Any]:
    """What a summary template can name: the alert's labels, then the rule's numbers.

    The one definition for both the renderer and the config check (``summary_problem``).
    """
    fields: dict[str, Any] = dict(labels)
    fields.update(value=value, threshold=rule.threshold, clear=rule.clear, limit=rule.limit,
                  horizon=rule.horizon, window=rule.window, rule=rule.name)
    return fields


def render_summary(rule: RuleConfig, finding: Finding, labels: Mapping[str, str]) -> str:
    """The rule's summary template filled in; plain text if it cannot be (never raises)."""
    if not rule.summary:
        return plain_text(rule, finding.value)
    try:
        return rule.summary.format_map(summary_fields(rule, finding.value, labels))
    except Exception:  # KeyError, ValueError, TypeError, IndexError, AttributeError...
        return plain_text(rule, finding.value)


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


# --- validation -------------------------------------------------------------------------

_THRESHOLDED = ("threshold", "quantile")
_DERIVED = ("generation_tokens_per_second", "prefix_cache_hit_ratio",
            "gpu_utilization_spread_ratio")


def _rule_problems(rule: RuleConfig) -> list[str]:
    problems: list[str] = []
    resolved = resolve_rule_signal(rule.signal)
    quantile = resolved is not None and resolved[1] is not None
    if resolved is None:
        problems.append(f"unknown signal {rule.signal!r}")
    elif not quantile and SIGNALS[rule.signal].kind is Kind.HISTOGRAM:
        problems.append(f"signal {rule.signal!r} is a histogram: name a quantile, e.g. "
                        f"{rule.signal.removesuffix('_seconds')}_p95_seconds")
    if rule.op not in RULE_OPS:
        problems.append(f"unknown op {rule.op!r}")
    if rule.aggregation not in AGGREGATIONS:
        problems.append(f"unknown aggregation {rule.aggregation!r}")
    if quantile and rule.aggregation != "last":
        problems.append("aggregation does not apply to a quantile signal: the quantile is "
                        "computed over `window` from the histogram")
    if quantile and rule.detector not in _THRESHOLDED:
        problems.append(f"a quantile signal needs the threshold detector, not {rule.detector!r}")
    if rule.signal in _DERIVED and rule.detector == "threshold" and rule.aggregation != "last":
        problems.append(f"{rule.signal} is already a window figure: aggregation does not apply")
    if rule.detector in _THRESHOLDED and rule.threshold is None:
        problems.append("threshold is required")
    if rule.clear is not None and rule.threshold is not None:
        if rule.op in ("==", "!="):
            problems.append(f"clear has no meaning with op {rule.op!r}")
        elif rule.op in (">", ">=") and not rule.clear <= rule.threshold:
            problems.append(f"clear {rule.clear:g} must not be above threshold "
                            f"{rule.threshold:g} for op {rule.op!r}")
        elif rule.op in ("<", "<=") and not rule.clear >= rule.threshold:
            problems.append(f"clear {rule.clear:g} must not be below threshold "
                            f"{rule.threshold:g} for op {rule.op!r}")
    if rule.detector == "trend":
        if rule.limit is None:
            problems.append("a trend rule needs `limit` (the level whose crossing is forecast)")
        if rule.min_points < 3:
            problems.append("min_points must be at least 3 for a trend rule")
    if rule.detector.startswith("composite:"):
        from gpuwarden.detectors.composite import COMPOSITES

        name = rule.detector.partition(":")[2]
        if name not in COMPOSITES:
            problems.append(f"unknown composite {name!r} (known: {', '.join(sorted(COMPOSITES))})")
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


def validate_rules(rules: Sequence[RuleConfig]) -> list[str]:
    """One line per problem (``rule 'X': ...``) in the rules as they will run; [] when fine.

    Call it on ``effective_rules(config.rules)`` (or on the config's own rules: a
    disabled stub is skipped). Checks what the config parser cannot know: detector
    names, which fields each detector needs, hysteresis on the right side.
    """
    out: list[str] = []
    for rule in rules:
        if not rule.enabled:
            continue
        out.extend(f"rule {rule.name!r}: {p}" for p in _rule_problems(rule))
    return out
