"""NVIDIA Triton Inference Server, including the TensorRT-LLM backend's ``nv_trt_llm_*``.

Sources: Triton core ``src/metrics.cc``, server
``docs/user_guide/metrics.md``, TensorRT-LLM ``custom_metrics_reporter.cc``,
tensorrtllm_backend README. Per-model series carry ``model`` and ``version``; the
model name becomes ``model`` and versions add up.

* KV occupancy: ``nv_trt_llm_kv_cache_block_metrics{kv_cache_block_type="fraction"}``,
  already 0..1.
* Running / waiting: the TRT-LLM batcher's ``nv_trt_llm_request_metrics`` with
  ``request_type`` ``active`` / ``waiting``. Without the TRT-LLM backend, Triton core's
  ``nv_inference_pending_request_count`` is the queue depth; it is the second choice so
  that a TRT-LLM ensemble's queue is not counted twice (once per composing model).
* TTFT: ``nv_inference_first_response_histogram_ms`` (time from request to first
  response; for decoupled/streaming LLM models that is the first token). Off by
  default in Triton (``--metrics-config histogram_latencies=true``); milliseconds,
  converted to seconds. Its default edges 100/500/2000/5000 ms are coarse.
* Tokens: the ``nv_llm_{input,output}_token_len`` histograms' ``_sum`` series.

* KV capacity in tokens: the ``max`` block count times ``tokens_per`` block of
  ``nv_trt_llm_kv_cache_block_metrics`` (``combine="multiply"``, one series each per
  model; two versions of one model give no capacity rather than a product of sums).
* Prompt / generation lengths: the ``nv_llm_{input,output}_token_len`` histograms
  (edges 10, 50, 100, 500, 1000 tokens).

Absent for Triton: ITL and e2e histograms (core has only cumulative microsecond
counters), queue/prefill/decode histograms (queueing is a cumulative counter, or an
opt-in summary, neither of which gives a window quantile), preemptions, a prefix-cache
hit count (only a ``reused`` block gauge), KV memory and the configured memory fraction,
an offload tier, speculative decoding counters and FLOP/byte estimates. TensorRT-LLM's
own OpenAI server (``trtllm-serve``, ``trtllm_*`` names on ``/prometheus/metrics``) is a
different server and is not read by this table.
"""

from __future__ import annotations

from gpuwarden.collector.servers.table import ServerMapping, signal_map, src

_KV_BLOCKS = "nv_trt_llm_kv_cache_block_metrics"

MAPPING = ServerMapping(
    kind="triton",
    metrics_hint="Triton serves metrics on port 8002 by default, unless --allow-metrics=false",
    model_label="model",
    signal_maps=(
        signal_map("kv_cache_usage_ratio",
                   src(_KV_BLOCKS, kv_cache_block_type="fraction"),
                   agg="max"),
        signal_map("requests_running", src("nv_trt_llm_request_metrics", request_type="active")),
        signal_map("requests_waiting", src("nv_trt_llm_request_metrics", request_type="waiting"),
                   "nv_inference_pending_request_count"),
        signal_map("prompt_tokens_total", "nv_llm_input_token_len_sum"),
        signal_map("generation_tokens_total", "nv_llm_output_token_len_sum"),
        signal_map("ttft_seconds", src("nv_inference_first_response_histogram_ms", divisor=1000.0)),
        signal_map("kv_cache_capacity_tokens",
                   (src(_KV_BLOCKS, kv_cache_block_type="max"),
                    src(_KV_BLOCKS, kv_cache_block_type="tokens_per")),
                   combine="multiply"),
        signal_map("prompt_length_tokens", "nv_llm_input_token_len"),
        signal_map("generation_length_tokens", "nv_llm_output_token_len"),
    ),
)
