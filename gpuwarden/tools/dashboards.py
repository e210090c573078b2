"""Grafana dashboards generated from the signal catalogue, committed as JSON.

Why generated: a dashboard written by hand in Grafana's editor drifts from the code the
day a signal is renamed, and nobody notices until an incident shows an empty panel.
Every metric a panel reads goes through :func:`metric` (the catalogue in
``signals.py``) or :data:`SELF_METRICS` (gpuwarden's own health families), and units
come from the catalogue, so a rename breaks ``gpuwarden dashboards export`` and the
test that regenerates ``dashboards/*.json`` instead of silently breaking a panel; the
end-to-end test then runs every query against a real Prometheus.

The panels are laid out with the small Grafana builder in ``tools/grafana.py``.
"""

from __future__ import annotations

from pathlib import Path

from gpuwarden.signals import SIGNALS, Kind
from gpuwarden.tools.grafana import Annotation, Dashboard, Panel, Row, Target, Variable, to_json

PREFIX = "gpuwarden_"

#: Catalogue unit -> Grafana unit id.
UNITS = {"ratio": "percentunit", "seconds": "s", "bytes": "bytes", "watts": "watt",
         "hertz": "hertz", "celsius": "celsius", "tokens": "short", "bits": "bits",
         "bytes_per_second": "Bps", "usd": "currencyUSD", "": "none"}

#: gpuwarden's own families (exposition/daemon/alerts/delivery): exported sample names.
SELF_METRICS = frozenset({
    "collector_success", "collector_duration_seconds", "collector_errors_total",
    "scrape_errors_total", "cycle_duration_seconds", "cycles_total", "samples_collected_total",
    "samples_written_total", "store_write_errors_total", "store_pending_samples",
    "store_dropped_samples_total", "build_info", "alerts", "rule_evaluation_seconds",
    "rule_evaluations_total", "rule_errors_total", "actions_total", "delivery_queue_length",
    "dead_letters", "process_resident_memory_bytes", "process_cpu_seconds_total",
    "cycles_skipped_total", "audit_queue_length", "audit_rows_dropped_total",
    "fleet_leader", "fleet_alerts",
})
#: Only a daemon in fleet mode (a PostgreSQL store: ``daemon/fleet.py``) exports these.
FLEET_SELF_METRICS = frozenset({"fleet_leader", "fleet_alerts"})

# SLO lines drawn on the panels; the same numbers as the default rules (detectors/defaults.py).
KV_NEAR_FULL = 0.90
TTFT_P95_SLO = 2.0
ITL_P95_SLO = 0.130
SPREAD_LIMIT = 0.15
QUALITY_FLOOR = 0.92
VRAM_HEADROOM_FLOOR = 0.15
MEMORY_FRACTION_CEILING = 0.85

GPU = 'node=~"$node", gpu=~"$gpu"'
NODE = 'node=~"$node"'
SRV = 'node=~"$node", server=~"$server", model=~"$model"'
INST = 'instance=~"$instance"'
P95 = ', quantile="0.95"'


def metric(signal: str, matchers: str = "") -> str:
    """The exported name of a catalogue signal, with optional matchers.

    Counters are exported under their full ``_total`` name, histograms as window
    quantiles under their own name (see ``api/exposition.py``). A name that is not in the
    catalogue raises ``KeyError``: that is the drift check.
    """
    if SIGNALS[signal].kind is Kind.HISTOGRAM and "quantile=" not in matchers:
        raise ValueError(f"{signal} is exported as window quantiles: add a quantile matcher")
    return f"{PREFIX}{signal}{{{matchers}}}" if matchers else PREFIX + signal


def selfm(name: str, matchers: str = "") -> str:
    """An exported self-metric, checked against :data:`SELF_METRICS`."""
    if name not in SELF_METRICS:
        raise KeyError(f"unknown gpuwarden self-metric {name!r}")
    return f"{PREFIX}{name}{{{matchers}}}" if matchers else PREFIX + name


def unit(signal: str) -> str:
    return UNITS[SIGNALS[signal].unit]


