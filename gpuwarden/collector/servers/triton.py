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

Absent for Triton: ITL and e2e histograms (core has only cumulative microsecond
counters), preemptions, and a prefix-cache hit count (only a ``reused`` block gauge).
"""

from __future__ import annotations

from gpuwarden.collector.servers.base import ServerMapping, signal_map, src

MAPPING = ServerMapping(
    kind="triton",
    metrics_hint="Triton serves metrics on port 8002 by default, unless --allow-metrics=false",
    model_label="model",
    signal_maps=(
        signal_map("kv_cache_usage_ratio",
                   src("nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction"),
                   agg="max"),
        signal_map("requests_running", src("nv_trt_llm_request_metrics", request_type="active")),
        signal_map("requests_waiting", src("nv_trt_llm_request_metrics", request_type="waiting"),
                   "nv_inference_pending_request_count"),
        signal_map("prompt_tokens_total", "nv_llm_input_token_len_sum"),
        signal_map("generation_tokens_total", "nv_llm_output_token_len_sum"),
        signal_map("ttft_seconds", src("nv_inference_first_response_histogram_ms", divisor=1000.0)),
    ),
)
