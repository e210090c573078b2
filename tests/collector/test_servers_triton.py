"""Triton (+ TensorRT-LLM backend) mapping on the upstream README/doc samples."""

from __future__ import annotations

from tests.collector.test_servers_base import (
    buckets,
    mapped,
    one,
    payload,
    signals,
    value,
)

TRTLLM = "triton-tensorrtllm_backend_README-metrics.prom"
CORE = "triton-server_docs-metrics-examples.prom"


def test_trtllm_kv_blocks_and_request_gauges() -> None:
    text = payload(TRTLLM)
    out = mapped("triton", text)
    m = "tensorrt_llm"
    assert value(out, "kv_cache_usage_ratio", m) == one(
        text, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="fraction") == 0.4875
    assert value(out, "requests_running", m) == one(
        text, "nv_trt_llm_request_metrics", request_type="active")
    # The batcher's queue wins over Triton core's pending count (0 in this sample).
    assert value(out, "requests_waiting", m) == one(
        text, "nv_trt_llm_request_metrics", request_type="waiting") == 1.0
    assert signals(out) == {"kv_cache_usage_ratio", "requests_running", "requests_waiting",
                            "kv_cache_capacity_tokens"}


def test_trtllm_kv_capacity_is_max_blocks_times_tokens_per_block() -> None:
    text = payload(TRTLLM)
    out = mapped("triton", text)
    blocks = one(text, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="max")
    per = one(text, "nv_trt_llm_kv_cache_block_metrics", kv_cache_block_type="tokens_per")
    assert (blocks, per) == (6239.0, 64.0)
    assert value(out, "kv_cache_capacity_tokens", "tensorrt_llm") == blocks * per


def test_core_doc_histogram_without_bucket_suffix_is_not_guessed() -> None:
    # The doc prints buckets as nv_inference_first_response_histogram_ms{le=...} (no
    # _bucket); real Triton output has _bucket. Only _count/_sum are usable here: the
    # mean TTFT survives, the bucket edges are not invented.
    text = payload(CORE)
    out = mapped("triton", text)
    assert buckets(out, "ttft_seconds", "my_model") == [("+Inf", 37.0)]
    assert value(out, "ttft_seconds_count", "my_model") == one(
        text, "nv_inference_first_response_histogram_ms_count")
    assert value(out, "ttft_seconds_sum", "my_model") == 10.771  # 10771 ms


def test_core_first_response_histogram_in_ms_becomes_ttft_in_seconds() -> None:
    # The same doc block with the _bucket suffix real Triton prints (catalogue §4.1).
    text = payload(CORE).replace("histogram_ms{", "histogram_ms_bucket{")
    out = mapped("triton", text)
    assert buckets(out, "ttft_seconds", "my_model") == [
        ("0.1", 8.0), ("0.5", 30.0), ("2.0", 36.0), ("5.0", 37.0), ("+Inf", 37.0)]


# Constructed from the catalogue §4 (no recorded sample has these): the TRT-LLM token
# histograms, two versions of one model, and a non-LLM model with only Triton core.
CONSTRUCTED = """\
nv_llm_input_token_len_bucket{model="llm",response_metric_type="x",version="1",le="10"} 1
nv_llm_input_token_len_bucket{model="llm",response_metric_type="x",version="1",le="+Inf"} 4
nv_llm_input_token_len_sum{model="llm",response_metric_type="total_input_tokens",version="1"} 700
nv_llm_input_token_len_sum{model="llm",response_metric_type="total_input_tokens",version="2"} 50
nv_llm_output_token_len_sum{model="llm",response_metric_type="total_output_tokens",version="1"} 900
nv_inference_pending_request_count{model="resnet",version="1"} 3
"""


def test_token_counters_and_pending_fallback() -> None:
    out = mapped("triton", CONSTRUCTED)
    assert value(out, "prompt_tokens_total", "llm") == 750  # versions add up
    assert value(out, "generation_tokens_total", "llm") == 900
    assert value(out, "requests_waiting", "resnet") == 3
    assert "kv_cache_usage_ratio" not in signals(out)


def test_token_length_histograms() -> None:
    out = mapped("triton", CONSTRUCTED)
    # Version 1's buckets; its +Inf bucket is the count. Versions' sums add up.
    assert buckets(out, "prompt_length_tokens", "llm") == [("10.0", 1.0), ("+Inf", 4.0)]
    assert value(out, "prompt_length_tokens_count", "llm") == 4
    # Only _sum for the output lengths: no bucket, no count, so no histogram at all.
    assert "generation_length_tokens_count" not in signals(out)


def test_two_versions_give_no_capacity_rather_than_a_product_of_sums() -> None:
    def blocks(*versions: str) -> str:
        return "".join(
            f'nv_trt_llm_kv_cache_block_metrics{{kv_cache_block_type="{t}",model="llm",'
            f'version="{v}"}} {n}\n'
            for v in versions for t, n in (("max", 1000), ("tokens_per", 64)))

    assert value(mapped("triton", blocks("1")), "kv_cache_capacity_tokens", "llm") == 64000
    assert "kv_cache_capacity_tokens" not in signals(mapped("triton", blocks("1", "2")))
