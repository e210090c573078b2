"""llama.cpp mapping.

CONSTRUCTED PAYLOADS: llama.cpp's repository holds no recorded ``/metrics`` output
(only third-party issue threads have some). The text below is written from the names
and types in llama.cpp's ``tools/server/server-task.cpp`` @ 0c1e5709: no labels,
counters with ``_total``, throughput gauges. Values are invented.
"""

from __future__ import annotations

from tests.collector.test_servers_base import mapped, one, signals, value

CURRENT = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 1200
# TYPE llamacpp:prompt_tokens_cached_total counter
llamacpp:prompt_tokens_cached_total 800
# TYPE llamacpp:prompt_seconds_total counter
llamacpp:prompt_seconds_total 3.2
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 5400
# TYPE llamacpp:tokens_predicted_seconds_total counter
llamacpp:tokens_predicted_seconds_total 80.5
# TYPE llamacpp:n_decode_total counter
llamacpp:n_decode_total 4000
# TYPE llamacpp:n_tokens_max counter
llamacpp:n_tokens_max 4096
# TYPE llamacpp:prompt_tokens_seconds gauge
llamacpp:prompt_tokens_seconds 350.1
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 67.1
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
# TYPE llamacpp:n_busy_slots_per_decode gauge
llamacpp:n_busy_slots_per_decode 2.5
"""

# Builds before llama.cpp#13660 (May 2025) also had the KV gauges.
OLD_EXTRA = """\
# TYPE llamacpp:kv_cache_usage_ratio gauge
llamacpp:kv_cache_usage_ratio 0.42
# TYPE llamacpp:kv_cache_tokens gauge
llamacpp:kv_cache_tokens 1720
"""


def test_llamacpp_current_build() -> None:
    out = mapped("llamacpp", CURRENT)
    computed = one(CURRENT, "llamacpp:prompt_tokens_total")
    cached = one(CURRENT, "llamacpp:prompt_tokens_cached_total")
    assert value(out, "requests_running") == 3
    assert value(out, "requests_waiting") == 2
    # llama.cpp counts cached prompt tokens apart; the canonical counter has both.
    assert value(out, "prompt_tokens_total") == computed + cached == 2000
    assert value(out, "prefix_cache_queries_total") == computed + cached
    assert value(out, "prefix_cache_hits_total") == cached
    assert value(out, "generation_tokens_total") == 5400
    assert signals(out) == {
        "requests_running", "requests_waiting", "prompt_tokens_total",
        "generation_tokens_total", "prefix_cache_queries_total", "prefix_cache_hits_total"}


def test_llamacpp_old_build_with_kv_gauge() -> None:
    out = mapped("llamacpp", CURRENT + OLD_EXTRA)
    assert value(out, "kv_cache_usage_ratio") == 0.42


def test_llamacpp_without_cached_counter_has_no_prefix_signals() -> None:
    text = CURRENT.replace("llamacpp:prompt_tokens_cached_total 800\n", "")
    out = mapped("llamacpp", text)
    assert value(out, "prompt_tokens_total") == 1200
    assert not {"prefix_cache_queries_total", "prefix_cache_hits_total"} & signals(out)


SPEC = """\
# TYPE llamacpp:spec_decode_num_draft_tokens_total counter
llamacpp:spec_decode_num_draft_tokens_total 480
# TYPE llamacpp:spec_decode_num_accepted_tokens_total counter
llamacpp:spec_decode_num_accepted_tokens_total 300
# TYPE llamacpp:spec_decode_num_drafts_total counter
llamacpp:spec_decode_num_drafts_total 120
# TYPE llamacpp:spec_decode_num_accepted_tokens_per_pos_total counter
llamacpp:spec_decode_num_accepted_tokens_per_pos_total{position="0"} 110
"""


def test_llamacpp_speculative_decoding_counters() -> None:
    out = mapped("llamacpp", CURRENT + SPEC)
    assert value(out, "spec_decode_draft_tokens_total") == one(
        SPEC, "llamacpp:spec_decode_num_draft_tokens_total") == 480
    assert value(out, "spec_decode_accepted_tokens_total") == 300
    # n_tokens_max is a high-water mark, not the KV cache's size: no capacity.
    assert "kv_cache_capacity_tokens" not in signals(out)
