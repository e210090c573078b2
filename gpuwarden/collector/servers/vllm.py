"""vLLM (``vllm:`` prefix, ``/metrics`` on the OpenAI API port).

Sources: vLLM 0.33 ``v1/metrics/loggers.py`` and the release wheels
diffed back to 0.9. Every V1 engine metric carries ``model_name`` and ``engine``
(the data-parallel engine index); the machinery sums over ``engine`` and takes the
max for KV usage, as the catalogue recommends (vllm#18053, vllm#21257).

Renames, newest first in each signal map (the first spelling present wins, so 0.9.2-0.11,
which export both, are not double-counted):

* ``kv_cache_usage_perc`` ← ``gpu_cache_usage_perc`` (≤0.11). Despite "perc", both are
  a fraction 0..1 ("1 means 100 percent usage"), so no unit conversion.
* ``prefix_cache_{queries,hits}_total`` ← ``gpu_prefix_cache_{queries,hits}_total``
  (≤0.11; counted blocks instead of tokens in ~0.8, which leaves the hit ratio intact).
* ``inter_token_latency_seconds`` ← ``time_per_output_token_seconds`` (≤0.14; the old
  name was the per-step ITL). ``request_time_per_output_token_seconds`` is a per-request
  mean, a different quantity, and is deliberately not an alias.

Not mapped: V0's ``gpu_prefix_cache_hit_rate`` gauge (a ratio with no counters behind
it cannot feed the window hit ratio), and the removed throughput gauges.
"""

from __future__ import annotations

from gpuwarden.collector.servers.base import ServerMapping, signal_map

MAPPING = ServerMapping(
    kind="vllm",
    metrics_hint="vLLM serves /metrics on its OpenAI API port",
    model_label="model_name",
    signal_maps=(
        signal_map("kv_cache_usage_ratio", "vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc",
                   agg="max"),
        signal_map("requests_running", "vllm:num_requests_running"),
        signal_map("requests_waiting", "vllm:num_requests_waiting"),
        signal_map("preemptions_total", "vllm:num_preemptions_total"),
        signal_map("prompt_tokens_total", "vllm:prompt_tokens_total"),
        signal_map("generation_tokens_total", "vllm:generation_tokens_total"),
        signal_map("prefix_cache_queries_total", "vllm:prefix_cache_queries_total",
                   "vllm:gpu_prefix_cache_queries_total"),
        signal_map("prefix_cache_hits_total", "vllm:prefix_cache_hits_total",
                   "vllm:gpu_prefix_cache_hits_total"),
        signal_map("ttft_seconds", "vllm:time_to_first_token_seconds"),
        signal_map("itl_seconds", "vllm:inter_token_latency_seconds",
                   "vllm:time_per_output_token_seconds"),
        signal_map("e2e_latency_seconds", "vllm:e2e_request_latency_seconds"),
    ),
)