# --- template variables ----------------------------------------------------------------

V_NODE = Variable("node", "Node", f"label_values({selfm('build_info')}, node)")
V_GPU = Variable("gpu", "GPU", f"label_values({metric('gpu_up', NODE)}, gpu)")
V_SERVER = Variable("server", "Server", f"label_values({metric('server_up', NODE)}, server)")
V_MODEL = Variable("model", "Model", "label_values("
                   + metric("requests_running", 'node=~"$node", server=~"$server"') + ", model)")
V_INSTANCE = Variable("instance", "Instance",
                      f"label_values({selfm('build_info', NODE)}, instance)")


def _by_node(expr: str) -> str:
    """Attach ``node`` to a self-metric (which has only instance/job) via build_info."""
    return f"{expr} * on (instance) group_left (node) {selfm('build_info')}"


# --- the four dashboards ---------------------------------------------------------------


def fleet() -> Dashboard:
    util = metric("gpu_utilization_ratio", NODE)
    total, used = metric("gpu_memory_total_bytes", NODE), metric("gpu_memory_used_bytes", NODE)
    return Dashboard(
        "gpuwarden-fleet", "gpuwarden / Fleet",
        "Every node and GPU at a glance: where capacity is, which servers are near their "
        "KV-cache or latency limits, what is firing and what gpuwarden did about it.",
        (
            Row("GPUs"),
            Panel("GPU utilisation (node/gpu)", (Target(util, "{{node}}/{{gpu}}"),),
                  type="status-history", unit=unit("gpu_utilization_ratio"), min=0, max=1,
                  width=24, height=10, colour="continuous-BlYlRd",
                  description="One row per GPU, coloured by utilisation: idle GPUs and "
                              "stragglers stand out as cold stripes."),
            Panel("Mean GPU utilisation by node",
                  (Target(f"avg by (node) ({util})", "{{node}}"),),
                  unit=unit("gpu_utilization_ratio"), min=0, max=1, width=12,
                  description="Same expression as the recording rule "
                              "gpuwarden:gpu_utilization:avg_by_node."),
            Panel("Memory headroom (total - used)",
                  (Target(f"{total} - {used}", "{{node}}/{{gpu}}", instant=True),),
                  type="bargauge", unit=unit("gpu_memory_total_bytes"), min=0, width=12,
                  base="red", lines=((8 * 2**30, "orange"), (16 * 2**30, "green")),
                  description="Free device memory per GPU now: where another replica fits."),
            Panel("GPUs lost", (Target(f"sum by (node) (1 - {metric('gpu_up', NODE)})",
                                       "{{node}}"),),
                  type="stat", lines=((1, "red"),), width=6, height=6,
                  description="GPUs that stopped answering their driver (gpu_up == 0)."),
            Panel("Servers down", (Target(f"sum by (node) (1 - {metric('server_up', NODE)})",
                                          "{{node}}"),),
                  type="stat", lines=((1, "red"),), width=6, height=6,
                  description="Inference servers whose /metrics scrape failed."),
            Panel("Mean GPU utilisation, fleet",
                  (Target(f"avg({util})", "fleet"),), type="stat",
                  unit=unit("gpu_utilization_ratio"), min=0, max=1, width=12, height=6),
            Row("Inference servers"),
            Panel("KV-cache usage by server",
                  (Target(f"max by (node, server) ({metric('kv_cache_usage_ratio', SRV)})",
                          "{{node}}/{{server}}"),),
                  unit=unit("kv_cache_usage_ratio"), min=0, max=1,
                  lines=((KV_NEAR_FULL, "red"),), width=8,
                  description="Above 90 % the server starts preempting requests "
                              "(KVCacheNearFull)."),
            Panel("TTFT p95 by server",
                  (Target(f"max by (node, server) ({metric('ttft_seconds', SRV + P95)})",
                          "{{node}}/{{server}}"),),
                  unit=unit("ttft_seconds"), lines=((TTFT_P95_SLO, "red"),), width=8,
                  description="p95 time to first token over gpuwarden's 60 s window; "
                              "SLO line at 2 s (TTFTP95High)."),
            Panel("Inter-token latency p95 by server",
                  (Target(f"max by (node, server) ({metric('itl_seconds', SRV + P95)})",
                          "{{node}}/{{server}}"),),
                  unit=unit("itl_seconds"), lines=((ITL_P95_SLO, "red"),), width=8,
                  description="p95 per-token latency; SLO line at 130 ms "
                              "(TokenLatencyP95High)."),
            Row("Alerts and actions"),
            Panel("Firing alerts", (Target(
                "sum by (node, alertname) ("
                + _by_node(selfm("alerts", 'state="firing"')) + ")", "{{node}} {{alertname}}"),),
                  stack=True, lines=((1, "red"),), width=12,
                  description="Alert instances firing in gpuwarden's own rule engine "
                              "(gpuwarden_alerts), per node and rule."),
            Panel("Actions taken", (Target(
                f"sum by (node, action, result) (increase({selfm('actions_total')}"
                f"[$__rate_interval]) * on (instance) group_left (node) "
                f"{selfm('build_info')})", "{{node}} {{action}} {{result}}"),),
                  stack=True, width=12,
                  description="Remediation and notification calls per action and outcome "
                              "(ok, failed, suppressed by cooldown, ...)."),
            *_fleet_mode(),
        ),
        variables=(V_NODE, V_SERVER, V_MODEL),
    )


