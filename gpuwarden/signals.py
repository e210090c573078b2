"""The canonical signal catalogue: one vocabulary for every source.

Collectors normalise every source into these names (base units, ratios in 0..1);
the exposition exports them prefixed ``gpuwarden_``; rules refer to them by name;
dashboards are generated from this table. Server-specific names never leave the
per-kind mapping tables in ``collector/servers/``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    GAUGE = "gauge"
    COUNTER = "counter"
    HISTOGRAM = "histogram"  # stored as cumulative <name>_bucket{le}, _count, _sum


GPU_LABELS = ("node", "gpu", "uuid", "model")
SERVER_LABELS = ("node", "server", "model")


@dataclass(frozen=True, slots=True)
class Signal:
    name: str
    kind: Kind
    unit: str
    help: str
    labels: tuple[str, ...]


def _gpu(name: str, kind: Kind, unit: str, help_: str) -> Signal:
    return Signal(name, kind, unit, help_, GPU_LABELS)


def _srv(name: str, kind: Kind, unit: str, help_: str) -> Signal:
    return Signal(name, kind, unit, help_, SERVER_LABELS)


G, C, H = Kind.GAUGE, Kind.COUNTER, Kind.HISTOGRAM

SIGNALS: dict[str, Signal] = {
    s.name: s
    for s in (
        _gpu("gpu_up", G, "", "1 while the GPU answers its driver, 0 when it is lost"),
        _gpu("gpu_utilization_ratio", G, "ratio", "Fraction of time a kernel ran on the GPU"),
        _gpu("gpu_memory_used_bytes", G, "bytes", "Device memory in use"),
        _gpu("gpu_memory_total_bytes", G, "bytes", "Device memory installed"),
        _gpu("gpu_temperature_celsius", G, "celsius", "GPU core temperature"),
        _gpu("gpu_power_watts", G, "watts", "Board power draw"),
        _gpu("gpu_power_limit_watts", G, "watts", "Enforced board power limit"),
        _gpu("gpu_sm_clock_hertz", G, "hertz", "Streaming-multiprocessor clock"),
        _gpu("gpu_memory_clock_hertz", G, "hertz", "Memory clock"),
        _gpu("gpu_xid_errors_total", C, "", "XID errors reported by the driver"),
        _gpu("gpu_ecc_errors_total", C, "", "ECC errors (label type: corrected/uncorrected)"),
        _gpu("gpu_throttle_reasons", G, "", "Bitmask of active clock-event (throttle) reasons"),
        _gpu("gpu_process_memory_used_bytes", G, "bytes", "Device memory used per compute process"),
        _gpu("gpu_memory_headroom_ratio", G, "ratio", "Free over total device memory"),
        _gpu("gpu_memory_bus_width_bits", G, "bits", "Width of the memory bus"),
        _gpu("gpu_memory_clock_max_hertz", G, "hertz", "Maximum memory clock"),
        _gpu("gpu_memory_bandwidth_peak_bytes_per_second", G, "bytes_per_second",
             "Peak memory bandwidth: 2 transfers per clock x max memory clock x bus width / 8"),
        Signal("gpu_memory_budget_bytes", G, "bytes",
               "The GPU's memory split by part: kv_cache, server_other (weights, activations, "
               "CUDA context of the inference servers' processes), other_processes (other "
               "processes and driver-reserved memory), free; the parts sum to the total",
               (*GPU_LABELS, "part")),
        _gpu("gpu_cost_per_hour_usd", G, "usd",
             "What one hour of this GPU costs, from the config's [cost] gpu_hour_usd"),
        Signal("server_gpu_info", G, "",
               "1 for each GPU an inference server's processes use (NVML processes of the "
               "server, or the server's configured gpus)", ("node", "server", "gpu")),
        Signal(
            "gpu_utilization_spread_ratio",
            G,
            "ratio",
            "Max minus min of mean GPU utilisation across the node's GPUs over the window",
            ("node",),
        ),
        Signal("server_up", G, "", "1 when the server's /metrics scrape succeeded",
               ("node", "server", "kind")),
        _srv("kv_cache_usage_ratio", G, "ratio", "Fraction of KV-cache blocks in use"),
        _srv("ttft_seconds", H, "seconds", "Time to first token"),
        _srv("itl_seconds", H, "seconds", "Inter-token (per output token) latency"),
        _srv("e2e_latency_seconds", H, "seconds", "End-to-end request latency"),
        _srv("requests_running", G, "", "Requests being decoded"),
        _srv("requests_waiting", G, "", "Requests queued"),
        _srv("preemptions_total", C, "", "Requests preempted (KV cache evicted)"),
        _srv("prompt_tokens_total", C, "", "Prefill tokens processed"),
        _srv("generation_tokens_total", C, "", "Tokens generated"),
        _srv("prefix_cache_queries_total", C, "", "Tokens looked up in the prefix cache"),
        _srv("prefix_cache_hits_total", C, "", "Tokens found in the prefix cache"),
        _srv("prefix_cache_hit_ratio", G, "ratio", "Prefix-cache hits over queries in the window"),
        _srv("generation_tokens_per_second", G, "", "Generated tokens per second over the window"),
        _srv("kv_cache_capacity_tokens", G, "tokens", "Tokens the KV cache holds"),
        _srv("kv_cache_capacity_sequences", G, "",
             "Sequences the KV cache holds at the p95 prompt + p95 generation length of the "
             "last hour"),
        _srv("kv_cache_memory_bytes", G, "bytes", "Device memory the server gave its KV cache"),
        _srv("server_gpu_memory_utilization_config", G, "ratio",
             "The server's configured fraction of device memory (vLLM gpu_memory_utilization)"),
        _srv("queue_time_seconds", H, "seconds", "Time a request waited before it was scheduled"),
        _srv("prefill_time_seconds", H, "seconds", "Time a request spent in prefill"),
        _srv("decode_time_seconds", H, "seconds", "Time a request spent in decode"),
        _srv("prompt_length_tokens", H, "tokens", "Prompt tokens per finished request"),
        _srv("generation_length_tokens", H, "tokens", "Generated tokens per finished request"),
        _srv("kv_offload_queries_total", C, "", "Tokens looked up in the offload (external) tier"),
        _srv("kv_offload_hits_total", C, "", "Tokens found in the offload (external) KV tier"),
        _srv("kv_offload_hit_ratio", G, "ratio", "Offload-tier hits over queries in the window"),
        _srv("spec_decode_draft_tokens_total", C, "", "Tokens proposed by the speculative draft"),
        _srv("spec_decode_accepted_tokens_total", C, "", "Draft tokens the target model accepted"),
        _srv("spec_decode_acceptance_ratio", G, "ratio",
             "Accepted over draft tokens of speculative decoding in the window"),
        _srv("estimated_flops_total", C, "", "Floating-point operations the server estimates"),
        _srv("estimated_memory_read_bytes_total", C, "bytes",
             "Device-memory bytes the server estimates it read"),
        _srv("estimated_memory_write_bytes_total", C, "bytes",
             "Device-memory bytes the server estimates it wrote"),
        Signal("memory_bandwidth_utilization_ratio", G, "ratio",
               "The server's estimated device-memory bytes read + written per second over "
               "the GPU's peak memory bandwidth (gpu label: the GPU, where known)",
               (*SERVER_LABELS, "gpu")),
        _srv("model_flops_utilization_ratio", G, "ratio",
             "The server's estimated FLOP/s per GPU over its GPUs' peak dense BF16 FLOP/s"),
        _srv("cost_per_million_tokens_usd", G, "usd",
             "GPU cost of a million generated tokens at the window's generation rate"),
        _srv("quality_similarity", G, "ratio", "Mean similarity of canary answers to references"),
        Signal("quality_canary_similarity", G, "ratio",
               "Similarity of one canary's answer to its reference (one sample per answer)",
               (*SERVER_LABELS, "canary")),
        Signal("quality_answer_length", G, "",
               "Length in characters of one canary's answer (one sample per answer)",
               (*SERVER_LABELS, "canary")),
        Signal("node_silence_intervals", G, "",
               "Fleet mode: how many of its own intervals ago a running node last wrote "
               "to the shared store (read from its nodes row by the fleet's leader, never "
               "collected)", ("node",)),
    )
}

#: Derived signals (computed over a window, never stored), and the stored signals each is
#: computed from (a histogram by its ``_bucket`` series; ``promql/derived.py``); a rule
#: may name them like stored ones.
DERIVED_INPUTS: dict[str, tuple[str, ...]] = {
    "generation_tokens_per_second": ("generation_tokens_total",),
    "prefix_cache_hit_ratio": ("prefix_cache_hits_total", "prefix_cache_queries_total"),
    "gpu_utilization_spread_ratio": ("gpu_utilization_ratio",),
    "kv_offload_hit_ratio": ("kv_offload_hits_total", "kv_offload_queries_total"),
    "spec_decode_acceptance_ratio": (
        "spec_decode_accepted_tokens_total", "spec_decode_draft_tokens_total"),
    "kv_cache_capacity_sequences": (
        "kv_cache_capacity_tokens", "prompt_length_tokens_bucket",
        "generation_length_tokens_bucket"),
    "memory_bandwidth_utilization_ratio": (
        "estimated_memory_read_bytes_total", "estimated_memory_write_bytes_total",
        "server_gpu_info", "gpu_memory_bandwidth_peak_bytes_per_second"),
    "model_flops_utilization_ratio": (
        "estimated_flops_total", "server_gpu_info", "gpu_memory_total_bytes"),
    "cost_per_million_tokens_usd": (
        "generation_tokens_total", "server_gpu_info", "gpu_cost_per_hour_usd"),
}

QUANTILE_SIGNAL = re.compile(
    r"^(?P<base>ttft|itl|e2e_latency|queue_time|prefill_time|decode_time)"
    r"_p(?P<q>50|90|95|99)_seconds$"
)


def resolve_rule_signal(name: str) -> tuple[str, float | None] | None:
    """Map a rule's signal name to (stored signal, quantile or None); None if unknown.

    ``itl_p95_seconds`` names the 0.95 quantile of the ``itl_seconds`` histogram.
    """
    m = QUANTILE_SIGNAL.match(name)
    if m:
        return f"{m['base']}_seconds", int(m["q"]) / 100
    if name in SIGNALS:
        return name, None
    return None
