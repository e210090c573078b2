"""The budget from a real SQLite store holding a scripted hour (``node.py``)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

from gpuwarden.capacity.budget import Budget, build_budget
from gpuwarden.model import SeriesData
from gpuwarden.promql import derived
from gpuwarden.promql.derived import Derivation, LabelledValue, derive_signal, input_lookbacks
from gpuwarden.signals import DERIVED_INPUTS
from gpuwarden.storage import Store, open_store
from tests.capacity import node as scripted
from tests.capacity.node import FRACTION, GIB, KV_GIB, NODE, SPLIT, TOKENS, TOTAL

NOW = float(int(time.time()) // 60 * 60)


@pytest.fixture(scope="module")
def store_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return scripted.node_store(tmp_path_factory.mktemp("budget") / "gw.db", NOW)


@pytest.fixture
def store(store_url: str) -> Iterable[Store]:
    """Reopened: the hour is read back from the database's chunks, not a writer's head."""
    opened = open_store(store_url, node=NODE)
    yield opened
    opened.close()


def budget_of(store: Store, **options: float) -> Budget:
    return build_budget(store, NOW, node=NODE, interval=scripted.STEP, **options)


def test_every_gpu_is_split_into_the_four_parts_in_bytes_gib_and_percent(store: Store) -> None:
    doc = budget_of(store).to_json()
    gpus = {g["gpu"]: g for g in doc["gpus"]}  # type: ignore[attr-defined]
    assert sorted(gpus) == ["0", "1", "2"]
    for gpu, split in SPLIT.items():
        row = gpus[gpu]
        assert row["model"] == scripted.H100 and row["total_bytes"] == TOTAL
        assert row["total_gib"] == 80.0
        for part, gib in zip(("kv_cache", "server_other", "other_processes", "free"), split,
                             strict=True):
            assert row["parts"][part] == {"bytes": gib * GIB, "gib": gib,
                                          "percent": pytest.approx(gib / 80 * 100)}
        assert sum(p["bytes"] for p in row["parts"].values()) == row["total_bytes"]
        assert row["headroom_ratio"] == pytest.approx(split[3] / 80)
    assert gpus["0"]["below_target"] is True  # 8 of 80 GiB free: 10 % < 15 %
    assert gpus["1"]["below_target"] is False  # 14 of 80: 17.5 %
    assert gpus["0"]["servers"] == ["vllm-a", "vllm-b"]
    assert gpus["1"]["servers"] == gpus["2"]["servers"] == ["vllm-tp"]
    assert gpus["0"]["cost_per_hour_usd"] == 2.5
    assert gpus["1"]["cost_per_hour_usd"] is None
    assert "gpu_hour_usd" in gpus["1"]["missing"]["cost_per_hour_usd"]


def test_kv_capacity_in_sequences_at_the_hours_p50_and_p95_lengths(store: Store) -> None:
    servers = {s.server: s for s in budget_of(store).servers}
    a = servers["vllm-a"]
    assert a.gpus == ["0"] and a.kv_cache_capacity_tokens == TOKENS["vllm-a"]
    # Every request of the hour fell in prompt (512, 1024] and generation (64, 256]:
    # histogram_quantile interpolates linearly within the bucket.
    p50 = (512 + 512 * 0.50) + (64 + 192 * 0.50)
    p95 = (512 + 512 * 0.95) + (64 + 192 * 0.95)
    assert a.lengths["p50"]["total"] == pytest.approx(p50)
    assert a.lengths["p95"]["prompt"] == pytest.approx(998.4)
    assert a.sequences["p50"] == pytest.approx(200_000 / p50)
    assert a.sequences["p95"] == pytest.approx(200_000 / p95)
    tp = servers["vllm-tp"]
    assert tp.gpus == ["1", "2"]
    assert tp.sequences["p95"] == pytest.approx(400_000 / ((1024 + 1024 * 0.95) + 246.4))


def test_p95_sequences_agree_with_the_derived_signal(store: Store) -> None:
    """The budget and /metrics (and the KVCapacityTooSmall rule) say the same number."""
    signal = "kv_cache_capacity_sequences"
    inputs = [store.query(name, None, NOW - back, NOW)
              for name, back in input_lookbacks(signal, 60.0).items()]
    expected = {dict(labels)["server"]: v for labels, v in
                derive_signal(signal, inputs, NOW - 60, NOW, interval=scripted.STEP)}
    got = {s.server: s.sequences["p95"] for s in budget_of(store).servers
           if s.sequences["p95"] is not None}
    assert got == pytest.approx(expected) and sorted(got) == ["vllm-a", "vllm-tp"]


def test_what_if_at_085_moves_kv_memory_by_the_change_times_the_gpu_total(store: Store) -> None:
    servers = {s.server: s for s in budget_of(store).servers}
    a = servers["vllm-a"].what_if
    assert a is not None and a.gpu_memory_utilization == 0.85
    kv = KV_GIB["vllm-a"] * GIB + (0.85 - FRACTION["vllm-a"]) * TOTAL  # 30 + 0.4 x 80 GiB
    assert a.kv_cache_memory_bytes == pytest.approx(62 * GIB) == pytest.approx(kv)
    assert a.tokens == pytest.approx(TOKENS["vllm-a"] * 62 / 30)
    p95_length = servers["vllm-a"].lengths["p95"]["total"]
    assert p95_length is not None and a.sequences_p95 == pytest.approx(a.tokens / p95_length)
    # vllm-b holds 0.40 of the same GPU: 0.85 + 0.40 does not fit.
    assert a.note is not None and "vllm-b (0.4)" in a.note and "1.25" in a.note
    tp = servers["vllm-tp"].what_if  # 0.90 -> 0.85 shrinks it by 0.05 x 80 GiB
    assert tp is not None and tp.note is None
    assert tp.tokens == pytest.approx(400_000 * (50 - 4) / 50)
    b = servers["vllm-b"]
    assert b.what_if is None and b.kv_cache_memory_bytes is None
    assert b.missing["what_if"] == "server does not export kv_cache_memory_bytes"
    assert b.missing["kv_cache_memory_bytes"] == "server does not export kv_cache_memory_bytes"
    assert "prompt_length_tokens" in b.missing["lengths_tokens"]
    assert b.sequences == {"p50": None, "p95": None}


def test_what_if_at_another_fraction(store: Store) -> None:
    a = {s.server: s for s in budget_of(store, what_if_utilization=0.5).servers}["vllm-a"]
    assert a.what_if is not None
    assert a.what_if.tokens == pytest.approx(200_000 * (30 + 0.05 * 80) / 30)
    assert a.what_if.note is None  # 0.5 + 0.4 fits


def test_peak_requests_of_the_last_ten_minutes_against_what_fits(store: Store) -> None:
    a = {s.server: s for s in budget_of(store).servers}["vllm-a"]
    assert a.peak_requests == 180  # 150 + 30 five minutes ago; the 500 was 20 minutes ago
    assert a.capacity_over_peak == pytest.approx(a.sequences["p95"] / 180)  # type: ignore[operator]
    assert a.capacity_over_peak < 1  # type: ignore[operator]
    longer = {s.server: s for s in budget_of(store, peak_window=1800).servers}["vllm-a"]
    assert longer.peak_requests == 500


def test_json_names_every_figure_and_its_windows(store: Store) -> None:
    doc = json.loads(json.dumps(budget_of(store, efficiency_window=1800).to_json()))
    assert doc["windows"] == {"lengths_seconds": 3600, "peak_seconds": 600,
                              "efficiency_seconds": 1800}
    assert doc["headroom_target_ratio"] == 0.15 and doc["node"] == NODE
    server = doc["servers"][0]
    assert set(server) == {
        "node", "server", "model", "gpus", "kv_cache_capacity_tokens", "kv_cache_memory_bytes",
        "gpu_memory_utilization_config", "lengths_tokens", "sequences", "what_if",
        "peak_requests", "capacity_over_peak", "memory_bandwidth_utilization_ratio",
        "model_flops_utilization_ratio", "cost_per_million_tokens_usd", "missing"}
    assert set(server["lengths_tokens"]) == {"p50", "p95"}
    # Every None figure says why.
    for row in doc["servers"]:
        for name in ("model_flops_utilization_ratio", "cost_per_million_tokens_usd",
                     "kv_cache_memory_bytes", "what_if"):
            assert (row[name] is None) == (name in row["missing"]), (row["server"], name)


def test_cost_per_million_tokens_is_the_gpu_share_over_the_generation_rate(
        store: Store) -> None:
    a = {s.server: s for s in budget_of(store).servers}["vllm-a"]
    # GPU 0's 2.5 USD an hour, shared by vllm-a and vllm-b, over vllm-a's 500 tokens/s.
    per_second = scripted.COST["0"] / 2 / 3600
    assert a.cost_per_million_tokens_usd == pytest.approx(
        per_second / scripted.GENERATION_RATE["vllm-a"] * 1e6)


def test_a_young_store_narrows_the_efficiency_window_to_its_history(tmp_path: Path) -> None:
    """Ten minutes of samples under an hour's window: a rate over the whole hour would read
    six times low (Prometheus' rate divides by the range); the budget says 10 minutes."""
    store = open_store(f"sqlite:///{tmp_path / 'young.db'}", node=NODE)
    try:
        scripted.write_node(store, NOW, minutes=10)
        store.flush()
        budget = budget_of(store)
    finally:
        store.close()
    assert budget.efficiency_window == 600
    a = {s.server: s for s in budget.servers}["vllm-a"]
    per_second = scripted.COST["0"] / 2 / 3600
    assert a.cost_per_million_tokens_usd == pytest.approx(
        per_second / scripted.GENERATION_RATE["vllm-a"] * 1e6)


def _fake(value: float, with_gpu: bool) -> Derivation:
    def compute(inputs: Sequence[Iterable[SeriesData]], start: float, end: float,
                interval: float) -> list[LabelledValue]:
        out = []
        for s in inputs[0]:
            labels = (*s.labels, ("gpu", "1")) if with_gpu else s.labels
            out.append((labels, value + (end - start)))  # the window shows in the value
        return out
    return Derivation(compute)


def test_efficiency_figures_come_from_the_derived_signals_over_the_window(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, with_gpu in (("memory_bandwidth_utilization_ratio", True),
                           ("model_flops_utilization_ratio", False),
                           ("cost_per_million_tokens_usd", False)):
        monkeypatch.setitem(derived.DERIVATIONS, name, _fake(0.25, with_gpu))
        monkeypatch.setitem(DERIVED_INPUTS, name, ("kv_cache_capacity_tokens",))
    tp = {s.server: s for s in budget_of(store, efficiency_window=1800).servers}["vllm-tp"]
    assert tp.memory_bandwidth_utilization_ratio == {"1": 1800.25}
    assert tp.model_flops_utilization_ratio == 1800.25
    assert tp.cost_per_million_tokens_usd == 1800.25
    assert "cost_per_million_tokens_usd" not in tp.missing


def test_an_efficiency_figure_gpuwarden_does_not_compute_is_none_with_the_reason(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(derived.DERIVATIONS, "model_flops_utilization_ratio", raising=False)
    name = "cost_per_million_tokens_usd"
    monkeypatch.setitem(derived.DERIVATIONS, name, _fake(1.0, False))
    monkeypatch.setitem(DERIVED_INPUTS, name, ("estimated_flops_total",))  # never stored
    a = {s.server: s for s in budget_of(store).servers}["vllm-a"]
    assert a.model_flops_utilization_ratio is None
    assert "does not compute model_flops_utilization_ratio" in a.missing[
        "model_flops_utilization_ratio"]
    assert a.cost_per_million_tokens_usd is None
    assert a.missing[name] == "estimated_flops_total not in the store over the last 1h"


def test_another_node_and_an_empty_store_have_no_rows(store: Store, tmp_path: Path) -> None:
    other = build_budget(store, NOW, node="elsewhere")
    assert other.gpus == [] and other.servers == []
    assert len(build_budget(store, NOW).gpus) == 3  # no node: every node's
    with open_store(f"sqlite:///{tmp_path / 'empty.db'}", node=NODE) as empty:
        doc = build_budget(empty, NOW).to_json()
    assert doc["gpus"] == [] and doc["servers"] == []


def test_a_gpu_without_budget_parts_keeps_its_total_and_says_why(tmp_path: Path) -> None:
    from gpuwarden.model import Sample

    with open_store(f"sqlite:///{tmp_path / 'old.db'}", node=NODE) as old:
        old.write([Sample("gpu_memory_total_bytes", scripted.gpu_labels("0"), TOTAL, NOW)])
        gpu = build_budget(old, NOW).gpus[0]
    assert gpu.total_bytes == TOTAL and gpu.parts["free"] is None
    assert gpu.headroom_ratio is None and gpu.below_target is None
    assert "gpu_memory_budget_bytes" in gpu.missing["parts.kv_cache"]
