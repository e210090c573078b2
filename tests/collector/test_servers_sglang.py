"""SGLang mapping: the upstream doc sample (0.4.x era) and a 0.5.x-shaped payload."""

from __future__ import annotations

from tests.collector.test_servers_base import (
    buckets,
    mapped,
    one,
    payload,
    signals,
    value,
    wire,
)

DOC = "sglang_docs-production_metrics.prom"
LLAMA = "meta-llama/Llama-3.1-8B-Instruct"


def test_doc_sample_gauges_and_counters() -> None:
    text = payload(DOC)
    out = mapped("sglang", text)
    assert value(out, "kv_cache_usage_ratio", LLAMA) == one(text, "sglang:token_usage") == 0.28
    assert value(out, "requests_running", LLAMA) == one(text, "sglang:num_running_reqs")
    assert value(out, "requests_waiting", LLAMA) == one(text, "sglang:num_queue_reqs") == 2826
    assert value(out, "prompt_tokens_total", LLAMA) == one(text, "sglang:prompt_tokens_total")
    assert value(out, "generation_tokens_total", LLAMA) == 7.557572e06


def test_doc_sample_histograms_including_the_old_itl_name() -> None:
    text = payload(DOC)
    out = mapped("sglang", text)
    ttft = buckets(out, "ttft_seconds", LLAMA)
    # This old build used TTFT edges 0.001..30 s: edges come from the scrape, not a table.
    assert [le for le, _ in ttft] == [
        "0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5",
        "0.75", "1.0", "2.5", "5.0", "7.5", "10.0", "15.0", "20.0", "25.0", "30.0", "+Inf"]
    assert ttft[-1][1] == one(text, "sglang:time_to_first_token_seconds_count") == 11008
    assert dict(ttft)["2.5"] == one(text, "sglang:time_to_first_token_seconds_bucket", le="2.5")
    # sglang:time_per_output_token_seconds (<= 0.4.3) is today's inter_token_latency_seconds.
    itl = buckets(out, "itl_seconds", LLAMA)
    assert itl[0] == ("0.005", 1.0)
    assert value(out, "itl_seconds_count", LLAMA) == one(
        text, "sglang:time_per_output_token_seconds_count")
    assert value(out, "e2e_latency_seconds_sum", LLAMA) == one(
        text, "sglang:e2e_request_latency_seconds_sum")


def test_doc_sample_lacks_what_old_sglang_lacked() -> None:
    out = mapped("sglang", payload(DOC))
    # No retraction counter and no cached_tokens_total in 0.4.x: absent, never 0, and
    # no lone queries counter that would make the hit ratio look like a constant 0.
    assert not {"preemptions_total", "prefix_cache_hits_total",
                "prefix_cache_queries_total"} & signals(out)
    # func_latency has no model_name and is not a canonical signal.
    assert all(dict(s.labels)["model"] == LLAMA for s in out)


