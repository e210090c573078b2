"""vLLM's capacity signals: the KV cache's size from ``vllm:cache_config_info`` labels,
the request-phase and length histograms, the offload, speculative and FLOP counters.

On the real vLLM 0.32 scrapes (``kv_cache_size_tokens`` is a label there) and on a real
V0-engine payload of the older naming (only ``num_gpu_blocks`` x ``block_size``,
``vllm_aibrix-docs-runtime-v0-engine.prom``). Expected numbers are read from the
payload text, so each assertion ties a sample to a line of the recorded scrape.
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
)

M = "tiny-llama"
LIVE = ["vllm-0.32-cpu-idle.prom", "vllm-0.32-cpu-kv-pressure.prom",
        "vllm-0.32-cpu-after-load.prom"]
V0 = "vllm_aibrix-docs-runtime-v0-engine.prom"
QWEN = "Qwen/Qwen2.5-Coder-1.5B-Instruct"
HISTOGRAMS = {
    "queue_time_seconds": "vllm:request_queue_time_seconds",
    "prefill_time_seconds": "vllm:request_prefill_time_seconds",
    "decode_time_seconds": "vllm:request_decode_time_seconds",
    "prompt_length_tokens": "vllm:request_prompt_tokens",
    "generation_length_tokens": "vllm:request_generation_tokens",
}
COUNTERS = {
    "kv_offload_queries_total": "vllm:external_prefix_cache_queries_total",
    "kv_offload_hits_total": "vllm:external_prefix_cache_hits_total",
    "estimated_flops_total": "vllm:estimated_flops_per_gpu_total",
    "estimated_memory_read_bytes_total": "vllm:estimated_read_bytes_per_gpu_total",
    "estimated_memory_write_bytes_total": "vllm:estimated_write_bytes_per_gpu_total",
}


def config_label(text: str, name: str) -> str:
    """Label ``name`` of the payload's one ``vllm:cache_config_info`` line, read with a
    regex (not through the parser under test)."""
    (line,) = re.findall(r"^vllm:cache_config_info\{(.*)\} \S+$", text, re.M)
    (got,) = re.findall(rf'(?:^|,){name}="([^"]*)"', line)
    return got


def cache_line(**labels: str) -> str:
    body = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return f"vllm:cache_config_info{{{body}}} 1.0\n"


# ------------------------------------------------------------------ vLLM 0.32, live


@pytest.mark.parametrize("name", LIVE)
def test_capacity_is_the_servers_own_kv_cache_size_tokens(name: str) -> None:
    text = payload(name)
    out = mapped("vllm", text)
    size = float(config_label(text, "kv_cache_size_tokens"))
    assert value(out, "kv_cache_capacity_tokens", M) == size
    # 0.32's count agrees with the older blocks x block size on this (non-hybrid) model.
    assert size == float(config_label(text, "num_gpu_blocks")) * float(
        config_label(text, "block_size"))
    assert value(out, "kv_cache_memory_bytes", M) == float(
        config_label(text, "kv_cache_memory_bytes"))
    fraction = value(out, "server_gpu_memory_utilization_config", M)
    assert fraction == float(config_label(text, "gpu_memory_utilization")) == 0.92
    # cache_config_info has no model_name; vLLM serves one model, so it is that one's.
    assert served_models(out) == (M,)


def test_kv_pressure_server_holds_2048_tokens_in_2_mib() -> None:
    # tests/integration/vllm_server.py starts it with --kv-cache-memory-bytes 2097152 and
    # --block-size 32: 64 blocks of 32 tokens.
    out = mapped("vllm", payload("vllm-0.32-cpu-kv-pressure.prom"))
    assert value(out, "kv_cache_capacity_tokens", M) == 2048.0
    assert value(out, "kv_cache_memory_bytes", M) == 2 * 1024 * 1024


@pytest.mark.parametrize("name", LIVE)
def test_request_phase_and_length_histograms_are_the_scraped_ones(name: str) -> None:
    text = payload(name)
    out = mapped("vllm", text)
    for sig, family in HISTOGRAMS.items():
        want = [(m[1], float(m[2])) for m in re.finditer(
            rf'^{re.escape(family)}_bucket\{{engine="0",le="([^"]+)",model_name="{M}"\}} (\S+)',
            text, re.M)]
        got = buckets(out, sig, M)
        assert [float(le) for le, _ in got] == [float(le) for le, _ in want], sig
        assert [n for _, n in got] == [n for _, n in want], sig
        assert value(out, f"{sig}_count", M) == one(text, f"{family}_count"), sig
        assert value(out, f"{sig}_sum", M) == one(text, f"{family}_sum"), sig
    assert buckets(out, "queue_time_seconds", M)[0][0] == "0.3"  # request_latency edges


def test_after_load_histograms_saw_every_request() -> None:
    text = payload("vllm-0.32-cpu-after-load.prom")
    out = mapped("vllm", text)
    requests = one(text, "vllm:request_success_total", finished_reason="length")
    for sig in HISTOGRAMS:
        assert value(out, f"{sig}_count", M) == requests == 42.0, sig
    # Per-request lengths add up to the token counters.
    assert value(out, "prompt_length_tokens_sum", M) == value(out, "prompt_tokens_total", M)
    assert value(out, "generation_length_tokens_sum", M) == value(
        out, "generation_tokens_total", M)


@pytest.mark.parametrize("name", LIVE)
def test_offload_and_estimate_counters_are_mapped_with_their_values(name: str) -> None:
    text = payload(name)
    out = mapped("vllm", text)
    for sig, wire_name in COUNTERS.items():
        assert value(out, sig, M) == one(text, wire_name, engine="0", model_name=M), sig
    # No draft method configured on this server: no spec-decode series, so none mapped.
    assert not {"spec_decode_draft_tokens_total",
                "spec_decode_accepted_tokens_total"} & signals(out)


def test_spec_decode_counters_when_a_draft_method_is_configured() -> None:
    # Constructed: the 0.32 scrape plus the two counters vLLM exports with a draft
    # method (names from vLLM's v1/spec_decode/metrics.py, metrics catalogue §1.2).
    text = payload("vllm-0.32-cpu-after-load.prom") + (
        '# TYPE vllm:spec_decode_num_draft_tokens_total counter\n'
        f'vllm:spec_decode_num_draft_tokens_total{{engine="0",model_name="{M}"}} 900.0\n'
        '# TYPE vllm:spec_decode_num_accepted_tokens_total counter\n'
        f'vllm:spec_decode_num_accepted_tokens_total{{engine="0",model_name="{M}"}} 630.0\n'
        '# TYPE vllm:spec_decode_num_drafts_total counter\n'
        f'vllm:spec_decode_num_drafts_total{{engine="0",model_name="{M}"}} 300.0\n'
    )
    out = mapped("vllm", text)
    assert value(out, "spec_decode_draft_tokens_total", M) == 900.0
    assert value(out, "spec_decode_accepted_tokens_total", M) == 630.0


# --------------------------------------------------------------- older naming (V0)


def test_older_naming_capacity_is_blocks_times_block_size() -> None:
    text = payload(V0)
    out = mapped("vllm", text)
    blocks, block = config_label(text, "num_gpu_blocks"), config_label(text, "block_size")
    assert (blocks, block) == ("81767", "16")
    assert value(out, "kv_cache_capacity_tokens", QWEN) == 81767 * 16
    assert value(out, "server_gpu_memory_utilization_config", QWEN) == 0.9
    # The older config has no KV byte count: absent, not worked out from other labels.
    assert "kv_cache_memory_bytes" not in signals(out)
    # The info line has neither engine nor model_name; the one model is the server's.
    assert served_models(out) == (QWEN,)
    assert value(out, "kv_cache_usage_ratio", QWEN) == 0.0  # gpu_cache_usage_perc


# ------------------------------------------------------------- labels and engines


def test_kv_cache_size_tokens_none_falls_back_to_blocks_times_block_size() -> None:
    text = cache_line(engine="0", block_size="16", num_gpu_blocks="100",
                      kv_cache_size_tokens="None", gpu_memory_utilization="0.85")
    out = mapped("vllm", text)
    assert value(out, "kv_cache_capacity_tokens") == 1600.0
    assert value(out, "server_gpu_memory_utilization_config") == 0.85


@pytest.mark.parametrize("garbage", ["None", "", "auto", "-1", "nan", "NaN", "inf", "1e400",
                                     "1_000", " 12", "0x10", "12 tokens", "+Inf"])
def test_garbage_labels_give_no_sample_never_a_crash(garbage: str) -> None:
    text = cache_line(engine="0", block_size=garbage, num_gpu_blocks="100",
                      kv_cache_size_tokens=garbage, kv_cache_memory_bytes=garbage,
                      gpu_memory_utilization=garbage)
    out = mapped("vllm", text + 'vllm:num_requests_running{engine="0",model_name="m"} 1\n')
    assert signals(out) == {"requests_running"}


def test_missing_labels_give_no_sample() -> None:
    out = mapped("vllm", cache_line(engine="0", cache_dtype="auto"))
    assert out == []


@pytest.mark.parametrize("naming", ["0.32", "older"])
def test_data_parallel_engines_add_tokens_and_share_the_per_gpu_settings(naming: str) -> None:
    def engine(n: str, blocks: int) -> str:
        size = {"kv_cache_size_tokens": str(blocks * 16),
                "kv_cache_memory_bytes": "1048576"} if naming == "0.32" else {}
        return cache_line(engine=n, block_size="16", num_gpu_blocks=str(blocks),
                          gpu_memory_utilization="0.9", **size)

    text = (engine("0", 1000) + engine("1", 500)
            + 'vllm:num_requests_running{engine="0",model_name="m"} 1\n'
            + 'vllm:num_requests_running{engine="1",model_name="m"} 2\n')
    out = mapped("vllm", text)
    # Each engine has its own KV cache: the server holds both (the product of the older
    # naming is taken per engine, then added; a product of the sums would be 1500*32).
    assert value(out, "kv_cache_capacity_tokens", "m") == 1000 * 16 + 500 * 16
    assert value(out, "server_gpu_memory_utilization_config", "m") == 0.9  # not 1.8
    if naming == "0.32":
        assert value(out, "kv_cache_memory_bytes", "m") == 1048576  # per GPU: not doubled
    else:
        assert "kv_cache_memory_bytes" not in signals(out)


def test_capacity_with_no_model_named_anywhere_keeps_an_empty_model() -> None:
    out = mapped("vllm", cache_line(engine="0", kv_cache_size_tokens="4096"))
    assert value(out, "kv_cache_capacity_tokens", "") == 4096.0
    assert served_models(out) == ()


def test_capacity_is_not_given_to_one_of_two_models() -> None:
    text = (cache_line(engine="0", kv_cache_size_tokens="4096")
            + 'vllm:num_requests_running{engine="0",model_name="a"} 1\n'
            + 'vllm:num_requests_running{engine="0",model_name="b"} 1\n')
    out = mapped("vllm", text)
    assert value(out, "kv_cache_capacity_tokens", "") == 4096.0  # never guessed
    assert served_models(out) == ("a", "b")
