"""NvmlCollector against the fake NVML module, one test group per recorded scenario:
finding the GPUs, lost GPUs, no driver, XID events, lifecycle (what one GPU's fields
read as is in test_nvml_device.py).

The fake goes in at the collector's import seam (``nvml=fake``), so every test runs the
same code the real driver would; assertions are what a user checks on a dashboard.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path

import pytest

from gpuwarden.collector.nvml import NvmlCollector
from gpuwarden.model import Sample
from gpuwarden.signals import GPU_LABELS, SIGNALS
from tests.collector.fake_pynvml import FIXTURES, FakeNvml, load

MIB = 1048576
H100 = "NVIDIA H100 80GB HBM3"
REPO = Path(__file__).resolve().parents[2]


def by(samples: Iterable[Sample], signal: str) -> dict[str, float]:
    """``{gpu label: value}`` for one signal (pid/type labels folded into the key)."""
    out: dict[str, float] = {}
    for s in samples:
        if s.signal == signal:
            labels = dict(s.labels)
            key = labels["gpu"]
            for extra in ("pid", "type"):
                if extra in labels:
                    key += f":{labels[extra]}"
            out[key] = s.value
    return out


def run(scenario: str, cycles: int = 1) -> tuple[FakeNvml, NvmlCollector, list[Sample]]:
    fake = load(scenario)
    collector = NvmlCollector("node-a", nvml=fake)
    samples: list[Sample] = []
    for i in range(cycles):
        if i:
            fake.advance()
        samples = list(collector.collect())
    return fake, collector, samples


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.name)
def test_every_scenario_says_where_it_comes_from(path: Path) -> None:
    fake = FakeNvml.from_file(str(path))
    origin = fake.scenario["origin"]
    assert "recorded" in origin or ("constructed" in origin and "no GPU" in origin)
    assert re.fullmatch(r"nvml-[a-z0-9-]+\.json", path.name)


def test_healthy_8xh100_reports_every_gpu_with_identity_labels() -> None:
    fake, _, samples = run("nvml-8xh100-healthy.json")
    up = by(samples, "gpu_up")
    assert up == {str(i): 1.0 for i in range(8)}
    for s in samples:
        assert s.signal in SIGNALS
        labels = dict(s.labels)
        assert set(GPU_LABELS) <= labels.keys()
        assert labels["node"] == "node-a" and labels["model"] == H100
        assert labels["uuid"].startswith("GPU-")
    assert len({dict(s.labels)["uuid"] for s in samples}) == 8
    assert by(samples, "gpu_memory_total_bytes") == {str(i): 81559 * MIB for i in range(8)}
    # v2 used excludes driver-reserved memory.
    assert by(samples, "gpu_memory_used_bytes")["0"] == 73210 * MIB
    util = by(samples, "gpu_utilization_ratio")
    assert util["0"] == pytest.approx(0.87) and util["7"] == 0.0
    assert by(samples, "gpu_power_watts")["0"] == pytest.approx(540.137)
    assert by(samples, "gpu_power_limit_watts")["3"] == 700.0
    assert by(samples, "gpu_sm_clock_hertz")["0"] == 1980e6
    assert by(samples, "gpu_sm_clock_hertz")["4"] == 1755e6
    assert by(samples, "gpu_memory_clock_hertz")["0"] == 2619e6
    assert by(samples, "gpu_temperature_celsius")["1"] == 59.0
    reasons = by(samples, "gpu_throttle_reasons")
    assert reasons["4"] == 0x4 and reasons["7"] == 0x1 and reasons["0"] == 0
    assert by(samples, "gpu_ecc_errors_total")["0:uncorrected"] == 0.0
    assert by(samples, "gpu_process_memory_used_bytes")["2:41874"] == (73216 - 512) * MIB
    assert by(samples, "gpu_xid_errors_total") == {str(i): 0.0 for i in range(8)}
    assert fake.calls["nvmlInit"] == 1


def test_handles_and_names_are_cached_and_steps_replay() -> None:
    fake, collector, _ = run("nvml-8xh100-healthy.json")
    fake.advance()
    samples = list(collector.collect())
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == 8
    assert fake.calls["nvmlDeviceGetName"] == 8
    assert by(samples, "gpu_utilization_ratio")["0"] == pytest.approx(0.62)
    assert by(samples, "gpu_throttle_reasons")["7"] == 0


def test_collector_does_not_touch_nvml_before_first_collect() -> None:
    fake = load("nvml-8xh100-healthy.json")
    NvmlCollector("node-a", nvml=fake)
    assert sum(fake.calls.values()) == 0


def test_lost_gpu_reports_up_zero_with_cached_labels_and_others_carry_on() -> None:
    fake, collector, _ = run("nvml-gpu-lost.json")
    before = {dict(s.labels)["gpu"]: s.labels for s in _ups(collector, fake, advance=False)}
    fake.advance()
    samples = list(collector.collect())
    up = by(samples, "gpu_up")
    assert up["3"] == 0.0
    assert all(up[str(i)] == 1.0 for i in range(8) if i != 3)
    lost = next(s for s in samples if s.signal == "gpu_up" and s.value == 0.0)
    assert lost.labels == before["3"]  # same series as when it was healthy
    assert "3" not in by(samples, "gpu_utilization_ratio")
    assert "3" not in by(samples, "gpu_memory_used_bytes")
    assert len(by(samples, "gpu_utilization_ratio")) == 7
    # The XID 79 that came with the loss is counted on the lost GPU's series.
    assert by(samples, "gpu_xid_errors_total")["3"] == 1.0
    assert collector.last_xid[3] == 79


def _ups(collector: NvmlCollector, fake: FakeNvml, advance: bool) -> list[Sample]:
    if advance:
        fake.advance()
    return [s for s in collector.collect() if s.signal == "gpu_up"]


def test_gpu_lost_from_the_start_still_reports_up_zero() -> None:
    fake = load("nvml-gpu-lost.json")
    fake.advance()  # GPU 3 already lost when the daemon starts
    samples = list(NvmlCollector("node-a", nvml=fake).collect())
    assert by(samples, "gpu_up")["3"] == 0.0
    lost = dict(next(s for s in samples if s.signal == "gpu_up" and s.value == 0.0).labels)
    assert lost == {"node": "node-a", "gpu": "3", "uuid": "", "model": ""}
    assert sum(v for v in by(samples, "gpu_up").values()) == 7


def test_lost_gpu_logs_once(caplog: pytest.LogCaptureFixture) -> None:
    _, collector, _ = run("nvml-gpu-lost.json", cycles=2)
    assert any("is lost" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gpuwarden.collector.nvml"):
        for _ in range(5):
            collector.collect()
    assert not [r for r in caplog.records if "lost" in r.getMessage()]


def test_xid_counter_increments_after_event_steps(caplog: pytest.LogCaptureFixture) -> None:
    fake, collector, samples = run("nvml-xid-event.json")
    assert by(samples, "gpu_xid_errors_total")["2"] == 0.0
    with caplog.at_level(logging.WARNING, logger="gpuwarden.collector.nvml"):
        fake.advance()
        xid = by(collector.collect(), "gpu_xid_errors_total")
        assert xid["2"] == 1.0 and xid["5"] == 0.0
        assert collector.last_xid == {2: 31}
        fake.advance()
        samples = list(collector.collect())
    xid = by(samples, "gpu_xid_errors_total")
    assert xid["2"] == 2.0 and xid["5"] == 1.0 and xid["0"] == 0.0
    assert collector.last_xid == {2: 43, 5: 48}
    assert by(samples, "gpu_ecc_errors_total")["5:uncorrected"] == 1.0
    assert any("XID 48" in r.getMessage() for r in caplog.records)
    fake.advance()
    assert by(collector.collect(), "gpu_xid_errors_total")["2"] == 2.0  # nothing new


def test_no_driver_logs_one_line_and_retries_rarely(caplog: pytest.LogCaptureFixture) -> None:
    fake = load("nvml-no-driver.json")
    now = [1000.0]
    collector = NvmlCollector("node-a", nvml=fake, monotonic=lambda: now[0])
    with caplog.at_level(logging.DEBUG, logger="gpuwarden.collector.nvml"):
        for _ in range(50):
            assert list(collector.collect()) == []
            now[0] += 1.0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "no NVIDIA driver found" in warnings[0].getMessage()
    assert "GPU metrics disabled" in warnings[0].getMessage()
    assert fake.calls["nvmlInit"] == 1
    now[0] += 300.0
    assert list(collector.collect()) == []
    assert fake.calls["nvmlInit"] == 2
    assert not collector.available


def test_missing_pynvml_module_is_no_driver(caplog: pytest.LogCaptureFixture,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` fail
    collector = NvmlCollector("node-a")
    with caplog.at_level(logging.WARNING, logger="gpuwarden.collector.nvml"):
        for _ in range(3):
            assert list(collector.collect()) == []
    assert len(caplog.records) == 1
    assert "no NVIDIA driver found" in caplog.records[0].getMessage()


def test_driver_appearing_later_is_picked_up() -> None:
    fake = load("nvml-no-driver.json")
    now = [0.0]
    collector = NvmlCollector("node-a", nvml=fake, monotonic=lambda: now[0])
    assert list(collector.collect()) == []
    healthy = load("nvml-8xh100-healthy.json")
    fake.scenario = {**healthy.scenario, "init_error": None}
    fake._apply_step(0)
    now[0] += 301.0
    assert len(by(collector.collect(), "gpu_up")) == 8


def test_close_frees_event_set_and_shuts_down() -> None:
    fake, collector, _ = run("nvml-8xh100-healthy.json")
    assert fake.initialised and fake.open_event_sets == 1
    collector.close()
    assert not fake.initialised and fake.open_event_sets == 0
    collector.close()  # idempotent
    assert fake.calls["nvmlShutdown"] == 1


def test_call_timing_stats_cover_every_nvml_function_used() -> None:
    fake, collector, _ = run("nvml-8xh100-healthy.json", cycles=3)
    stats = collector.call_stats
    assert stats["nvmlDeviceGetUtilizationRates"].calls == 24
    assert stats["nvmlDeviceGetClockInfo"].calls == 48
    assert set(stats) == {name for name, n in fake.calls.items() if n}
    assert all(s.seconds >= 0 and s.mean_seconds >= 0 for s in stats.values())


def test_recorded_state_replays_to_the_same_samples() -> None:
    """What ``bench --record`` writes, fed back to the fake, gives identical samples."""
    _, collector, samples = run("nvml-not-supported-fields.json")
    recorded = {"origin": "test", "missing_functions": sorted(collector.missing_functions),
                "steps": [{"devices": collector.last_states}]}
    again = list(NvmlCollector("node-a", nvml=FakeNvml(recorded), clock=lambda: 0).collect())
    assert sorted((s.signal, s.labels, s.value) for s in again) == sorted(
        (s.signal, s.labels, s.value) for s in samples)


def test_pynvml_is_imported_only_by_the_nvml_collector() -> None:
    pattern = re.compile(r"^\s*(import\s+pynvml|from\s+pynvml\s+import)", re.MULTILINE)
    offenders = [
        str(path.relative_to(REPO))
        for path in (REPO / "gpuwarden").rglob("*.py")
        if pattern.search(path.read_text())
    ]
    assert offenders == ["gpuwarden/collector/nvml.py"]