# Constructed (not a recorded scrape): the label sets of sglang 0.5.23 as listed in the
# metrics catalogue §2.1 (scheduler: model_name, engine_type, tp_rank, pp_rank,
# moe_ep_rank, dp_rank; tokenizer: model_name, engine_type, is_streaming, cache_source),
# two DP ranks, with --enable-metrics-for-all-schedulers so tp_rank 1 repeats tp_rank 0.
_SCHED = 'model_name="q",engine_type="unified",pp_rank="0",moe_ep_rank="0"'
CONSTRUCTED_055 = f"""\
# TYPE sglang:token_usage gauge
sglang:token_usage{{{_SCHED},dp_rank="0",tp_rank="0"}} 0.61
sglang:token_usage{{{_SCHED},dp_rank="0",tp_rank="1"}} 0.61
sglang:token_usage{{{_SCHED},dp_rank="1",tp_rank="0"}} 0.93
sglang:token_usage{{{_SCHED},dp_rank="1",tp_rank="1"}} 0.93
sglang:num_running_reqs{{{_SCHED},dp_rank="0",tp_rank="0"}} 7
sglang:num_running_reqs{{{_SCHED},dp_rank="0",tp_rank="1"}} 7
sglang:num_running_reqs{{{_SCHED},dp_rank="1",tp_rank="0"}} 5
sglang:num_running_reqs{{{_SCHED},dp_rank="1",tp_rank="1"}} 5
sglang:num_queue_reqs{{{_SCHED},dp_rank="0",tp_rank="0"}} 2
sglang:num_queue_reqs{{{_SCHED},dp_rank="1",tp_rank="0"}} 1
sglang:num_retracted_reqs{{{_SCHED},dp_rank="0",tp_rank="0"}} 4
sglang:num_retracted_requests_total{{{_SCHED},dp_rank="0",tp_rank="0"}} 9
sglang:num_retracted_requests_total{{{_SCHED},dp_rank="1",tp_rank="0"}} 2
# TYPE sglang:prompt_tokens_total counter
sglang:prompt_tokens_total{{model_name="q",engine_type="unified",is_streaming="true"}} 1000
sglang:prompt_tokens_total{{model_name="q",engine_type="unified",is_streaming="false"}} 500
sglang:cached_tokens_total{{model_name="q",engine_type="unified",cache_source="device"}} 300
sglang:cached_tokens_total{{model_name="q",engine_type="unified",cache_source="host"}} 100
sglang:inter_token_latency_seconds_bucket{{model_name="q",engine_type="unified",le="0.002"}} 1
sglang:inter_token_latency_seconds_bucket{{model_name="q",engine_type="unified",le="+Inf"}} 3
sglang:inter_token_latency_seconds_count{{model_name="q",engine_type="unified"}} 3
sglang:inter_token_latency_seconds_sum{{model_name="q",engine_type="unified"}} 0.05
sglang:time_per_output_token_seconds_count{{model_name="q",engine_type="unified"}} 999
"""


def test_dp_ranks_add_tp_replicas_do_not() -> None:
    out = mapped("sglang", CONSTRUCTED_055)
    assert len(wire(CONSTRUCTED_055, "sglang:num_running_reqs")) == 4
    assert value(out, "requests_running", "q") == 7 + 5  # per DP rank, not per TP rank
    assert value(out, "requests_waiting", "q") == 3
    assert value(out, "kv_cache_usage_ratio", "q") == 0.93  # the fullest DP rank
    assert value(out, "preemptions_total", "q") == 11  # retractions, the counter only


def test_streaming_and_cache_source_splits_add_up() -> None:
    out = mapped("sglang", CONSTRUCTED_055)
    assert value(out, "prompt_tokens_total", "q") == 1500
    assert value(out, "prefix_cache_queries_total", "q") == 1500
    assert value(out, "prefix_cache_hits_total", "q") == 400
    # New ITL name preferred over a stale old one.
    assert value(out, "itl_seconds_count", "q") == 3
    assert buckets(out, "itl_seconds", "q") == [("0.002", 1.0), ("+Inf", 3.0)]


