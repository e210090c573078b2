"""llama.cpp ``llama-server`` (``llamacpp:`` prefix; ``/metrics`` only with ``--metrics``).

Sources: llama.cpp ``tools/server/server-task.cpp`` @ 0c1e5709,
README. No labels: one server is one model, so ``model`` is ``""``.

* ``llamacpp:prompt_tokens_total`` *excludes* cached prompt tokens. The canonical
  prompt-token counter (like vLLM's) counts every prompt token, so it is
  computed + cached; the prefix-cache queries are the same sum and the hits are the
  cached tokens (the catalogue's Δcached / (Δcached + Δprompt)).
* ``requests_processing`` (busy slots) is running, ``requests_deferred`` is waiting.
* ``kv_cache_usage_ratio`` (0..1) only exists in builds before llama.cpp#13660
  (May 2025); newer builds have no KV occupancy, so the signal is absent there.
* The ``*_tokens_seconds`` throughput gauges are reset by every scrape (two scrapers
  corrupt each other) and are never read; throughput is derived from the counters.

* Speculative decoding: ``spec_decode_num_{draft,accepted}_tokens_total``, the same
  names as vLLM's (moving only when a draft model or method is configured).

Absent for llama.cpp: TTFT/ITL/e2e and every other per-request histogram (queue,
prefill, decode, prompt and generation lengths), preemptions, KV capacity
(``n_tokens_max`` is a high-water mark of tokens seen, not the cache size), KV memory,
a configured memory fraction, an offload tier and FLOP/byte estimates.
"""

from __future__ import annotations

from gpuwarden.collector.servers.table import ServerMapping, signal_map

_PROMPT = ("llamacpp:prompt_tokens_total", "llamacpp:prompt_tokens_cached_total")

MAPPING = ServerMapping(
    kind="llamacpp",
    metrics_hint="llama-server serves /metrics only when started with --metrics",
    model_label=None,
    signal_maps=(
        signal_map("kv_cache_usage_ratio", "llamacpp:kv_cache_usage_ratio", agg="max"),
        signal_map("requests_running", "llamacpp:requests_processing"),
        signal_map("requests_waiting", "llamacpp:requests_deferred"),
        signal_map("prompt_tokens_total", _PROMPT, "llamacpp:prompt_tokens_total"),
        signal_map("generation_tokens_total", "llamacpp:tokens_predicted_total"),
        signal_map("prefix_cache_queries_total", _PROMPT),
        signal_map("prefix_cache_hits_total", "llamacpp:prompt_tokens_cached_total"),
        signal_map("spec_decode_draft_tokens_total",
                   "llamacpp:spec_decode_num_draft_tokens_total"),
        signal_map("spec_decode_accepted_tokens_total",
                   "llamacpp:spec_decode_num_accepted_tokens_total"),
    ),
)
