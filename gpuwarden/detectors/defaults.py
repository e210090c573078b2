"""The default rules (README, "Rules and alerts"), how config rules merge with them, summaries.

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
(``detectors/validate.py``) renders each template once with sample values for exactly
the fields ``render_summary`` fills (``summary_fields``), so a broken one is a config
error. At run time a template that still does not fit (a label a series lacks) falls
back to the plain text (``KVCacheNearFull: value 0.93 > 0.9``): a summary must never
cost an alert.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from gpuwarden.detectors import Finding
from gpuwarden.detectors.drift_rules import default_drift_rules
from gpuwarden.detectors.fleet_rules import DEFAULT_FLEET_RULE_NAMES
from gpuwarden.detectors.rule import RuleConfig

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
        # An early warning, so no `for` (it would spend the warning's lead); instead it
        # keeps firing for a minute after the forecast last held: one rise, one page.
        # The forecast comes and goes where the fit sits at a guard's margin
        # (detectors/trend.py): a young ramp after a jump, a forecast near the 5 min
        # horizon, a full cache whose noisy samples reach the limit only now and then.
        # Without the hold one rise paged 2, 8 and 43 times (tests/incidents/traces/
        # kv-jump-then-ramp, kv-ramp-to-saturation, kv-full-noisy).
        name="KVCacheSaturationSoon", signal="kv_cache_usage_ratio", detector="trend",
        limit=1.0, horizon=300.0, window=30.0, min_points=10, keep_firing_for=60.0,
        severity="warning", actions=NOTIFY,
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
        # Memory is planned as weights + KV cache + activations + 15 % of the device kept
        # free; below that, a long prompt, an activation peak or a second process ends in
        # an out-of-memory error. Five minutes: a passing allocation is not the budget.
        name="VRAMHeadroomLow", signal="gpu_memory_headroom_ratio", op="<", threshold=0.15,
        clear=0.17, for_=300.0, severity="warning", actions=NOTIFY,
        summary="VRAM headroom {value:.0%} on GPU {gpu} ({node}) < {threshold:.0%}",
        annotations=(("description",
                      "Less than 15 % of this GPU's memory is free. Capacity plans keep 15 % "
                      "of device memory unallocated on top of weights, KV cache and "
                      "activations, so that long sequences, activation spikes and other "
                      "processes have room; without it the next peak is an out-of-memory "
                      "error."),),
    ),
    RuleConfig(
        # A configuration, not an incident: info, and no `for` (the value only changes
        # when the server restarts with other flags).
        name="GPUMemoryUtilizationConfigHigh", signal="server_gpu_memory_utilization_config",
        op=">", threshold=0.85, severity="info", actions=NOTIFY,
        summary="{server} ({model}) is configured to take {value:.0%} of GPU memory "
                "> {threshold:.0%}",
        annotations=(("description",
                      "The server reserves more than 85 % of device memory up front (vLLM "
                      "--gpu-memory-utilization). Above 0.85 too little is left outside its "
                      "budget for long sequences and activation spikes; 0.85 is the ceiling "
                      "production deployments commonly keep to."),),
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
    RuleConfig(
        # Ten-minute windows: acceptance moves with the traffic mix from minute to minute;
        # a draft that stopped matching the target shows over several.
        name="SpecDecodeAcceptanceFalling", signal="spec_decode_acceptance_ratio",
        detector="falling", op=">", threshold=0.2, window=600.0, for_=60.0,
        every=WINDOW_EVERY, severity="info", actions=NOTIFY,
        summary="Speculative-decoding acceptance on {server} ({model}) fell by {value:.0%} "
                "against the previous {window:.0f} s",
    ),
    RuleConfig(
        # The capacity reads an hour of length histograms, past the store's memory, so it
        # is evaluated once a minute; two evaluations in a row must agree.
        name="KVCapacityTooSmall", signal="kv_cache_capacity_sequences",
        detector="composite:KVCapacityTooSmall", op="<", threshold=1.0, window=600.0,
        for_=60.0, every=60.0, severity="warning", actions=NOTIFY,
        summary="KV cache of {server} ({model}) holds {value:.0%} of its peak of running + "
                "waiting requests at p95 length: preemptions are coming",
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
    # Fleet rules (``fleet_rules.py``) run in the fleet's leader, not in each node.
    out.extend(r for r in user.values() if r.enabled and r.scope == "node"
               and r.name not in DEFAULT_FLEET_RULE_NAMES)
    return tuple(out)


# --- summaries ------------------------------------------------------------------------


def plain_text(rule: RuleConfig, value: float) -> str:
    if rule.threshold is None:
        return f"{rule.name}: value {value:.4g}"
    return f"{rule.name}: value {value:.4g} {rule.op} {rule.threshold:g}"


def summary_fields(rule: RuleConfig, value: float, labels: Mapping[str, str]) -> dict[str, Any]:
    """What a summary template can name: the alert's labels, then the rule's numbers.

    The one definition for both the renderer and the config check
    (``validate.summary_problem``).
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