def _fleet_mode() -> tuple[Row | Panel, ...]:
    """Who leads, the fleet rules' alerts (the leader's; others export 0: max), silence."""
    return (
        Row("Fleet mode (shared PostgreSQL store)"),
        Panel("Fleet leader", (Target(f"max by (node) ({_by_node(selfm('fleet_leader'))})",
                                      "{{node}}"),), type="status-history", min=0, max=1,
              width=8, description="1 for the node evaluating the fleet rules (one at a time)."),
        Panel("Fleet alerts", (Target(f"max by (alertname, state) ({selfm('fleet_alerts')})",
                                      "{{alertname}} {{state}}"),),
              stack=True, lines=((1, "red"),), width=8,
              description="Fleet rule instances by state (not in gpuwarden_alerts)."),
        Panel("Silent nodes (NodeSilent firing)", (Target("max(" + selfm(
            "fleet_alerts", 'alertname="NodeSilent", state="firing"') + ")", "silent"),),
              type="stat", lines=((1, "red"),), width=8,
              description="No write for 3 intervals; `gpuwarden fleet status` names them."),
        Panel("Samples written per node", (Target("sum by (node) (" + _by_node(
            f"rate({selfm('samples_written_total')}[$__rate_interval])") + ")", "{{node}}"),),
              width=24, description="A node whose line drops to 0 or ends is silent."),
    )


