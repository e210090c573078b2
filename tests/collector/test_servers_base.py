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
from gpuwarden.collector.servers.base import (
    ServerMapping,
    map_exposition,
    served_models,
    signal_map,
)
from gpuwarden.model import Sample
from gpuwarden.signals import SERVER_LABELS, SIGNALS, Kind

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
    derived = {"prefix_cache_hit_ratio", "generation_tokens_per_second", "quality_similarity"}
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
