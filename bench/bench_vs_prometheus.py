"""gpuwarden against Prometheus on the same work, side by side in one run.

What an SRE would run instead of gpuwarden for the inference-server half of its job is a
Prometheus scraping the servers' ``/metrics`` and evaluating alert rules. Both run here
at once, on loopback, each with its own payload servers answering the recorded vLLM 0.32
CPU scrape (``tests/fixtures/metrics/vllm-0.32-cpu-after-load.prom``) on N ports with
its counters and histograms advancing on every GET:

- Prometheus (Debian's ``prometheus``) at ``scrape_interval: 1s`` and
  ``evaluation_interval: 1s`` with rules equivalent to gpuwarden's server defaults,
  written against vLLM's own names (:data:`RULES`);
- ``gpuwarden run`` at ``interval = "1s"`` with its default rules, SQLite, and no GPU
  source (``[gpu] source = "off"``), so that both do the same job.

Measured from outside, per process: CPU from ``/proc/PID/stat``, RSS from
``/proc/PID/status``, bytes written from ``write_bytes`` of ``/proc/PID/io``, and the
samples each one stored (gpuwarden's ``gpuwarden_samples_written_total``, Prometheus'
``prometheus_tsdb_head_samples_appended_total``), over consecutive windows of both
processes at once; the figures are the medians over the windows (the two run at the same
time, so a window disturbed by the machine disturbs both). Also: sockets left in
TIME-WAIT on the payload ports at the end (a scraper that reuses its connections leaves
none), the time from start to the first ``/metrics`` answer, and the disk each keeps
per stored sample at the end.

    .venv/bin/python -m bench.bench_vs_prometheus [--servers 1,4,16] [--seconds 60]
    .venv/bin/python -m bench vs-prometheus --quick
    # 10 minutes in minute-long windows: work done once a minute and growing windows count
    .venv/bin/python -m bench vs-prometheus --servers 4 --seconds 540 --window 60 --warmup 60
    # Prometheus also recording gpuwarden's window signals (what its dashboards show)
    .venv/bin/python -m bench vs-prometheus --window-signals

Skips (exit 0, with a message) where no ``prometheus`` binary is installed; ``.ci/run``
installs it (``apt-get install prometheus``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.bench_daemon import (
    PAYLOAD,
    AdvancingPayload,
    cpu_seconds,
    free_port,
    metric,
    rss_mib,
    serve_payloads,
)

#: Prometheus rules equivalent to gpuwarden's server-side default rules (the ones with a
#: PromQL form; ``gpuwarden rules export`` writes the same rules over gpuwarden's names).
RULES = """\
groups:
- name: vllm
  rules:
  - alert: KVCacheNearFull
    expr: max by (instance, model_name) (vllm:kv_cache_usage_perc) > 0.9
    for: 30s
  - alert: KVCacheSaturationSoon
    expr: predict_linear(vllm:kv_cache_usage_perc[30s], 300) > 1
  - alert: TokenLatencyP95High
    expr: histogram_quantile(0.95, sum by (instance, model_name, le)
      (rate(vllm:inter_token_latency_seconds_bucket[1m]))) > 0.13
    for: 30s
  - alert: TTFTP95High
    expr: histogram_quantile(0.95, sum by (instance, model_name, le)
      (rate(vllm:time_to_first_token_seconds_bucket[1m]))) > 2
    for: 1m
  - alert: ServerDown
    expr: up == 0
    for: 30s
  - alert: PreemptionsRising
    expr: sum by (instance, model_name) (rate(vllm:num_preemptions_total[2m])) > 0.1
    for: 1m
  - alert: PrefixCacheHitFalling
    expr: (sum by (instance, model_name) (increase(vllm:prefix_cache_hits_total[5m] offset 5m))
      / sum by (instance, model_name) (increase(vllm:prefix_cache_queries_total[5m] offset 5m)))
      - (sum by (instance, model_name) (increase(vllm:prefix_cache_hits_total[5m]))
      / sum by (instance, model_name) (increase(vllm:prefix_cache_queries_total[5m]))) > 0.2
    for: 1m
  - alert: QueueGrowing
    expr: delta(vllm:num_requests_waiting[1m]) > 5 and delta(vllm:num_requests_running[1m]) < 1
    for: 30s