def node() -> Dashboard:
    util = metric("gpu_utilization_ratio", GPU)
    avg2m = f"avg_over_time({util}[2m])"
    return Dashboard(
        "gpuwarden-node", "gpuwarden / Node",
        "One node's GPUs: load, memory, heat, power against the limit, clocks and "
        "throttling, hardware errors, and the utilisation spread that reveals a straggler.",
        (
            Panel("GPU utilisation", (Target(util, "{{node}} gpu {{gpu}}"),),
                  unit=unit("gpu_utilization_ratio"), min=0, max=1),
            Panel("Memory used of total", (
                Target(metric("gpu_memory_used_bytes", GPU), "used {{node}} gpu {{gpu}}"),
                Target(f"max by (node) ({metric('gpu_memory_total_bytes', GPU)})",
                       "total {{node}}")),
                  unit=unit("gpu_memory_used_bytes"), min=0),
            Panel("Temperature", (Target(metric("gpu_temperature_celsius", GPU),
                                         "{{node}} gpu {{gpu}}"),),
                  unit=unit("gpu_temperature_celsius"), lines=((83, "orange"), (90, "red")),
                  width=8, description="83 °C is where H100s start thermal slowdown."),
            Panel("Power vs limit", (
                Target(metric("gpu_power_watts", GPU), "{{node}} gpu {{gpu}}"),
                Target(f"max by (node) ({metric('gpu_power_limit_watts', GPU)})",
                       "limit {{node}}")),
                  unit=unit("gpu_power_watts"), min=0, width=8),
            Panel("SM clock", (Target(metric("gpu_sm_clock_hertz", GPU),
                                      "{{node}} gpu {{gpu}}"),),
                  unit=unit("gpu_sm_clock_hertz"), width=8,
                  description="A clock below its usual plateau with load on means throttling."),
            Panel("Throttle reasons (bitmask)", (Target(metric("gpu_throttle_reasons", GPU),
                                                        "{{node}} gpu {{gpu}}"),),
                  type="status-history", width=12, lines=((1, "orange"),),
                  description="NVML clock-event reasons; 0 = none. 32 = SW thermal, "
                              "64 = HW thermal, 4 = SW power cap, 128 = HW power brake."),
            Panel("XID and ECC errors", (
                Target(f"increase({metric('gpu_xid_errors_total', GPU)}[$__rate_interval])",
                       "XID {{node}} gpu {{gpu}}"),
                Target(f"increase({metric('gpu_ecc_errors_total', GPU)}[$__rate_interval])",
                       "ECC {{type}} {{node}} gpu {{gpu}}")),
                  lines=((1, "red"),), width=12,
                  description="New driver XID events and ECC errors; any XID is worth a look "
                              "(XIDError)."),
            Panel("Utilisation spread across the node's GPUs", (
                Target(f"max by (node) ({avg2m}) - min by (node) ({avg2m})",
                       "spread {{node}} (2m means)"),
                Target(metric("gpu_utilization_spread_ratio", NODE),
                       "spread {{node}} (gpuwarden)")),
                  unit=unit("gpu_utilization_spread_ratio"), min=0, max=1,
                  lines=((SPREAD_LIMIT, "red"),),
                  description="Max minus min of each GPU's 2-minute mean utilisation; above "
                              "15 % one GPU is lagging the rest (GPUUtilizationSpread)."),
            Panel("Straggler (least busy GPU, 2m mean)",
                  (Target(f"bottomk by (node) (1, {avg2m})", "{{node}} gpu {{gpu}}"),),
                  unit=unit("gpu_utilization_ratio"), min=0, max=1),
        ),
        variables=(V_NODE, V_GPU),
    )