# Constructed: capacity and request-phase series with the 0.5.23 label sets above, names
# from sglang's observability/metrics_collector.py @ 016d8605 (the table's docstring);
# max_total_num_tokens is per DP rank (each has its own pool) and repeated per TP rank.
CAPACITY_0523 = f"""\
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{{{_SCHED},dp_rank="0",tp_rank="0"}} 144870
sglang:max_total_num_tokens{{{_SCHED},dp_rank="0",tp_rank="1"}} 144870
sglang:max_total_num_tokens{{{_SCHED},dp_rank="1",tp_rank="0"}} 144870
# TYPE sglang:queue_time_seconds histogram
sglang:queue_time_seconds_bucket{{{_SCHED},dp_rank="0",tp_rank="0",le="0.0"}} 2
sglang:queue_time_seconds_bucket{{{_SCHED},dp_rank="0",tp_rank="0",le="0.005"}} 5
sglang:queue_time_seconds_bucket{{{_SCHED},dp_rank="0",tp_rank="0",le="+Inf"}} 9
sglang:queue_time_seconds_count{{{_SCHED},dp_rank="0",tp_rank="0"}} 9
sglang:queue_time_seconds_sum{{{_SCHED},dp_rank="0",tp_rank="0"}} 0.4
sglang:queue_time_seconds_bucket{{{_SCHED},dp_rank="1",tp_rank="0",le="0.0"}} 1
sglang:queue_time_seconds_bucket{{{_SCHED},dp_rank="1",tp_rank="0",le="0.005"}} 1
sglang:queue_time_seconds_bucket{{{_SCHED},dp_rank="1",tp_rank="0",le="+Inf"}} 3
sglang:queue_time_seconds_count{{{_SCHED},dp_rank="1",tp_rank="0"}} 3
sglang:queue_time_seconds_sum{{{_SCHED},dp_rank="1",tp_rank="0"}} 2.5
# TYPE sglang:prompt_tokens_histogram histogram
sglang:prompt_tokens_histogram_bucket{{model_name="q",engine_type="unified",le="100.0"}} 4
sglang:prompt_tokens_histogram_bucket{{model_name="q",engine_type="unified",le="+Inf"}} 12
sglang:prompt_tokens_histogram_count{{model_name="q",engine_type="unified"}} 12
sglang:prompt_tokens_histogram_sum{{model_name="q",engine_type="unified"}} 1500
# TYPE sglang:generation_tokens_histogram histogram
sglang:generation_tokens_histogram_bucket{{model_name="q",engine_type="unified",le="+Inf"}} 12
sglang:generation_tokens_histogram_count{{model_name="q",engine_type="unified"}} 12
sglang:generation_tokens_histogram_sum{{model_name="q",engine_type="unified"}} 3600
# TYPE sglang:estimated_flops_per_gpu_total counter
sglang:estimated_flops_per_gpu_total{{{_SCHED},dp_rank="0",tp_rank="0"}} 4e15
sglang:estimated_flops_per_gpu_total{{{_SCHED},dp_rank="0",tp_rank="1"}} 4e15
sglang:estimated_read_bytes_per_gpu_total{{{_SCHED},dp_rank="0",tp_rank="0"}} 7e12
sglang:estimated_write_bytes_per_gpu_total{{{_SCHED},dp_rank="0",tp_rank="0"}} 1e11
sglang:kv_cache_memory_usage_gb{{{_SCHED},dp_rank="0",tp_rank="0"}} 136.225
sglang:spec_accept_rate{{{_SCHED},dp_rank="0",tp_rank="0"}} 0.7
"""


def test_capacity_is_the_token_pool_per_dp_rank_added() -> None:
    out = mapped("sglang", CAPACITY_0523)
    assert value(out, "kv_cache_capacity_tokens", "q") == 2 * 144870  # not 3x: TP copies


def test_queue_time_and_length_histograms() -> None:
    out = mapped("sglang", CAPACITY_0523)
    assert buckets(out, "queue_time_seconds", "q") == [
        ("0.0", 3.0), ("0.005", 6.0), ("+Inf", 12.0)]
    assert value(out, "queue_time_seconds_sum", "q") == 2.9
    assert value(out, "prompt_length_tokens_sum", "q") == 1500
    assert buckets(out, "generation_length_tokens", "q") == [("+Inf", 12.0)]


def test_estimates_are_per_gpu_and_the_unmappable_is_left_out() -> None:
    out = mapped("sglang", CAPACITY_0523)
    assert value(out, "estimated_flops_total", "q") == 4e15  # tp_rank copies, not 8e15
    assert value(out, "estimated_memory_read_bytes_total", "q") == 7e12
    assert value(out, "estimated_memory_write_bytes_total", "q") == 1e11
    # GB of an undefined base, a rate gauge, no prefill/decode split, no memory fraction.
    assert not {"kv_cache_memory_bytes", "spec_decode_draft_tokens_total",
                "spec_decode_accepted_tokens_total", "prefill_time_seconds",
                "decode_time_seconds", "server_gpu_memory_utilization_config",
                "kv_offload_hits_total"} & signals(out)


def test_doc_sample_has_none_of_the_capacity_signals() -> None:
    out = mapped("sglang", payload(DOC))
    assert not {"kv_cache_capacity_tokens", "queue_time_seconds_count",
                "prompt_length_tokens_count"} & signals(out)
