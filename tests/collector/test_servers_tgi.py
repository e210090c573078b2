"""TGI mapping.

CONSTRUCTED PAYLOAD: TGI's repository holds no recorded ``/metrics`` output. The text
below is written by hand from the names, types, labels and bucket edges in TGI's source
(``router/src/server.rs`` describe_* calls, ``backends/v3``,
``docs/source/reference/metrics.md`` @ db931fcf): counters without ``_total``, no model
label, ``method`` on batch metrics, 0.0001*1.5^k duration edges. Values are invented.
"""

from __future__ import annotations

from tests.collector.test_servers_base import buckets, mapped, one, signals, value

CONSTRUCTED = """\
# TYPE tgi_queue_size gauge
tgi_queue_size 6
# TYPE tgi_batch_current_size gauge
tgi_batch_current_size 32
tgi_batch_current_max_tokens 8192
# TYPE tgi_batch_max_total_tokens gauge
tgi_batch_max_total_tokens 161200
# TYPE tgi_request_count counter
tgi_request_count 120
tgi_request_success 118
tgi_request_failure{err="validation"} 2
tgi_batch_inference_count{method="prefill"} 40
tgi_batch_inference_count{method="decode"} 900
# TYPE tgi_request_duration histogram
tgi_request_duration_bucket{le="0.498789"} 10
tgi_request_duration_bucket{le="0.748183"} 30
tgi_request_duration_bucket{le="1.12227"} 90
tgi_request_duration_bucket{le="145.611"} 118
tgi_request_duration_bucket{le="+Inf"} 118
tgi_request_duration_sum 101.5
tgi_request_duration_count 118
# TYPE tgi_request_mean_time_per_token_duration histogram
tgi_request_mean_time_per_token_duration_bucket{le="0.0291929"} 100
tgi_request_mean_time_per_token_duration_bucket{le="+Inf"} 118
tgi_request_mean_time_per_token_duration_sum 3.1
tgi_request_mean_time_per_token_duration_count 118
# TYPE tgi_request_queue_duration histogram
tgi_request_queue_duration_bucket{le="0.000759375"} 80
tgi_request_queue_duration_bucket{le="0.0129746"} 110
tgi_request_queue_duration_bucket{le="+Inf"} 118
tgi_request_queue_duration_sum 0.9
tgi_request_queue_duration_count 118
# TYPE tgi_request_inference_duration histogram
tgi_request_inference_duration_bucket{le="+Inf"} 118
tgi_request_inference_duration_sum 99.0
tgi_request_inference_duration_count 118
# TYPE tgi_request_input_length histogram
tgi_request_input_length_bucket{le="40.96"} 50
tgi_request_input_length_bucket{le="+Inf"} 118
tgi_request_input_length_sum 51234
tgi_request_input_length_count 118
# TYPE tgi_request_generated_tokens histogram
tgi_request_generated_tokens_bucket{le="+Inf"} 118
tgi_request_generated_tokens_sum 23456
tgi_request_generated_tokens_count 118
"""


def test_tgi_gauges_and_token_counters() -> None:
    out = mapped("tgi", CONSTRUCTED)
    assert value(out, "requests_running") == one(CONSTRUCTED, "tgi_batch_current_size")
    assert value(out, "requests_waiting") == one(CONSTRUCTED, "tgi_queue_size")
    assert value(out, "prompt_tokens_total") == one(CONSTRUCTED, "tgi_request_input_length_sum")
    assert value(out, "generation_tokens_total") == 23456
    assert {dict(s.labels)["model"] for s in out} == {""}  # TGI has no model label


def test_tgi_request_duration_is_the_e2e_histogram() -> None:
    out = mapped("tgi", CONSTRUCTED)
    assert buckets(out, "e2e_latency_seconds") == [
        ("0.498789", 10.0), ("0.748183", 30.0), ("1.12227", 90.0), ("145.611", 118.0),
        ("+Inf", 118.0)]
    assert value(out, "e2e_latency_seconds_sum") == 101.5


def _hist(*names: str) -> set[str]:
    return {f"{n}_{part}" for n in names for part in ("bucket", "count", "sum")}


def test_tgi_has_no_ttft_kv_prefix_or_preemption_and_no_fake_itl() -> None:
    out = mapped("tgi", CONSTRUCTED)
    # Nor a prefill/decode split (inference_duration is both), KV bytes, a memory
    # fraction, offload, speculative or FLOP counters.
    assert signals(out) == {
        "requests_running", "requests_waiting", "prompt_tokens_total",
        "generation_tokens_total", "kv_cache_capacity_tokens",
    } | _hist("e2e_latency_seconds", "queue_time_seconds", "prompt_length_tokens",
              "generation_length_tokens")


def test_tgi_capacity_is_the_batch_token_budget_set_at_warm_up() -> None:
    out = mapped("tgi", CONSTRUCTED)
    assert value(out, "kv_cache_capacity_tokens") == one(
        CONSTRUCTED, "tgi_batch_max_total_tokens") == 161200


def test_tgi_queue_and_length_histograms() -> None:
    out = mapped("tgi", CONSTRUCTED)
    assert buckets(out, "queue_time_seconds") == [
        ("0.000759375", 80.0), ("0.0129746", 110.0), ("+Inf", 118.0)]
    assert value(out, "queue_time_seconds_sum") == 0.9
    assert buckets(out, "prompt_length_tokens") == [("40.96", 50.0), ("+Inf", 118.0)]
    assert value(out, "prompt_length_tokens_sum") == value(out, "prompt_tokens_total")
    assert value(out, "generation_length_tokens_count") == 118
