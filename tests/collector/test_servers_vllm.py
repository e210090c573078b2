"""vLLM mapping on real scrapes of vLLM 0.32 (CPU build) and on the upstream doc samples.

Expected numbers are read from the payload text (``wire``/``one``), so each assertion
ties a canonical sample to a specific line of the recorded scrape.
"""

from __future__ import annotations

import re

import pytest

from gpuwarden.collector.servers.base import served_models
from tests.collector.test_servers_base import (
    buckets,
    mapped,
    one,
    payload,
    signals,
    value,
    wire,
)

M = "tiny-llama"
ALL = {
    "kv_cache_usage_ratio", "requests_running", "requests_waiting", "preemptions_total",
    "prompt_tokens_total", "generation_tokens_total", "prefix_cache_queries_total",
    "prefix_cache_hits_total", "kv_cache_capacity_tokens", "kv_cache_memory_bytes",
    "server_gpu_memory_utilization_config", "kv_offload_queries_total",
    "kv_offload_hits_total", "estimated_flops_total", "estimated_memory_read_bytes_total",
    "estimated_memory_write_bytes_total",
}  # all but spec decode, which this server has no draft method for
HISTS = {"ttft_seconds", "itl_seconds", "e2e_latency_seconds", "queue_time_seconds",
         "prefill_time_seconds", "decode_time_seconds", "prompt_length_tokens",
         "generation_length_tokens"}
ALL_SAMPLES = ALL | {f"{h}_{s}" for h in HISTS for s in ("bucket", "count", "sum")}
KV_PRESSURE = "vllm-0.32-cpu-kv-pressure.prom"


@pytest.mark.parametrize(
    "name", ["vllm-0.32-cpu-idle.prom", KV_PRESSURE, "vllm-0.32-cpu-after-load.prom"]
)
def test_live_scrapes_map_every_signal_vllm_has(name: str) -> None:
    text = payload(name)
    out = mapped("vllm", text)
    assert signals(out) == ALL_SAMPLES
    assert served_models(out) == (M,)
    e0 = {"engine": "0", "model_name": M}
    assert value(out, "kv_cache_usage_ratio", M) == one(text, "vllm:kv_cache_usage_perc", **e0)
    assert value(out, "requests_running", M) == one(text, "vllm:num_requests_running", **e0)
    assert value(out, "requests_waiting", M) == one(text, "vllm:num_requests_waiting", **e0)
    for sig, wire_name in [
        ("preemptions_total", "vllm:num_preemptions_total"),
        ("prompt_tokens_total", "vllm:prompt_tokens_total"),
        ("generation_tokens_total", "vllm:generation_tokens_total"),
        ("prefix_cache_queries_total", "vllm:prefix_cache_queries_total"),
        ("prefix_cache_hits_total", "vllm:prefix_cache_hits_total"),
    ]:
        assert value(out, sig, M) == one(text, wire_name, **e0), sig


def test_idle_server_reports_zeros_not_absence() -> None:
    out = mapped("vllm", payload("vllm-0.32-cpu-idle.prom"))
    assert value(out, "kv_cache_usage_ratio", M) == 0.0
    assert value(out, "requests_running", M) == 0.0
    assert value(out, "requests_waiting", M) == 0.0
    assert value(out, "ttft_seconds_count", M) == 0.0


def test_kv_pressure_scrape_shows_the_pressure() -> None:
    text = payload(KV_PRESSURE)
    out = mapped("vllm", text)
    kv = value(out, "kv_cache_usage_ratio", M)
    # vllm:kv_cache_usage_perc is a fraction despite its name: no /100 conversion.
    assert kv == one(text, "vllm:kv_cache_usage_perc", engine="0", model_name=M)
    assert 0.85 < kv <= 1.0
    assert value(out, "preemptions_total", M) == 44.0 == one(text, "vllm:num_preemptions_total")
    assert value(out, "requests_waiting", M) > value(out, "requests_running", M) > 0


def test_ttft_buckets_keep_the_scraped_edges_and_counts() -> None:
    text = payload(KV_PRESSURE)
    out = mapped("vllm", text)
    got = buckets(out, "ttft_seconds", M)
    want = [
        (m[1], float(m[2]))
        for m in re.finditer(
            r'^vllm:time_to_first_token_seconds_bucket\{engine="0",le="([^"]+)",'
            r'model_name="tiny-llama"\} (\S+)', text, re.M)
    ]
    assert len(want) == 23
    assert [le for le, _ in got] == [le for le, _ in want]
    assert [float(le) for le, _ in got][:3] == [0.001, 0.005, 0.01]
    assert got[-2:][0][0] == "2560.0" and got[-1][0] == "+Inf"
    assert [n for _, n in got] == [n for _, n in want]
    assert got[-1][1] == value(out, "ttft_seconds_count", M) == 36.0
    assert value(out, "ttft_seconds_sum", M) == one(text, "vllm:time_to_first_token_seconds_sum")
    itl = buckets(out, "itl_seconds", M)
    assert itl[0] == ("0.01", one(text, "vllm:inter_token_latency_seconds_bucket", le="0.01"))
    assert itl[-1][1] == one(text, "vllm:inter_token_latency_seconds_count")
    e2e = buckets(out, "e2e_latency_seconds", M)
    assert e2e[0][0] == "0.3"  # vLLM's request_latency family starts at 0.3 s


def test_created_series_and_other_families_are_ignored() -> None:
    text = payload(KV_PRESSURE)
    assert wire(text, "vllm:num_preemptions_created")  # present on the wire ...
    out = mapped("vllm", text)
    assert len([s for s in out if s.signal == "preemptions_total"]) == 1  # ... never mapped


