"""Each GPU's memory budget, the server -> GPU join and the GPU hour's price
(collector/memory_budget.py), over what the real NVML collector reads from the fake-NVML
scenarios (two servers on one GPU, a foreign process, MIG instances with their own
processes) and the servers' ``kv_cache_memory_bytes``.

What a user checks: the four parts sum to the GPU's total, each is the figure
``nvidia-smi`` and the server's own metrics give, and every GPU has a budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpuwarden.collector.attribution import ProcessAttribution
from gpuwarden.collector.memory_budget import PARTS, MemoryBudget, budget_samples, split
from gpuwarden.collector.nvml import NvmlCollector
from gpuwarden.config import ServerConfig
from gpuwarden.model import Sample, make_labels
from gpuwarden.signals import SIGNALS
from tests.collector.fake_pynvml import FakeNvml, load

MIB = 1048576
GIB = 1024 * MIB


def nvml(scenario: str | FakeNvml) -> tuple[FakeNvml, NvmlCollector]:
    fake = load(scenario) if isinstance(scenario, str) else scenario
    return fake, NvmlCollector("node-a", nvml=fake, clock=lambda: 10.0)


def kv(server: str, value: float) -> Sample:
    return Sample("kv_cache_memory_bytes",
                  make_labels(node="node-a", server=server, model="m"), value, 10.0)


def budget(samples: Sequence[Sample], owners: Mapping[int, str] | None = None,
           gpus: Mapping[str, Sequence[str]] | None = None, **kw: object) -> list[Sample]:
    return budget_samples(samples, node="node-a", owners=owners or {}, server_gpus=gpus or {},
                          **kw)  # type: ignore[arg-type]


def parts(out: Iterable[Sample]) -> dict[str, dict[str, float]]:
    """``{gpu: {part: bytes}}``."""
    table: dict[str, dict[str, float]] = {}
    for s in out:
        if s.signal == "gpu_memory_budget_bytes":
            labels = dict(s.labels)
            table.setdefault(labels["gpu"], {})[labels["part"]] = s.value
    return table


def totals(samples: Iterable[Sample]) -> dict[str, float]:
    return {dict(s.labels)["gpu"]: s.value for s in samples
            if s.signal == "gpu_memory_total_bytes"}


def server_gpus(out: Iterable[Sample]) -> set[tuple[str, str]]:
    return {(dict(s.labels)["server"], dict(s.labels)["gpu"]) for s in out
            if s.signal == "server_gpu_info"}


def assert_whole(table: Mapping[str, Mapping[str, float]], total: Mapping[str, float]) -> None:
    for gpu, split_ in table.items():
        assert set(split_) == set(PARTS), gpu
        assert all(v >= 0 and v == int(v) for v in split_.values()), split_
        assert sum(split_.values()) == total[gpu], gpu


def test_two_servers_on_one_gpu_each_kv_clamped_to_its_own_memory() -> None:
    _, collector = nvml("nvml-2xa100-two-servers-one-gpu.json")
    samples = list(collector.collect())
    owners = {51200: "vllm-a", 51788: "vllm-b", 52410: "vllm-c"}
    # vllm-b reports more KV than its process holds (a stale or wrong figure): clamped.
    out = budget([*samples, kv("vllm-a", 30 * GIB), kv("vllm-b", 40 * GIB),
                  kv("vllm-c", 60 * GIB)], owners)
    table = parts(out)
    assert_whole(table, totals(samples))
    assert table["0"]["kv_cache"] == 30 * GIB + 36812 * MIB
    assert table["0"]["server_other"] == 36790 * MIB - 30 * GIB
    assert table["0"]["free"] == 7481 * MIB  # nvidia-smi's free
    # The driver's reserved 834 MiB and the 3 MiB used that no process is listed for.
    assert table["0"]["other_processes"] == 834 * MIB + 3 * MIB
    assert table["1"]["kv_cache"] == 60 * GIB
    assert server_gpus(out) == {("vllm-a", "0"), ("vllm-b", "0"), ("vllm-c", "1")}
    assert all(s.signal in SIGNALS for s in out)
    info = [s for s in out if s.signal == "server_gpu_info"]
    assert all(s.value == 1.0 and set(dict(s.labels)) == {"node", "server", "gpu"}
               for s in info)


def test_a_foreign_process_is_other_processes_not_the_servers() -> None:
    fake, collector = nvml("nvml-l4-foreign-process.json")
    samples = list(collector.collect())
    table = parts(budget([*samples, kv("vllm", 12 * GIB)], {7301: "vllm"}))["0"]
    assert table["kv_cache"] == 12 * GIB
    assert table["server_other"] == 18304 * MIB - 12 * GIB
    # The foreign process, the driver's reserved 556 MiB, and 2 MiB used by no listed pid.
    assert table["other_processes"] == 2560 * MIB + 556 * MIB + 2 * MIB
    assert table["free"] == 1612 * MIB
    fake.advance()  # the foreign process grows by 1280 MiB
    samples = list(collector.collect())
    later = parts(budget([*samples, kv("vllm", 12 * GIB)], {7301: "vllm"}))["0"]
    assert later["other_processes"] - table["other_processes"] == 1280 * MIB
    assert later["kv_cache"] == table["kv_cache"]
    assert_whole({"0": later}, totals(samples))


def test_mig_budget_per_instance_none_for_the_parent() -> None:
    _, collector = nvml("nvml-h100-mig-processes-per-instance.json")
    samples = list(collector.collect())
    out = budget(samples, {61001: "big", 61500: "small"}, gpus={"tiny": ["0/13"]})
    table = parts(out)
    assert set(table) == {"0/1", "0/5", "0/13"}  # the parent would count them twice
    assert_whole(table, totals(samples))
    assert table["0/1"]["server_other"] == 18176 * MIB
    # 61877 on instance 5 is nobody's; the instance's unlisted 128 MiB is other too.
    assert table["0/5"]["server_other"] == 1792 * MIB
    assert table["0/5"]["other_processes"] == 2048 * MIB - 1792 * MIB
    assert table["0/13"]["server_other"] == 768 * MIB  # 62210, through the configured gpus
    assert server_gpus(out) == {("big", "0/1"), ("small", "0/5"), ("tiny", "0/13")}


def test_a_server_without_its_kv_size_counts_wholly_to_server_other() -> None:
    _, collector = nvml("nvml-l4-foreign-process.json")
    table = parts(budget(list(collector.collect()), {7301: "tgi"}))["0"]
    assert table["kv_cache"] == 0
    assert table["server_other"] == 18304 * MIB


def test_no_process_list_gives_the_used_memory_to_the_configured_server() -> None:
    fake = load("nvml-8xh100-healthy.json")
    for state in fake.states:  # what NVML answers a caller without the permission
        state["errors"] = {"nvmlDeviceGetComputeRunningProcesses": "NoPermission"}
    _, collector = nvml(fake)
    samples = list(collector.collect())
    assert not [s for s in samples if s.signal == "gpu_process_memory_used_bytes"]
    out = budget([*samples, kv("vllm", 50 * GIB)], gpus={"vllm": ["0", "1"]})
    table = parts(out)
    assert_whole(table, totals(samples))
    used0 = 81559 * MIB - 7813 * MIB  # total - free: used + reserved
    assert table["0"] == {"kv_cache": 50 * GIB, "server_other": used0 - 50 * GIB,
                          "other_processes": 0.0, "free": 7813 * MIB}
    assert table["2"]["kv_cache"] == 0 and table["2"]["server_other"] == 0  # no server there
    assert table["2"]["other_processes"] == 81559 * MIB - table["2"]["free"]
    assert server_gpus(out) == {("vllm", "0"), ("vllm", "1")}


def test_every_gpu_has_a_budget_with_or_without_a_server() -> None:
    _, collector = nvml("nvml-8xh100-healthy.json")
    samples = list(collector.collect())
    table = parts(budget(samples))
    assert set(table) == {str(i) for i in range(8)}
    assert_whole(table, totals(samples))
    assert table["7"]["other_processes"] == 536 * MIB  # idle: only the reserved memory
    assert table["0"]["other_processes"] == 81559 * MIB - 7813 * MIB  # nobody's processes


def test_processes_on_a_configured_gpu_that_proc_did_not_claim_are_the_servers() -> None:
    """A server in a container (its host pids invisible to /proc) with gpus = [...]."""
    _, collector = nvml("nvml-2xa100-two-servers-one-gpu.json")
    samples = list(collector.collect())
    out = budget([*samples, kv("in-a-container", 70 * GIB)], {51200: "vllm-a"},
                 gpus={"in-a-container": ["0", "1"]})
    table = parts(out)
    assert table["0"]["server_other"] + table["0"]["kv_cache"] == (36790 + 36812) * MIB
    # Its KV is clamped to what it holds on GPU 0 (51788's 36812 MiB) plus vllm-a's none.
    assert table["0"]["kv_cache"] == 36812 * MIB
    assert table["1"]["kv_cache"] == 70 * GIB
    assert ("vllm-a", "0") in server_gpus(out)


def test_on_a_configured_gpu_the_server_holds_one_unclaimed_process_the_largest() -> None:
    """Without /proc (a container), a job started beside the server is still not its."""
    _, collector = nvml("nvml-l4-foreign-process.json")
    samples = list(collector.collect())
    table = parts(budget(samples, gpus={"vllm": ["0"]}))["0"]
    assert table["server_other"] == 18304 * MIB  # 7301
    assert table["other_processes"] == 2560 * MIB + 556 * MIB + 2 * MIB  # 9144 + reserved


def test_the_price_per_gpu_model_and_the_mig_instances_share() -> None:
    _, collector = nvml("nvml-h100-mig-processes-per-instance.json")
    samples = list(collector.collect())
    total = totals(samples)
    table = (("NVIDIA A100-SXM4-80GB", 1.8), ("NVIDIA H100 80GB HBM3", 4.0))
    cost = {dict(s.labels)["gpu"]: s.value for s in budget(samples, gpu_hour_usd=table)
            if s.signal == "gpu_cost_per_hour_usd"}
    assert cost["0"] == 4.0
    assert cost["0/1"] == pytest.approx(4.0 * total["0/1"] / total["0"])
    assert cost["0/13"] == pytest.approx(4.0 * 9856 / 81559)
    _, collector = nvml("nvml-l4-foreign-process.json")
    l4 = list(collector.collect())
    assert not [s for s in budget(l4, gpu_hour_usd=table)
                if s.signal == "gpu_cost_per_hour_usd"]  # no L4 price: no figure
    flat = [s for s in budget(l4, gpu_hour_usd=0.8) if s.signal == "gpu_cost_per_hour_usd"]
    assert [(dict(s.labels)["model"], s.value) for s in flat] == [("NVIDIA L4", 0.8)]
    assert budget(l4) == [s for s in budget(l4) if s.signal != "gpu_cost_per_hour_usd"]


def test_the_stateful_budget_remembers_which_gpus_list_their_processes() -> None:
    """An idle GPU's empty process list is not a missing one: after a process was seen on
    it, a configured server there no longer takes the reserved memory as its own."""
    fake, collector = nvml("nvml-2xa100-two-servers-one-gpu.json")
    servers = [ServerConfig("in-a-container", "vllm", "http://127.0.0.1:1/metrics",
                            gpus=("1",))]
    memory = MemoryBudget("node-a", servers, attribution=ProcessAttribution(servers))
    first = parts(memory.samples(list(collector.collect())))
    assert first["1"]["server_other"] == 73700 * MIB  # 52410, unclaimed, on its GPU
    fake.states[1]["processes"] = []  # the server's process exits
    later = parts(memory.samples(list(collector.collect())))
    assert later["1"]["server_other"] == 0


gpu_sizes = st.integers(min_value=1, max_value=200 * GIB)


@settings(max_examples=300, deadline=None)
@given(total=gpu_sizes, headroom=st.floats(0.0, 1.0), server=st.integers(0, 300 * GIB),
       kv_cache=st.integers(0, 300 * GIB), other=st.none() | st.integers(0, 300 * GIB))
def test_the_parts_always_sum_to_the_total(total: int, headroom: float, server: int,
                                           kv_cache: int, other: int | None) -> None:
    result = split(total, headroom * total, server, kv_cache, other)
    assert set(result) == set(PARTS)
    assert sum(result.values()) == total
    assert all(v >= 0 for v in result.values())
    assert result["kv_cache"] <= kv_cache


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(1, 40), st.integers(0, 30 * GIB),
                          st.sampled_from(["a", "b", None])), max_size=12),
       st.lists(st.floats(0.0, 1.0), min_size=4, max_size=4),
       st.dictionaries(st.sampled_from(["a", "b"]), st.integers(0, 80 * GIB)),
       st.dictionaries(st.sampled_from(["a", "b"]), st.lists(st.sampled_from("0123"),
                                                              unique=True)))
def test_any_cycle_gives_whole_budgets(
        procs: list[tuple[int, int, int, str | None]], headrooms: list[float],
        kvs: dict[str, int], configured: dict[str, list[str]]) -> None:
    samples: list[Sample] = []
    for gpu, ratio in enumerate(headrooms):
        labels = make_labels(node="n", gpu=str(gpu), uuid=f"u{gpu}", model="M")
        samples += [Sample("gpu_memory_total_bytes", labels, 80.0 * GIB, 1.0),
                    Sample("gpu_memory_headroom_ratio", labels, ratio, 1.0)]
    owners = {}
    for gpu, pid, used, owner in procs:
        labels = make_labels(node="n", gpu=str(gpu), uuid=f"u{gpu}", model="M", pid=str(pid))
        samples.append(Sample("gpu_process_memory_used_bytes", labels, float(used), 1.0))
        if owner is not None:
            owners[pid] = owner
    samples += [kv(server, value) for server, value in kvs.items()]
    table = parts(budget(samples, owners, configured))
    assert_whole(table, dict.fromkeys("0123", 80.0 * GIB))
