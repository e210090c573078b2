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

Capacity comes from ``vllm:cache_config_info``, an info gauge (= 1) whose labels are
the engine's CacheConfig, one series per engine and without ``model_name`` (so the
table is ``one_model``: vLLM serves one model per process). Recorded in
``tests/fixtures/metrics/vllm-0.32-cpu-*.prom`` and, for the V0 engine,
``vllm_aibrix-docs-runtime-v0-engine.prom``.

* ``kv_cache_capacity_tokens``: the ``kv_cache_size_tokens`` label (0.32 has it; it is
  the engine's own count, right for hybrid models too), else ``num_gpu_blocks`` x
  ``block_size``, the older naming, which every version has had; summed over engines.
* ``kv_cache_memory_bytes``: the ``kv_cache_memory_bytes`` label, vLLM's KV size *per
  GPU* (so the max over engines, not a sum); absent where the label is (older
  versions): never worked out from other settings.
* ``server_gpu_memory_utilization_config``: the ``gpu_memory_utilization`` label.
* The offload tier is the KV connector's ``external_prefix_cache_*`` (tokens, like the
  local prefix cache); ``num_cpu_blocks`` is not read (V0's swap space, ``None`` in V1).
* ``estimated_*`` counters exist only with ``--enable-mfu-metrics`` (0.32's CPU build
  exports them at 0). They are vLLM's estimate *per GPU* of each engine, summed over
  data-parallel engines like every counter here.
* Spec decode: ``spec_decode_num_{draft,accepted}_tokens_total``, only when a draft
  method is configured.
"""

from __future__ import annotations

from gpuwarden.collector.servers.table import ServerMapping, info_label, signal_map

_CACHE = "vllm:cache_config_info"

MAPPING = ServerMapping(
    kind="vllm",
    metrics_hint="vLLM serves /metrics on its OpenAI API port",
    model_label="model_name",
    one_model=True,
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
        signal_map("kv_cache_capacity_tokens", info_label(_CACHE, "kv_cache_size_tokens"),
                   info_label(_CACHE, "num_gpu_blocks", "block_size")),
        signal_map("kv_cache_memory_bytes", info_label(_CACHE, "kv_cache_memory_bytes"),
                   agg="max"),
        signal_map("server_gpu_memory_utilization_config",
                   info_label(_CACHE, "gpu_memory_utilization"), agg="max"),
        signal_map("queue_time_seconds", "vllm:request_queue_time_seconds"),
        signal_map("prefill_time_seconds", "vllm:request_prefill_time_seconds"),
        signal_map("decode_time_seconds", "vllm:request_decode_time_seconds"),
        signal_map("prompt_length_tokens", "vllm:request_prompt_tokens"),
        signal_map("generation_length_tokens", "vllm:request_generation_tokens"),
        signal_map("kv_offload_queries_total", "vllm:external_prefix_cache_queries_total"),
        signal_map("kv_offload_hits_total", "vllm:external_prefix_cache_hits_total"),
        signal_map("spec_decode_draft_tokens_total", "vllm:spec_decode_num_draft_tokens_total"),
        signal_map("spec_decode_accepted_tokens_total",
                   "vllm:spec_decode_num_accepted_tokens_total"),
        signal_map("estimated_flops_total", "vllm:estimated_flops_per_gpu_total"),
        signal_map("estimated_memory_read_bytes_total",
                   "vllm:estimated_read_bytes_per_gpu_total"),
        signal_map("estimated_memory_write_bytes_total",
                   "vllm:estimated_write_bytes_per_gpu_total"),
    ),
)