def test_design_doc_sample_with_truncated_histogram() -> None:
    text = payload("vllm_docs-design-metrics.prom")
    out = mapped("vllm", text)
    model = "meta-llama/Llama-3.1-8B-Instruct"
    assert value(out, "requests_running", model) == 8.0
    assert value(out, "generation_tokens_total", model) == 27453.0
    got = buckets(out, "ttft_seconds", model)
    # The doc cut the histogram before +Inf; _count (140) is by definition its value.
    assert got[-1] == ("+Inf", one(text, "vllm:time_to_first_token_seconds_count"))
    assert [le for le, _ in got[:-1]] == ["0.001", "0.005", "0.01", "0.02", "0.04", "0.06",
                                          "0.08", "0.1"]
    assert "ttft_seconds_sum" not in signals(out)  # not in the excerpt: not invented
    assert "kv_cache_usage_ratio" not in signals(out)  # elided by "...": absent, not 0


def test_usage_doc_sample_has_no_canonical_signal() -> None:
    assert mapped("vllm", payload("vllm_docs-usage-metrics.prom")) == []


# ----------------------------------------------------------------------- renames


def _as_old_names(text: str) -> str:
    """The live 0.32 scrape, respelled the way vLLM <= 0.11 named these metrics."""
    for new, old in [
        ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
        ("vllm:inter_token_latency_seconds", "vllm:time_per_output_token_seconds"),
        ("vllm:prefix_cache_", "vllm:gpu_prefix_cache_"),
    ]:
        text = re.sub(rf"(?m)^(# (?:HELP|TYPE) )?{re.escape(new)}", rf"\g<1>{old}", text)
    return text


def test_old_names_map_to_the_same_signals() -> None:
    text = payload(KV_PRESSURE)
    old = _as_old_names(text)
    assert "vllm:gpu_cache_usage_perc{" in old and "vllm:kv_cache_usage_perc{" not in old
    assert "vllm:time_per_output_token_seconds_bucket{" in old
    assert "vllm:gpu_prefix_cache_hits_total{" in old
    assert "vllm:external_prefix_cache_hits_total{" in old  # untouched
    assert mapped("vllm", old) == mapped("vllm", text)


def test_both_spellings_exported_new_one_wins() -> None:
    # vLLM 0.9.2-0.11 export old and new names side by side; summing would double-count.
    text = payload(KV_PRESSURE) + (
        'vllm:gpu_cache_usage_perc{engine="0",model_name="tiny-llama"} 0.5\n'
        'vllm:gpu_prefix_cache_queries_total{engine="0",model_name="tiny-llama"} 1.0\n'
        'vllm:time_per_output_token_seconds_count{engine="0",model_name="tiny-llama"} 1.0\n'
    )
    out = mapped("vllm", text)
    assert value(out, "kv_cache_usage_ratio", M) == one(text, "vllm:kv_cache_usage_perc")
    assert value(out, "prefix_cache_queries_total", M) == one(
        text, "vllm:prefix_cache_queries_total")
    assert value(out, "itl_seconds_count", M) == one(
        text, "vllm:inter_token_latency_seconds_count")


def test_v0_engine_payload_without_engine_label() -> None:
    text = (
        '# TYPE vllm:gpu_cache_usage_perc gauge\n'
        'vllm:gpu_cache_usage_perc{model_name="m"} 0.97\n'
        'vllm:num_requests_running{model_name="m"} 12.0\n'
        'vllm:num_preemptions_total{model_name="m"} 3.0\n'
    )
    out = mapped("vllm", text)
    assert value(out, "kv_cache_usage_ratio", "m") == 0.97
    assert value(out, "preemptions_total", "m") == 3.0


# ------------------------------------------------------------------ data parallel


def _with_second_engine(text: str, kv_engine1: float) -> str:
    """Append an ``engine="1"`` copy of every engine-0 vLLM series (same values, other KV)."""
    extra = []
    for line in text.splitlines():
        if line.startswith("vllm:") and 'engine="0"' in line:
            line1 = line.replace('engine="0"', 'engine="1"')
            if line.startswith("vllm:kv_cache_usage_perc"):
                line1 = line1.rsplit(" ", 1)[0] + f" {kv_engine1}"
            extra.append(line1)
    return text + "\n".join(extra) + "\n"


def test_data_parallel_engines_are_summed_and_kv_is_maxed() -> None:
    text = payload(KV_PRESSURE)
    single = mapped("vllm", text)
    dp_text = _with_second_engine(text, kv_engine1=0.25)
    dp = mapped("vllm", dp_text)
    assert len(wire(dp_text, "vllm:num_requests_running")) == 2
    kv0 = value(single, "kv_cache_usage_ratio", M)
    assert value(dp, "kv_cache_usage_ratio", M) == max(kv0, 0.25)
    for sig in ("requests_running", "requests_waiting", "preemptions_total",
                "prompt_tokens_total", "ttft_seconds_count", "itl_seconds_sum"):
        assert value(dp, sig, M) == pytest.approx(2 * value(single, sig, M)), sig
    assert buckets(dp, "ttft_seconds", M) == [
        (le, 2 * n) for le, n in buckets(single, "ttft_seconds", M)
    ]
    hotter = mapped("vllm", _with_second_engine(text, kv_engine1=0.99))
    assert value(hotter, "kv_cache_usage_ratio", M) == 0.99


def test_two_models_stay_separate() -> None:
    text = (
        'vllm:num_requests_running{engine="0",model_name="a"} 1\n'
        'vllm:num_requests_running{engine="0",model_name="b"} 2\n'
    )
    out = mapped("vllm", text)
    assert value(out, "requests_running", "a") == 1.0
    assert value(out, "requests_running", "b") == 2.0
    assert served_models(out) == ("a", "b")
