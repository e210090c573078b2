"""Shared helpers for the per-kind mapping tests, and tests of the table machinery itself.

``wire()`` reads expected numbers straight from the payload text with a regex, not
through the parser under test, so a test compares the mapping against the recorded
bytes rather than against itself.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest

from gpuwarden.collector.promtext import parse
from gpuwarden.collector.registry import SERVER_KINDS
from gpuwarden.collector.servers.base import label_number, map_exposition, served_models
from gpuwarden.collector.servers.table import ServerMapping, info_label, signal_map, src
from gpuwarden.model import Sample
from gpuwarden.signals import DERIVED_INPUTS, SERVER_LABELS, SIGNALS, Kind

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "metrics"
NODE, SERVER, TS = "node-a", "srv-0", 1_700_000_000.0


def payload(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def mapped(kind: str, text: str) -> list[Sample]:
    return map_exposition(SERVER_KINDS.load(kind), parse(text), node=NODE, server=SERVER,
                          ts=TS)


def wire(text: str, name: str, **labels: str) -> list[float]:
    """Values of sample ``name`` whose label set contains ``labels``, read from raw text."""
    out = []
    for m in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})?\s+(\S+)", text, re.M):
        got = dict(re.findall(r'(\w+)\s*=\s*"([^"]*)"', m[1] or ""))
        if all(got.get(k) == v for k, v in labels.items()):
            out.append(float(m[2]))
    return out


def one(text: str, name: str, **labels: str) -> float:
    (v,) = wire(text, name, **labels)
    return v


def signals(samples: list[Sample]) -> set[str]:
    return {s.signal for s in samples}


def value(samples: list[Sample], signal: str, model: str = "") -> float:
    hits = [s.value for s in samples if s.signal == signal and dict(s.labels)["model"] == model]
    assert len(hits) == 1, (signal, model, hits)
    return hits[0]


def buckets(samples: list[Sample], signal: str, model: str = "") -> list[tuple[str, float]]:
    return [
        (dict(s.labels)["le"], s.value)
        for s in samples
        if s.signal == f"{signal}_bucket" and dict(s.labels)["model"] == model
    ]


def le_key(le: str) -> float:
    return float(le)


# ------------------------------------------------------------------------ machinery


def test_every_table_maps_per_server_signals() -> None:
    for kind in SERVER_KINDS:
        for r in SERVER_KINDS.load(kind).signal_maps:
            assert SIGNALS[r.signal].labels == SERVER_LABELS


def test_tables_never_map_derived_window_signals() -> None:
    derived = {*DERIVED_INPUTS, "quality_similarity"}
    assert {"kv_offload_hit_ratio", "spec_decode_acceptance_ratio"} <= derived
    for kind in SERVER_KINDS:
        assert not derived & set(SERVER_KINDS.load(kind).signals)


def test_table_typos_fail_at_import_time() -> None:
    with pytest.raises(ValueError, match="not a per-server signal"):
        ServerMapping("x", (signal_map("kv_cache_usage_percent", "a"),))
    with pytest.raises(ValueError, match="mapped twice"):
        ServerMapping("x", (signal_map("requests_running", "a"),
                            signal_map("requests_running", "b")))
    with pytest.raises(ValueError, match="not a per-server signal"):
        ServerMapping("x", (signal_map("gpu_up", "a"),))
    with pytest.raises(ValueError, match="cannot add families"):
        ServerMapping("x", (signal_map("ttft_seconds", ("a", "b")),))
    with pytest.raises(ValueError, match="cannot read labels"):
        ServerMapping("x", (signal_map("queue_time_seconds", info_label("a", "b")),))
    with pytest.raises(ValueError, match="at least one label"):
        info_label("a")


def test_output_labels_are_exactly_the_design_names() -> None:
    text = payload("vllm-0.32-cpu-kv-pressure.prom")
    out = mapped("vllm", text)
    assert out
    for s in out:
        keys = {k for k, _ in s.labels}
        expected = {"node", "server", "model"}
        if s.signal.endswith("_bucket"):
            expected.add("le")
        assert keys == expected, s
        assert dict(s.labels)["node"] == NODE
        assert dict(s.labels)["server"] == SERVER
        assert s.ts == TS
        base = s.signal.removesuffix("_bucket").removesuffix("_count").removesuffix("_sum")
        assert base in SIGNALS or s.signal in SIGNALS


def test_nan_values_are_dropped_not_summed() -> None:
    text = (
        'vllm:num_requests_running{engine="0",model_name="m"} NaN\n'
        'vllm:num_requests_running{engine="1",model_name="m"} 3\n'
        'vllm:num_requests_waiting{engine="0",model_name="m"} NaN\n'
    )
    out = mapped("vllm", text)
    assert value(out, "requests_running", "m") == 3.0
    assert "requests_waiting" not in signals(out)  # only NaN: absent, not zero


def test_histogram_without_inf_bucket_or_count_is_dropped() -> None:
    text = 'vllm:time_to_first_token_seconds_bucket{le="0.1",model_name="m"} 4\n'
    assert mapped("vllm", text) == []


def test_le_is_parsed_as_float_and_rendered_like_prometheus() -> None:
    text = (
        'vllm:time_to_first_token_seconds_bucket{le="1",model_name="m"} 1\n'
        'vllm:time_to_first_token_seconds_bucket{le="2.5e-1",model_name="m"} 0\n'
        'vllm:time_to_first_token_seconds_bucket{le="+Inf",model_name="m"} 2\n'
        'vllm:time_to_first_token_seconds_count{model_name="m"} 2\n'
        'vllm:time_to_first_token_seconds_sum{model_name="m"} 3.5\n'
    )
    out = mapped("vllm", text)
    assert buckets(out, "ttft_seconds", "m") == [("0.25", 0.0), ("1.0", 1.0), ("+Inf", 2.0)]
    assert value(out, "ttft_seconds_count", "m") == 2.0
    assert value(out, "ttft_seconds_sum", "m") == 3.5


def test_series_without_the_model_label_get_an_empty_model() -> None:
    out = mapped("vllm", "vllm:num_requests_running 2\n")
    assert value(out, "requests_running", "") == 2.0
    assert served_models(out) == ()


def test_every_histogram_signal_map_reads_one_family_per_alternative() -> None:
    for kind in SERVER_KINDS:
        for r in SERVER_KINDS.load(kind).signal_maps:
            if r.kind is Kind.HISTOGRAM:
                assert all(len(alt) == 1 for alt in r.alternatives)
            assert not math.isnan(r.alternatives[0][0].divisor)


@pytest.mark.parametrize("kind", sorted(SERVER_KINDS))
@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.prom")), ids=lambda p: p.name)
def test_reading_only_the_mapped_families_maps_the_same(kind: str, path: Path) -> None:
    """The collector parses only what the table reads; the mapping must not notice,
    whichever payload a server of any kind answers with (a wrong kind included)."""
    text = path.read_text(encoding="utf-8")
    mapping = SERVER_KINDS.load(kind)
    full = map_exposition(mapping, parse(text), node=NODE, server=SERVER, ts=TS)
    only = map_exposition(mapping, parse(text, only=mapping.read_names), node=NODE,
                          server=SERVER, ts=TS)
    assert only == full


# ----------------------------------------------------------- info labels, products


@pytest.mark.parametrize(("text", "want"), [
    ("16", 16.0), ("1024.0", 1024.0), ("0.92", 0.92), (".5", 0.5), ("1e3", 1000.0),
    ("0", 0.0), ("1073741824", 1073741824.0),
    ("None", None), ("", None), (None, None), ("-1", None), ("nan", None), ("inf", None),
    ("+Inf", None), ("1e400", None), ("1_000", None), (" 12", None), ("12 ", None),
    ("0x10", None), ("True", None), ("[]", None),
])
def test_label_number_reads_only_finite_non_negative_numbers(text: str | None,
                                                             want: float | None) -> None:
    assert label_number(text) == want


_INFO = ServerMapping("info-test", (
    signal_map("kv_cache_capacity_tokens", info_label("cfg", "tokens"),
               info_label("cfg", "blocks", "block")),
    signal_map("server_gpu_memory_utilization_config", info_label("cfg", "frac"), agg="max"),
), model_label="model_name")


def _info(text: str) -> list[Sample]:
    return map_exposition(_INFO, parse(text), node=NODE, server=SERVER, ts=TS)


def test_info_labels_are_read_per_series_and_the_info_value_is_ignored() -> None:
    text = ('cfg{model_name="m",blocks="10",block="16",frac="0.5",e="0"} 1\n'
            'cfg{model_name="m",blocks="20",block="8",frac="0.5",e="1"} 7\n')
    out = _info(text)
    assert value(out, "kv_cache_capacity_tokens", "m") == 10 * 16 + 20 * 8
    assert value(out, "server_gpu_memory_utilization_config", "m") == 0.5


def test_an_info_series_with_a_garbled_label_is_skipped_the_others_are_kept() -> None:
    text = ('cfg{model_name="m",tokens="None",blocks="10",block="16",e="0"} 1\n'
            'cfg{model_name="m",blocks="x",block="16",e="1"} 1\n'
            'cfg{model_name="m",blocks="4",block="16",e="2"} NaN\n')
    out = _info(text)
    assert value(out, "kv_cache_capacity_tokens", "m") == 10 * 16  # e=1 unusable, e=2 NaN
    assert "server_gpu_memory_utilization_config" not in signals(out)


def test_info_labels_and_parsing_only_the_mapped_families_agree() -> None:
    text = 'cfg{model_name="m",tokens="99"} 1\nother{tokens="5"} 1\n'
    only = map_exposition(_INFO, parse(text, only=_INFO.read_names), node=NODE,
                          server=SERVER, ts=TS)
    assert only == _info(text) and value(only, "kv_cache_capacity_tokens", "m") == 99.0


_PRODUCT = ServerMapping("product-test", (
    signal_map("kv_cache_capacity_tokens",
               (src("kv", kind="max"), src("kv", kind="per")), combine="multiply"),
), model_label="model")


def test_multiplied_parts_need_one_series_each_per_model() -> None:
    text = ('kv{model="a",kind="max",version="1"} 100\n'
            'kv{model="a",kind="per",version="1"} 64\n'
            'kv{model="b",kind="max",version="1"} 10\n'
            'kv{model="b",kind="max",version="2"} 20\n'
            'kv{model="b",kind="per",version="1"} 64\n'
            'kv{model="b",kind="per",version="2"} 64\n'
            'kv{model="c",kind="max",version="1"} 10\n')
    out = map_exposition(_PRODUCT, parse(text), node=NODE, server=SERVER, ts=TS)
    assert value(out, "kv_cache_capacity_tokens", "a") == 6400.0
    # b: two versions, so (10 + 20) x (64 + 64) would be wrong: no sample. c: no "per".
    assert {dict(s.labels)["model"] for s in out} == {"a"}
