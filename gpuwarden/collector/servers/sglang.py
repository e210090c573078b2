"""SGLang (``sglang:`` prefix; ``/metrics`` only with ``--enable-metrics``).

Sources: sglang 0.5.23 ``observability/metrics_collector.py``,
0.4.3/0.4.10/0.5.5 wheels, the production-metrics doc sample.

* KV occupancy is ``sglang:token_usage``, already a fraction 0..1 of the KV token pool
  (there is no ``gpu_cache_usage_perc``; sglang#20158 closed it as redundant).
* Preemption is called *retraction* in SGLang; only the 0.5.x cumulative counter
  ``num_retracted_requests_total`` is a counter. The ``num_retracted_reqs`` gauge is
  a per-interval value and would read as counter resets, so it is not mapped.
* Prefix cache: hits = ``cached_tokens_total`` (summed over ``cache_source``), queries =
  ``prompt_tokens_total`` (the catalogue's Δcached/Δprompt). Both are counted when a
  request finishes. Queries are only emitted when the hits counter exists, so an
  old build (0.4.x has no ``cached_tokens_total``) does not yield a ratio that is
  always 0. The ``cache_hit_rate`` gauge covers only the last logged batches and is
  not a counter, so it is left out.
* ``inter_token_latency_seconds`` was ``time_per_output_token_seconds`` up to 0.4.3
  (per-chunk ITL, same meaning).
* Labels: ``is_streaming``, ``cache_source``, ``engine_type`` and ``dp_rank`` split
  series that add up. ``tp_rank``/``pp_rank``/``moe_ep_rank`` only multiply when every
  scheduler reports (``--enable-metrics-for-all-schedulers``), and then every rank
  reports the same batch, so they are replica labels (max, not sum).

Capacity and request phases (0.5.23 names; the token histograms and the ``estimated_*``
counters as defined in ``python/sglang/srt/observability/metrics_collector.py`` @
016d8605e45876180312e29d6988e1de06562472):

* ``kv_cache_capacity_tokens`` is ``sglang:max_total_num_tokens``, the KV token pool's
  size, set once at start-up; per ``dp_rank``, summed.
* ``queue_time_seconds`` is ``sglang:queue_time_seconds``. SGLang has no per-request
  prefill or decode time histogram (only ``per_stage_req_latency_seconds`` by internal
  stage), so those two are absent.
* ``prompt_length_tokens`` / ``generation_length_tokens`` are
  ``sglang:prompt_tokens_histogram`` / ``sglang:generation_tokens_histogram``, present
  only when SGLang collects token histograms (``--collect-tokens-histogram``).
* ``estimated_*`` are ``sglang:estimated_{flops,read_bytes,write_bytes}_per_gpu_total``
  (``--enable-mfu-metrics``): per GPU, like vLLM's; the TP ranks' copies are collapsed
  as replicas.
* Not mapped: ``sglang:kv_cache_memory_usage_gb`` (GB rounded to 3 decimals in a unit
  the metric does not define, so no exact byte count), the configured memory fraction
  (``--mem-fraction-static`` is not exported), speculative decoding (only
  ``spec_accept_rate`` / ``spec_accept_length`` gauges of the last batches, no
  draft/accepted counters), and an offload tier (HiCache hits are a ``cache_source`` of
  ``cached_tokens_total``, with no queries counter of that tier).
"""

from __future__ import annotations

from gpuwarden.collector.servers.table import ServerMapping, signal_map

MAPPING = ServerMapping(
    kind="sglang",
    metrics_hint="SGLang serves /metrics only when started with --enable-metrics",
    model_label="model_name",
    replica_labels=("tp_rank", "pp_rank", "moe_ep_rank"),
    signal_maps=(
        signal_map("kv_cache_usage_ratio", "sglang:token_usage", agg="max"),
        signal_map("requests_running", "sglang:num_running_reqs"),
        signal_map("requests_waiting", "sglang:num_queue_reqs"),
        signal_map("preemptions_total", "sglang:num_retracted_requests_total"),
        signal_map("prompt_tokens_total", "sglang:prompt_tokens_total"),
        signal_map("generation_tokens_total", "sglang:generation_tokens_total"),
        signal_map("prefix_cache_queries_total", "sglang:prompt_tokens_total",
                   requires=("sglang:cached_tokens_total",)),
        signal_map("prefix_cache_hits_total", "sglang:cached_tokens_total"),
        signal_map("ttft_seconds", "sglang:time_to_first_token_seconds"),
        signal_map("itl_seconds", "sglang:inter_token_latency_seconds",
                   "sglang:time_per_output_token_seconds"),
        signal_map("e2e_latency_seconds", "sglang:e2e_request_latency_seconds"),
        signal_map("kv_cache_capacity_tokens", "sglang:max_total_num_tokens"),
        signal_map("queue_time_seconds", "sglang:queue_time_seconds"),
        signal_map("prompt_length_tokens", "sglang:prompt_tokens_histogram"),
        signal_map("generation_length_tokens", "sglang:generation_tokens_histogram"),
        signal_map("estimated_flops_total", "sglang:estimated_flops_per_gpu_total"),
        signal_map("estimated_memory_read_bytes_total",
                   "sglang:estimated_read_bytes_per_gpu_total"),
        signal_map("estimated_memory_write_bytes_total",
                   "sglang:estimated_write_bytes_per_gpu_total"),
    ),
)