def inference() -> Dashboard:
    kv = metric("kv_cache_usage_ratio", SRV)

    def quantiles(signal: str) -> tuple[Target, ...]:
        return tuple(Target(metric(signal, f'{SRV}, quantile="{q}"'), f"p{p} {{{{server}}}}")
                     for q, p in (("0.5", "50"), ("0.95", "95"), ("0.99", "99")))

    running = metric("requests_running", SRV)
    return Dashboard(
        "gpuwarden-inference", "gpuwarden / Inference server",
        "One or more inference servers: KV-cache pressure and its forecast, latency "
        "quantiles against the SLOs, queueing, preemptions, prefix-cache reuse, "
        "throughput and answer quality.",
        (
            Panel("KV-cache usage and 5-minute forecast", (
                Target(kv, "{{server}}"),
                Target(f"clamp(predict_linear({kv}[5m], 300), 0, 1.2)", "{{server}} in 5 min")),
                  unit=unit("kv_cache_usage_ratio"), min=0, max=1.2,
                  lines=((KV_NEAR_FULL, "orange"), (1.0, "red")),
                  description="Usage now and its linear trend 5 minutes ahead; the "
                              "forecast crossing 100 % is KVCacheSaturationSoon."),
            Panel("Requests running and waiting", (
                Target(running, "running {{server}}"),
                Target(metric("requests_waiting", SRV), "waiting {{server}}")),
                  description="A growing queue with flat running requests means the "
                              "server is out of KV cache or compute."),
            Panel("Time to first token", quantiles("ttft_seconds"), unit=unit("ttft_seconds"),
                  lines=((TTFT_P95_SLO, "red"),), width=12,
                  description="Window quantiles computed by gpuwarden from the server's "
                              "histogram (60 s); SLO line at 2 s on p95."),
            Panel("Inter-token latency", quantiles("itl_seconds"), unit=unit("itl_seconds"),
                  lines=((ITL_P95_SLO, "red"),), width=12,
                  description="Per output token; SLO line at 130 ms on p95."),
            Panel("End-to-end request latency", quantiles("e2e_latency_seconds"),
                  unit=unit("e2e_latency_seconds"), width=8),
            Panel("Preemptions per second", (
                Target(f"rate({metric('preemptions_total', SRV)}[$__rate_interval])",
                       "{{server}}"),),
                  width=8, description="Requests evicted from the KV cache and recomputed: "
                                       "rising preemptions precede latency blow-ups."),
            Panel("Generated tokens per second", (
                Target(metric("generation_tokens_per_second", SRV), "{{server}}"),),
                  width=8),
            Panel("Prefix-cache hit ratio", (
                Target(metric("prefix_cache_hit_ratio", SRV), "{{server}}"),),
                  unit=unit("prefix_cache_hit_ratio"), min=0, max=1,
                  description="Falling reuse means context is recomputed instead of served "
                              "from cache."),
            Panel("Answer quality (canary similarity)", (
                Target(metric("quality_similarity", SRV), "{{server}}"),),
                  unit=unit("quality_similarity"), min=0, max=1,
                  lines=((QUALITY_FLOOR, "red"),),
                  description="Similarity of canary answers to their references; below 0.92 "
                              "(QualityDrift) a rollback is due."),
        ),
        variables=(V_NODE, V_SERVER, V_MODEL),
        annotations=(Annotation(
            "Model changes",
            f"count by (node, server, model) ({running}) unless count by (node, server, model) "
            f"({running} offset 1m)",
            "{{server}} now serves {{model}}", "new model on {{node}}/{{server}}"),),
    )


