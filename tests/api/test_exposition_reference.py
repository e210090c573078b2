"""The hand-written ``/metrics`` renderer prints what prometheus_client printed, byte for byte.

``reference_body`` is the renderer the daemon used before (a custom prometheus_client
collector over the snapshot, ``generate_latest`` over a registry with the
``ProcessCollector``), kept here verbatim as the reference. The snapshot is a realistic
one: the recorded vLLM 0.32 payload mapped for two servers (one serving a model whose
name needs escaping), simulated GPUs, window quantiles of histograms whose raw buckets
stay internal, NaN/Inf/huge values, and the daemon's own self-metrics.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector as PromCollector

from gpuwarden import __version__
from gpuwarden.api.exposition import Exposition, Snapshot
from gpuwarden.api.process_metrics import ProcessMetrics
from gpuwarden.collector.promtext import parse
from gpuwarden.collector.registry import SERVER_KINDS
from gpuwarden.collector.servers.base import map_exposition
from gpuwarden.collector.sim import SimulatedGpuCollector
from gpuwarden.daemon.self_metrics import CycleStats, cycle_metrics, sample_flow_metrics
from gpuwarden.model import Sample, SelfMetric, make_labels
from gpuwarden.promql.gofloat import go_float
from gpuwarden.signals import SIGNALS, Kind

PAYLOAD = Path(__file__).resolve().parent.parent / "fixtures" / "metrics" / \
    "vllm-0.32-cpu-after-load.prom"
PREFIX = "gpuwarden_"
TS = 1_700_000_000.0


# --- the reference: the prometheus_client renderer the daemon used before -------------------

class _SnapshotCollector(PromCollector):
    def __init__(self, snapshot: Snapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        yield from _signal_families(snap.samples)
        for sm in snap.self_metrics:
            metric = Metric(PREFIX + sm.name, sm.help, sm.kind)
            sample_name = PREFIX + sm.name + ("_total" if sm.kind == "counter" else "")
            for labels, value in sm.samples:
                metric.add_sample(sample_name, dict(labels), value)
            yield metric
        if snap.info:
            info = Metric(PREFIX + "build", "gpuwarden version and data sources", "info")
            info.add_sample(PREFIX + "build_info", {"version": __version__, **snap.info}, 1.0)
            yield info


def _signal_families(samples: Iterable[Sample]) -> Iterator[Metric]:
    grouped: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        grouped[sample.signal].append(sample)
    for signal, group in sorted(grouped.items()):
        spec = SIGNALS.get(signal)
        if spec is None or spec.kind is Kind.HISTOGRAM:
            if spec is not None and group and any(k == "quantile" for k, _ in group[0].labels):
                metric = Metric(PREFIX + signal, spec.help + " (quantiles over the window)",
                                "summary")
                for s in group:
                    metric.add_sample(PREFIX + signal, dict(s.labels), s.value)
                yield metric
            continue
        is_counter = spec.kind is Kind.COUNTER
        base = PREFIX + (signal[: -len("_total")] if is_counter else signal)
        metric = Metric(base, spec.help, "counter" if is_counter else "gauge")
        sample_name = base + "_total" if is_counter else base
        for s in group:
            metric.add_sample(sample_name, dict(s.labels), s.value)
        yield metric


def reference_body(snapshot: Snapshot) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry)


# --- a realistic snapshot ---------------------------------------------------------------------

def server_samples(server: str, model: str) -> list[Sample]:
    """The recorded payload, its model renamed (``model`` as the text format escapes it)."""
    text = PAYLOAD.read_text(encoding="utf-8").replace('model_name="tiny-llama"',
                                                       f'model_name="{model}"')
    return map_exposition(SERVER_KINDS.load("vllm"), parse(text), node="node-a",
                          server=server, ts=TS)


def quantiles(samples: list[Sample]) -> list[Sample]:
    """p50/p95/p99 per server and model of each histogram, as promql/derived.py labels
    them; one is NaN (no requests in the window), one +Inf (past the last bucket)."""
    out = []
    hists = sorted({s.signal[: -len("_bucket")] for s in samples if s.signal.endswith("_bucket")})
    values = [0.0123, math.nan, math.inf, 1234567.5, 2.5e-7]
    for i, hist in enumerate(h for h in hists if h in SIGNALS):
        series = {tuple(kv for kv in s.labels if kv[0] != "le") for s in samples
                  if s.signal == hist + "_bucket"}
        for labels in sorted(series):
            for j, q in enumerate(("0.5", "0.95", "0.99")):
                out.append(Sample(hist, (*labels, ("quantile", q)), values[(i + j) % 5], TS))
    return out


def self_families() -> tuple[SelfMetric, ...]:
    stats = CycleStats(cycles_total=12345678, cycle_errors_total=2, samples_collected_total=10**9,
                       last_cycle_seconds=0.0123456789)
    odd = SelfMetric("collector_errors", "counter", 'Errors by collector\nand "reason" \\ kind',
                     (({"collector": 'vllm "a"\\b\nc', "reason": "timeout"}, 3.0),
                      ({"reason": "parse", "collector": "sim"}, 0.0)))
    info = SelfMetric("dispatcher", "info", "A family of another type", (({"state": "up"}, 1.0),))
    return (*cycle_metrics(stats), *sample_flow_metrics(stats, None), odd, info)


def realistic_snapshot() -> Snapshot:
    samples = server_samples("vllm-0", "tiny-llama") + server_samples(
        "vllm-1", r'odd \"model\"\\name\nwith é')
    samples += SimulatedGpuCollector("node-a", 4, seed=7, clock=lambda: TS).collect()
    samples += quantiles(samples)
    samples.append(Sample("gpu_up", make_labels(node="node-a", gpu="9", uuid="GPU-9",
                                                model="H100", **{"9bad-label": "x"}), 1.0, TS))
    return Snapshot(samples=tuple(samples), self_metrics=self_families(),
                    info={"node": "node-a", "gpu_source": "sim"})


def test_snapshot_covers_what_the_daemon_exports() -> None:
    """The comparison below is only as good as its snapshot: quantile families, skipped
    raw buckets, escaped label values and self-metrics must all be in it."""
    snap = realistic_snapshot()
    body = reference_body(snap).decode()
    assert "# TYPE gpuwarden_ttft_seconds summary" in body
    assert 'quantile="0.95"' in body and "_bucket" not in body
    assert r'model="odd \"model\"\\name\nwith é"' in body
    assert " NaN\n" in body and " +Inf\n" in body and "e+06\n" in body
    assert "gpuwarden_cycles_total 1.2345678e+07\n" in body
    assert "gpuwarden_build_info{" in body
    assert '_bad_label="x"' in body  # a label name the text format cannot spell
    assert len(snap.samples) > 400


def test_renders_what_prometheus_client_rendered() -> None:
    snap = realistic_snapshot()
    exposition = Exposition(process_metrics=False)
    assert exposition.render(snap) == reference_body(snap)
    # Again from the caches, then with other values and a series gone and one new.
    assert exposition.render(snap) == reference_body(snap)
    changed = (*(s._replace(value=s.value * 3 + 1) for s in snap.samples[1:]),
               Sample("gpu_up", make_labels(node="node-a", gpu="10"), 0.0, TS))
    later = Snapshot(samples=changed, self_metrics=snap.self_metrics)
    assert exposition.render(later) == reference_body(later)


def test_series_that_come_and_go_keep_the_caches_bounded() -> None:
    exposition = Exposition(process_metrics=False)
    for gpu in range(3000):
        snap = Snapshot(samples=(Sample("gpu_up", make_labels(gpu=str(gpu)), 1.0, TS),))
        assert exposition.render(snap) == reference_body(snap)
    cached = sum(len(f.prefixes) for f in exposition._renderer._families.values()
                 if f is not None)
    assert cached <= 1024 + 2


@pytest.mark.parametrize("value", [0.0, -0.0, 1.0, -1.5, 1e-300, 5e-324, 123456.0, 1234567.0,
                                   12345678.9, 1e16, 1.7976931348623157e308, -1234567.0,
                                   math.inf, -math.inf, math.nan, 3, True])
def test_floats_print_as_go_prints_them(value: float) -> None:
    from prometheus_client.utils import floatToGoString

    assert go_float(value) == floatToGoString(value)  # type: ignore[no-untyped-call]


def fake_proc(root: Path, limits: str) -> None:
    (root / "stat").write_text("cpu  1 2 3\nbtime 1700000000\nprocesses 5\n")
    pid = root / "42"
    (pid / "fd").mkdir(parents=True)
    for fd in range(7):
        (pid / "fd" / str(fd)).write_text("")
    fields = [str(n) for n in range(3, 53)]
    fields[11], fields[12], fields[19], fields[20], fields[21] = (
        "1234", "567", "890123", "987654321", "23456")
    (pid / "stat").write_text("42 (python3 (x)) " + " ".join(fields[:50]) + "\n")
    (pid / "limits").write_text(limits)


@pytest.mark.parametrize("limits", [
    "Limit                     Soft Limit           Hard Limit           Units\n"
    "Max open files            1024                 1048576              files\n",
    "Limit                     Soft Limit           Hard Limit           Units\n",
])
def test_process_families_are_prometheus_clients(tmp_path: Path, limits: str) -> None:
    fake_proc(tmp_path, limits)
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(namespace="gpuwarden", pid=lambda: 42, proc=str(tmp_path),
                     registry=registry)
    ours = ProcessMetrics(proc=str(tmp_path), pid="42").text().encode()
    if "Max open files" in limits:
        assert ours == generate_latest(registry)
    else:  # prometheus_client raised UnboundLocalError here; the other families stay
        assert b"gpuwarden_process_open_fds 7.0\n" in ours and b"max_fds" not in ours
    assert b"gpuwarden_process_resident_memory_bytes" in ours


def test_no_process_families_without_proc(tmp_path: Path) -> None:
    assert ProcessMetrics(proc=str(tmp_path / "none"), pid="42").text() == ""


def test_live_process_families_are_there() -> None:
    if not os.path.exists("/proc/self/stat"):
        pytest.skip("no /proc")
    body = Exposition().render(Snapshot()).decode()
    assert "gpuwarden_process_resident_memory_bytes " in body
    assert "gpuwarden_process_cpu_seconds_total " in body
