"""Hugging Face Text Generation Inference (``tgi_`` prefix, Rust metrics exporter).

Sources: TGI ``router/src/server.rs``, ``backends/v3``,
``docs/source/reference/metrics.md`` @ db931fcf. TGI has no model label (one model
per router), so ``model`` is ``""``.

TGI exposes no TTFT, no KV-cache occupancy, no prefix cache and no preemption metric:
those signals are absent for TGI, by design of the server.

``tgi_request_mean_time_per_token_duration`` is *not* mapped to ``itl_seconds``: it is
``inference_time / generated_tokens`` per request and includes prefill, so for short
answers it measures prefill time, and the default TokenLatencyP95High rule (and its
warm-restart action) would fire on long prompts rather than slow decoding.

Token counters come from the request-length histograms' ``_sum`` series (TGI has no
token counter); they advance when a request finishes.

Capacity and request phases:

* ``kv_cache_capacity_tokens`` is ``tgi_batch_max_total_tokens``, set once after warm-up
  (``backends/v3/src/lib.rs``): the token budget the v3 router's block allocator
  schedules against, which warm-up sizes to what the KV cache holds (flash-attention
  models; for a padded model it is the configured ``--max-batch-total-tokens``).
* ``queue_time_seconds`` is ``tgi_request_queue_duration`` (seconds). There is no
  prefill/decode split per request (``tgi_request_inference_duration`` is both, and the
  ``tgi_batch_*{method}`` histograms time batches, not requests): absent.
* ``prompt_length_tokens`` / ``generation_length_tokens`` are the
  ``tgi_request_input_length`` / ``tgi_request_generated_tokens`` histograms (linear
  edges, a hundredth of the configured maximum each).

Absent for TGI too: KV memory, a configured memory fraction, an offload tier,
speculative draft/accepted counters (only the ``tgi_request_skipped_tokens`` summary),
FLOP and byte estimates.
"""

from __future__ import annotations

from gpuwarden.collector.servers.table import ServerMapping, signal_map

MAPPING = ServerMapping(
    kind="tgi",
    metrics_hint="TGI serves /metrics on its HTTP port and on --prometheus-port (9000)",
    model_label=None,
    signal_maps=(
        signal_map("requests_running", "tgi_batch_current_size"),
        signal_map("requests_waiting", "tgi_queue_size"),
        signal_map("prompt_tokens_total", "tgi_request_input_length_sum"),
        signal_map("generation_tokens_total", "tgi_request_generated_tokens_sum"),
        signal_map("e2e_latency_seconds", "tgi_request_duration"),
        signal_map("kv_cache_capacity_tokens", "tgi_batch_max_total_tokens"),
        signal_map("queue_time_seconds", "tgi_request_queue_duration"),
        signal_map("prompt_length_tokens", "tgi_request_input_length"),
        signal_map("generation_length_tokens", "tgi_request_generated_tokens"),
    ),
)