def capacity() -> Dashboard:
    """Will this GPU hold its workload: memory headroom and budget, KV capacity, the
    configured memory fraction, where request time goes, how well the KV tiers and
    speculative decoding pay off, bandwidth and FLOP utilisation, and cost per token."""

    def p95(signal: str) -> str:
        return metric(signal, SRV + P95)

    return Dashboard(
        "gpuwarden-capacity", "gpuwarden / Capacity",
        "Before and between incidents: device-memory headroom against the 15 % practice "
        "and each GPU's memory budget, KV-cache capacity in tokens, the servers' configured "
        "memory fraction, the latency budget split into queue, prefill and decode, "
        "offload-tier reuse and speculative decoding acceptance, each GPU's peak memory "
        "bandwidth and how much of it the servers use, MFU, and cost per million tokens.",
        (
            Panel("Device-memory headroom", (
                Target(metric("gpu_memory_headroom_ratio", GPU), "{{node}} gpu {{gpu}}"),),
                  unit=unit("gpu_memory_headroom_ratio"), min=0, max=1, width=12,
                  lines=((VRAM_HEADROOM_FLOOR, "red"),),
                  description="Free over total device memory; below 15 % for 5 minutes is "
                              "VRAMHeadroomLow: long sequences and activation spikes have "
                              "no room left."),
            Panel("KV-cache capacity", (
                Target(metric("kv_cache_capacity_tokens", SRV), "{{server}}"),),
                  unit=unit("kv_cache_capacity_tokens"), min=0, width=12,
                  description="Tokens the server's KV cache holds (vLLM cache_config_info); "
                              "divide by a request's prompt + output length for the "
                              "sequences that fit."),
            Panel("Memory budget per GPU", (
                Target(metric("gpu_memory_budget_bytes", GPU),
                       "{{node}} gpu {{gpu}}: {{part}}"),),
                  unit=unit("gpu_memory_budget_bytes"), min=0, width=24, stack=True,
                  description="Each GPU's memory split into KV cache, the rest of the "
                              "inference servers' memory (weights, activations, CUDA "
                              "context), other processes and driver-reserved memory, and "
                              "free; the parts stack to the total. Select one GPU to read "
                              "its budget (several GPUs stack into their sum)."),
            Panel("Configured memory fraction", (
                Target(metric("server_gpu_memory_utilization_config", SRV), "{{server}}"),),
                  unit=unit("server_gpu_memory_utilization_config"), min=0, max=1, width=8,
                  lines=((MEMORY_FRACTION_CEILING, "orange"),),
                  description="vLLM's gpu_memory_utilization; above 0.85 "
                              "(GPUMemoryUtilizationConfigHigh) leaves too little room in "
                              "production."),
            Panel("KV-cache memory", (
                Target(metric("kv_cache_memory_bytes", SRV), "{{server}}"),),
                  unit=unit("kv_cache_memory_bytes"), min=0, width=8),
            Panel("Peak memory bandwidth", (
                Target(metric("gpu_memory_bandwidth_peak_bytes_per_second", GPU),
                       "{{node}} gpu {{gpu}}"),),
                  unit=unit("gpu_memory_bandwidth_peak_bytes_per_second"), min=0, width=8,
                  description="2 transfers per clock x maximum memory clock x bus width: "
                              "the interface's peak, the ceiling a bandwidth-bound decode "
                              "can reach."),
            Panel("Where request time goes (p95)", (
                Target(p95("queue_time_seconds"), "queue {{server}}"),
                Target(p95("prefill_time_seconds"), "prefill {{server}}"),
                Target(p95("decode_time_seconds"), "decode {{server}}")),
                  unit=unit("queue_time_seconds"), min=0, width=24,
                  description="The latency budget decomposed: a growing queue means too "
                              "few replicas, a growing prefill long prompts or lost prefix "
                              "reuse, a growing decode memory-bandwidth pressure."),
            Panel("KV offload-tier hit ratio", (
                Target(metric("kv_offload_hit_ratio", SRV), "{{server}}"),),
                  unit=unit("kv_offload_hit_ratio"), min=0, max=1, width=12,
                  description="Hits over queries of the offload (external) KV tier in the "
                              "window; only servers with a KV connector export it."),
            Panel("Speculative decoding acceptance", (
                Target(metric("spec_decode_acceptance_ratio", SRV), "{{server}}"),),
                  unit=unit("spec_decode_acceptance_ratio"), min=0, max=1, width=12,
                  description="Accepted over draft tokens in the window; speculation pays "
                              "only while the draft is accepted."),
            Panel("Memory bandwidth utilisation", (
                Target(metric("memory_bandwidth_utilization_ratio", SRV),
                       "{{server}} gpu {{gpu}}"),),
                  unit=unit("memory_bandwidth_utilization_ratio"), min=0, max=1, width=8,
                  description="The server's estimated bytes read + written per second over "
                              "the GPU's peak memory bandwidth (vLLM/SGLang "
                              "--enable-mfu-metrics estimates, not measured traffic). High "
                              "at small batch: decode is bandwidth-bound, more batching "
                              "will not help, more GPUs will."),
            Panel("Model FLOP utilisation (MFU)", (
                Target(metric("model_flops_utilization_ratio", SRV), "{{server}}"),),
                  unit=unit("model_flops_utilization_ratio"), min=0, max=1, width=8,
                  description="Estimated FLOP/s per GPU over the GPU's published dense "
                              "BF16 peak; absent for GPU models without a published peak. "
                              "Understates an FP8 deployment (its peak is twice BF16's)."),
            Panel("Cost per million generated tokens", (
                Target(metric("cost_per_million_tokens_usd", SRV), "{{server}}"),),
                  unit=unit("cost_per_million_tokens_usd"), min=0, width=8,
                  description="The server's share of its GPUs' hourly price ([cost] "
                              "gpu_hour_usd) over its generated tokens per second; none "
                              "while the server generates nothing."),
        ),
        variables=(V_NODE, V_GPU, V_SERVER, V_MODEL),
    )