"""

#: vLLM's histograms behind gpuwarden's ``LATENCY_HISTOGRAMS`` (p50/p95/p99 of each).
_LATENCY_HISTOGRAMS = ("time_to_first_token_seconds", "inter_token_latency_seconds",
                       "e2e_request_latency_seconds", "request_queue_time_seconds",
                       "request_prefill_time_seconds", "request_decode_time_seconds")
#: (ratio, hits counter, queries counter) behind gpuwarden's ``increase_ratio`` signals.
_RATIOS = (("prefix_cache_hit", "prefix_cache_hits_total", "prefix_cache_queries_total"),
           ("kv_offload_hit", "external_prefix_cache_hits_total",
            "external_prefix_cache_queries_total"),
           ("spec_decode_acceptance", "spec_decode_num_accepted_tokens_total",
            "spec_decode_num_draft_tokens_total"))


def window_signal_rules() -> str:
    """Recording rules for what gpuwarden computes besides its alert rules and exports on
    ``/metrics``: its window signals (``promql/derived.py``), at gpuwarden's cadence
    (every 5 s; the hour-long KV capacity once a minute). With them Prometheus does the
    work gpuwarden does for its dashboards, not only its alerts (``--window-signals``).
    The capacity's join of the p95 lengths to ``kv_cache_size_tokens`` (a label of
    ``vllm:cache_config_info``) is left out: reading the hour of buckets is the work."""
    quantiles = "".join(
        f"  - record: vllm:{h}:p{round(q * 100)}_1m\n"
        f"    expr: histogram_quantile({q}, rate(vllm:{h}_bucket[1m]))\n"
        for h in _LATENCY_HISTOGRAMS for q in (0.5, 0.95, 0.99))
    ratios = "".join(
        f"  - record: vllm:{name}_ratio:1m\n"
        f"    expr: increase(vllm:{hits}[1m]) / (increase(vllm:{queries}[1m]) > 0)\n"
        for name, hits, queries in _RATIOS)
    return (
        "- name: window-signals\n  interval: 5s\n  rules:\n" + quantiles
        + "  - record: vllm:generation_tokens:rate1m\n"
        "    expr: rate(vllm:generation_tokens_total[1m])\n" + ratios
        + "- name: window-signals-hourly\n  interval: 1m\n  rules:\n"
        "  - record: vllm:request_length_tokens:p95_sum_1h\n"
        "    expr: histogram_quantile(0.95, rate(vllm:request_prompt_tokens_bucket[1h]))\n"
        "      + histogram_quantile(0.95, rate(vllm:request_generation_tokens_bucket[1h]))\n")


def prometheus_rules(window_signals: bool) -> str:
    """The Prometheus side's rule file: :data:`RULES`, and with ``window_signals``
    :func:`window_signal_rules` too."""
    return RULES + (window_signal_rules() if window_signals else "")


@dataclass
class Reading:
    cpu: float
    written: float  # bytes, /proc/PID/io write_bytes
    samples: float
    cycles: float


@dataclass
class Side:
    name: str
    proc: subprocess.Popen[bytes]
    metrics_url: str
    data: Path  # what it keeps on disk
    ports: list[int]
    first_answer_s: float | None = None
    windows: list[tuple[float, float, float, float]] = field(default_factory=list)
    # (cpu s, bytes written, samples stored, cycles) per window

    def read(self, session: requests.Session) -> Reading:
        text = session.get(self.metrics_url, timeout=5).text
        if self.name == "gpuwarden":
            samples = metric(text, "gpuwarden_samples_written_total")
            cycles = metric(text, "gpuwarden_cycles_total")
        else:
            samples = metric(text, "prometheus_tsdb_head_samples_appended_total")
            # One scrape of every target per second: the cycle is the scrape interval.
            cycles = time.monotonic()
        return Reading(cpu_seconds(self.proc.pid), write_bytes(self.proc.pid), samples, cycles)


def write_bytes(pid: int) -> float:
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return float(line.split()[1])
    return 0.0


def time_wait(ports: list[int]) -> int:
    """Sockets in TIME-WAIT (state 06) whose remote end is one of ``ports``."""
    wanted = {f"{p:04X}" for p in ports}
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if fields[3] == "06" and fields[2].rsplit(":", 1)[1] in wanted:
                count += 1
    return count


def disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() \
        else sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def first_answer(url: str, started: float, proc: subprocess.Popen[bytes],
                 must_contain: str, timeout: float = 60.0) -> float | None:
    """Seconds from ``started`` to the first ``/metrics`` answer holding ``must_contain``."""
    session = requests.Session()
    while time.perf_counter() - started < timeout and proc.poll() is None:
        try:
            resp = session.get(url, timeout=1)
            if resp.ok and must_contain in resp.text:
                return time.perf_counter() - started
        except requests.RequestException:
            pass
        time.sleep(0.005)
    return None


def start_prometheus(work: Path, ports: list[int], window_signals: bool) -> Side:
    port = free_port()
    targets = ", ".join(f"'127.0.0.1:{p}'" for p in ports)
    (work / "rules.yml").write_text(prometheus_rules(window_signals))
    (work / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        f"rule_files: ['{work / 'rules.yml'}']\n"
        f"scrape_configs:\n- job_name: vllm\n  static_configs:\n  - targets: [{targets}]\n")
    data = work / "prometheus-data"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [shutil.which("prometheus") or "prometheus", f"--config.file={work / 'prometheus.yml'}",
         f"--storage.tsdb.path={data}", f"--web.listen-address=127.0.0.1:{port}",
         "--storage.tsdb.retention.time=1h"],
        stdout=subprocess.DEVNULL, stderr=open(work / "prometheus.log", "wb"))  # noqa: SIM115
    side = Side("prometheus", proc, f"http://127.0.0.1:{port}/metrics", data, ports)
    side.first_answer_s = first_answer(side.metrics_url, started, proc, "prometheus_tsdb")
    return side


def start_gpuwarden(work: Path, ports: list[int]) -> Side:
    port = free_port()
    servers = "".join(f'[[servers]]\nname = "vllm-{i}"\nkind = "vllm"\n'
                      f'metrics_url = "http://127.0.0.1:{p}/metrics"\n'
                      for i, p in enumerate(ports))
    db = work / "gpuwarden.db"
    (work / "gpuwarden.toml").write_text(
        f'node = "bench"\ninterval = "1s"\nlisten = "127.0.0.1:{port}"\n'
        f'[storage]\nurl = "sqlite:///{db}"\n[gpu]\nsource = "off"\n{servers}')
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "gpuwarden.cli.main", "run", "--config",
         str(work / "gpuwarden.toml")],
        stdout=subprocess.DEVNULL, stderr=open(work / "gpuwarden.log", "wb"))  # noqa: SIM115
    side = Side("gpuwarden", proc, f"http://127.0.0.1:{port}/metrics", db, ports)
    side.first_answer_s = first_answer(side.metrics_url, started, proc,
                                       "gpuwarden_kv_cache_usage_ratio")
    return side


def stop(side: Side) -> None:
    if side.proc.poll() is None:
        side.proc.send_signal(signal.SIGTERM)
        try:
            side.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            side.proc.kill()
            side.proc.wait(timeout=5)


@dataclass
class Result:
    servers: int
    cpu_ms: dict[str, float]
    cpu_per_sample_us: dict[str, float]
    samples_per_cycle: dict[str, float]
    written_per_sample: dict[str, float]
    disk_per_sample: dict[str, float]
    rss_mib: dict[str, float]
    time_wait: dict[str, int]
    first_answer_ms: dict[str, float | None]
    cpu_ratio_per_window: list[float]


def run_one(n: int, seconds: float, window: float, warmup: float,
            window_signals: bool = False) -> Result:
    body = PAYLOAD.read_text()
    # Each side its own payload servers, so both see every counter advance alike.
    servers = {name: [server for _ in range(n)
                      for server in serve_payloads(AdvancingPayload(body).render, 1)]
               for name in ("gw", "prom")}
    ports = {name: [s.server_address[1] for s in srv] for name, srv in servers.items()}
    work = Path(tempfile.mkdtemp(prefix="gpuwarden-vs-prom-"))
    sides: list[Side] = []
    session = requests.Session()
    try:
        sides = [start_gpuwarden(work, ports["gw"]),
                 start_prometheus(work, ports["prom"], window_signals)]
        for side in sides:
            if side.first_answer_s is None:
                raise RuntimeError(f"{side.name} did not answer /metrics; see {work}")
        time.sleep(warmup)
        before = {s.name: s.read(session) for s in sides}
        stored0 = dict.fromkeys(before, 0.0)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(min(window, max(end - time.monotonic(), 0.0)))
            now = {s.name: s.read(session) for s in sides}
            for s in sides:
                a, b = before[s.name], now[s.name]
                s.windows.append((b.cpu - a.cpu, b.written - a.written, b.samples - a.samples,
                                  b.cycles - a.cycles))
                stored0[s.name] = b.samples
            before = now
        rss = {s.name: rss_mib(s.proc.pid)["VmRSS"] for s in sides}
        tw = {s.name: time_wait(s.ports) for s in sides}
        disk = {s.name: disk_bytes(s.data) / max(stored0[s.name], 1.0) for s in sides}
    finally:
        for side in sides:
            stop(side)
        for srv in servers.values():
            for server in srv:
                server.shutdown()
    shutil.rmtree(work, ignore_errors=True)

    def med(side: Side, f: int, per: int | None = None) -> float:
        return statistics.median(w[f] / w[per] if per is not None else w[f]
                                 for w in side.windows if per is None or w[per] > 0)

    by = {s.name: s for s in sides}
    cpu_ms = {name: 1000 * med(s, 0, 3) for name, s in by.items()}
    ratios = [g[0] / g[3] / (p[0] / p[3]) for g, p in zip(by["gpuwarden"].windows,
                                                         by["prometheus"].windows, strict=False)
              if g[3] > 0 and p[3] > 0 and p[0] > 0]
    return Result(
        servers=n, cpu_ms=cpu_ms,
        cpu_per_sample_us={name: 1e6 * med(s, 0, 2) for name, s in by.items()},
        samples_per_cycle={name: med(s, 2, 3) for name, s in by.items()},
        written_per_sample={name: med(s, 1, 2) for name, s in by.items()},
        disk_per_sample=disk, rss_mib=rss, time_wait=tw,
        first_answer_ms={name: None if s.first_answer_s is None else 1000 * s.first_answer_s
                         for name, s in by.items()},
        cpu_ratio_per_window=ratios)


def report(results: list[Result], seconds: float, window: float, warmup: float,
           window_signals: bool = False) -> None:
    g, p = "gpuwarden", "prometheus"
    rules = ("alert rules and recording rules for gpuwarden's window signals"
             if window_signals else "alert rules")
    print(f"\n## gpuwarden vs Prometheus ({rules}), one run ({seconds:.0f} s per row in "
          f"{window:.0f} s windows after {warmup:.0f} s, medians; {os.cpu_count()} cores)\n")
    print("| servers | gpuwarden CPU/cycle | Prometheus CPU/cycle | ratio (per-window "
          "range) | CPU per stored sample, ratio | samples/cycle g / P |")
    print("|---|---|---|---|---|---|")
    for r in results:
        lo, hi = (min(r.cpu_ratio_per_window), max(r.cpu_ratio_per_window)) \
            if r.cpu_ratio_per_window else (float("nan"), float("nan"))
        per_sample = r.cpu_per_sample_us[g] / r.cpu_per_sample_us[p]
        print(f"| {r.servers} | {r.cpu_ms[g]:.1f} ms | {r.cpu_ms[p]:.1f} ms | "
              f"{r.cpu_ms[g] / r.cpu_ms[p]:.2f}x ({lo:.2f}-{hi:.2f}) | "
              f"{r.cpu_per_sample_us[g]:.1f} vs {r.cpu_per_sample_us[p]:.1f} us = "
              f"{per_sample:.1f}x | {r.samples_per_cycle[g]:.0f} / "
              f"{r.samples_per_cycle[p]:.0f} |")
    print("\n| servers | bytes written per stored sample g / P (ratio) | disk per stored "
          "sample at the end g / P | RSS g / P | TIME-WAIT sockets g / P | first /metrics "
          "answer g / P |")
    print("|---|---|---|---|---|---|")
    for r in results:
        fa = " / ".join("-" if r.first_answer_ms[s] is None else f"{r.first_answer_ms[s]:.0f} ms"
                        for s in (g, p))
        print(f"| {r.servers} | {r.written_per_sample[g]:.1f} / {r.written_per_sample[p]:.1f} B "
              f"({r.written_per_sample[g] / max(r.written_per_sample[p], 1e-9):.1f}x) | "
              f"{r.disk_per_sample[g]:.1f} / {r.disk_per_sample[p]:.1f} B | "
              f"{r.rss_mib[g]:.1f} / {r.rss_mib[p]:.1f} MiB | {r.time_wait[g]} / "
              f"{r.time_wait[p]} | {fa} |")
    print("\nTargets (issue 14): CPU per cycle <= Prometheus at 4 and 16 servers, <= 1.5x at 1; "
          "bytes written per stored sample <= 2x Prometheus; no TIME-WAIT in steady state.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="1,4,16", help="comma-separated N (default 1,4,16)")
    parser.add_argument("--seconds", type=float, help="measured seconds per N (default 60, "
                        "--quick 20)")
    parser.add_argument("--window", type=float, default=10.0, help="window length, seconds "
                        "(CPU is counted in 10 ms ticks: 1 ms a cycle at 10 s)")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds both run before "
                        "the first window (default 10; the rules' 10-minute windows fill "
                        "over the first 10 minutes)")
    parser.add_argument("--window-signals", action="store_true", help="Prometheus also "
                        "records gpuwarden's window signals (p50/p95/p99 of six histograms, "
                        "token rate, hit ratios, hour-long length p95s) at gpuwarden's "
                        "cadence: the dashboards' work as well as the alerts'")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if shutil.which("prometheus") is None:
        print("bench_vs_prometheus: skipped, no `prometheus` binary on PATH "
              "(apt-get install prometheus)")
        return 0
    seconds = args.seconds or (20.0 if args.quick else 60.0)
    counts = [int(x) for x in args.servers.split(",") if x.strip()]
    results = []
    for n in counts:
        print(f"running N = {n} ...", file=sys.stderr, flush=True)
        results.append(run_one(n, seconds, args.window, warmup=args.warmup,
                               window_signals=args.window_signals))
    report(results, seconds, args.window, args.warmup, args.window_signals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