def itself() -> Dashboard:
    return Dashboard(
        "gpuwarden-self", "gpuwarden / gpuwarden itself",
        "The watcher's own health: are its collectors succeeding and fast, is the cycle "
        "on time, is the store keeping up, are alerts being delivered.",
        (
            Panel("Collector success", (Target(selfm("collector_success", INST),
                                               "{{instance}} {{collector}}"),),
                  type="status-history", min=0, max=1, lines=((1, "green"),),
                  colour="thresholds", width=12,
                  description="1 = last run succeeded, 0 = failed or hung."),
            Panel("Collector duration", (Target(selfm("collector_duration_seconds", INST),
                                                "{{instance}} {{collector}}"),),
                  unit="s", width=12),
            Panel("Cycle time", (Target(selfm("cycle_duration_seconds", INST), "{{instance}}"),),
                  unit="s", width=8, lines=((1.0, "red"),),
                  description="Wall time of a collection cycle; at the interval (1 s by "
                              "default) cycles start to be skipped."),
            Panel("Cycles and samples per second", (
                Target(f"rate({selfm('cycles_total', INST)}[$__rate_interval])",
                       "cycles {{instance}}"),
                Target(f"rate({selfm('cycles_skipped_total', INST)}[$__rate_interval])",
                       "cycles skipped {{instance}}"),
                Target(f"rate({selfm('samples_written_total', INST)}[$__rate_interval])",
                       "samples written {{instance}}")), width=8,
                  description="Skipped: a cycle still running when the next was due "
                              "(overload); the loop never queues a backlog."),
            Panel("Scrape errors by reason", (
                Target(f"increase({selfm('scrape_errors_total', INST)}[$__rate_interval])",
                       "{{collector}} {{reason}}"),), width=8),
            Panel("Store: write errors and dropped samples", (
                Target(f"sum by (instance, reason) (increase("
                       f"{selfm('store_write_errors_total', INST)}[$__rate_interval]))",
                       "write errors {{instance}} {{reason}}"),
                Target(f"increase({selfm('store_dropped_samples_total', INST)}"
                       "[$__rate_interval])", "dropped {{instance}}")),
                  lines=((1, "red"),), width=8),
            Panel("Store: samples pending", (
                Target(selfm("store_pending_samples", INST), "{{instance}}"),),
                  width=8, description="Buffered in memory while the store is unwritable."),
            Panel("Resident memory", (
                Target(selfm("process_resident_memory_bytes", INST), "{{instance}}"),),
                  unit="bytes", width=8),
            Panel("Rule evaluation time and errors", (
                Target(selfm("rule_evaluation_seconds", INST), "evaluation {{instance}}"),
                Target(f"increase({selfm('rule_errors_total', INST)}[$__rate_interval])",
                       "errors {{rule}}")), unit="s", width=8),
            Panel("Delivery and audit queues", (
                Target(selfm("delivery_queue_length", INST), "delivery {{instance}}"),
                Target(selfm("audit_queue_length", INST), "audit rows {{instance}}"),
                Target(f"increase({selfm('audit_rows_dropped_total', INST)}"
                       "[$__rate_interval])", "audit rows dropped {{instance}}")), width=8,
                  description="Audit rows wait here while the database does not answer; "
                              "sending goes on."),
            Panel("Dead letters", (Target(selfm("dead_letters", INST), "{{instance}}"),),
                  type="stat", lines=((1, "red"),), width=8,
                  description="Notifications that could not be delivered; replay them with "
                              "`gpuwarden actions replay`."),
            Panel("Build", (Target(selfm("build_info", NODE), instant=True),),
                  type="table", width=24, height=5),
        ),
        variables=(V_NODE, V_INSTANCE),
    )


DASHBOARDS = {"gpuwarden-fleet.json": fleet, "gpuwarden-node.json": node,
              "gpuwarden-inference.json": inference, "gpuwarden-capacity.json": capacity,
              "gpuwarden-self.json": itself}


def all_dashboards() -> dict[str, Dashboard]:
    return {name: build() for name, build in DASHBOARDS.items()}


def export(out: Path) -> list[Path]:
    """Write every dashboard as ``<out>/<uid>.json``; returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, dash in all_dashboards().items():
        path = out / name
        path.write_text(to_json(dash), encoding="utf-8")
        written.append(path)
    return written
