"""Daemon benchmark: start-up, CPU per cycle, RSS over time, /metrics serve time.

Runs ``gpuwarden run`` as a real subprocess (8 simulated GPUs + 4 servers on loopback
serving the recorded vLLM 0.32 payload, ~54 KB each, or a scaled-up one with
``--payload-kb``, its counters and histograms advancing on every GET) and measures it
from outside, as an operator would:

- time from ``exec`` to the first stored sample, against ``python -c pass`` (the
  interpreter's own start-up) run just before each start, and from that sample to the
  first ``/metrics`` answer holding the servers' samples (polled every 2 ms): medians
  of ``STARTS`` starts, each on a fresh database, the last of which goes on running;
- CPU per cycle and % of one core, from /proc/PID/stat over the run;
- RSS (VmRSS) after the run (10 minutes by default, ``--quick`` 60 s), against that of
  a bare process importing what the daemon imports (``DAEMON_IMPORTS``);
- time to serve /metrics against /healthz (a tiny JSON) over 300 requests each (mostly
  cached bytes), and of the GETs of a scraper polling every 15 s during the run (each
  the first read of a fresh snapshot);
- after the run, ``--fresh-gets`` more first reads of fresh snapshots by a scraper
  every 1.37 s (so at every point of the 1 s cycle in turn), for a p99 that the 15 s
  scraper's few dozen GETs cannot give.

Every GET is timed by a scraper in a process of its own (``bench/scraper.py``, which
says why), as Prometheus reads the daemon.

    .venv/bin/python -m bench.bench_daemon [--quick] [--seconds N] [--payload-kb N]
                                           [--fresh-gets N]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = ROOT / "tests" / "fixtures" / "metrics" / "vllm-0.32-cpu-after-load.prom"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scaled_payload(kb: int | None) -> bytes:
    """The recorded payload, scaled up by serving its vLLM series for more models (LoRA).

    The copies go inside each family's group, next to the recorded model's series, as
    a real vLLM serving several models prints them (the text format keeps a family's
    lines together).
    """
    base = PAYLOAD.read_bytes()
    if not kb or kb * 1024 <= len(base):
        return base
    groups: list[list[str]] = []
    family = None
    for line in base.decode().splitlines():
        parts = line.split(" ", 3)
        if line.startswith(("# HELP ", "# TYPE ")) and parts[2] != family:
            family = parts[2]
            groups.append([])
        elif not groups:
            groups.append([])
        groups[-1].append(line)
    per_model = sum(len(ln) - 3 for g in groups for ln in g  # "lora-N" is 4 chars shorter
                    if 'model_name="tiny-llama"' in ln and not ln.startswith("#"))
    copies = -(-(kb * 1024 - len(base)) // per_model)
    out = []
    for g in groups:
        out.extend(g)
        mine = [ln for ln in g if 'model_name="tiny-llama"' in ln and not ln.startswith("#")]
        for i in range(1, copies + 1):
            out.extend(ln.replace('model_name="tiny-llama"', f'model_name="lora-{i}"')
                       for ln in mine)
    return ("\n".join(out) + "\n").encode()


_COUNTER_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*?(?:_total|_count|_sum|_bucket))"
                           r"(\{[^}]*\})? (\S+)$")
_LE_LABEL = re.compile(r',?le="[^"]*"')
_HISTOGRAM_SUFFIX = re.compile(r"_(bucket|count|sum)$")


def _advance(name: str, labels: str) -> tuple[float, float]:
    """(offset, step per GET) of one cumulative series, from its histogram's identity.

    A histogram's buckets, count and sum share the identity (name without the suffix,
    labels without ``le``), so they advance together and stay cumulative; series of
    other models or labels get other offsets and rates, as under real traffic, where
    no two models' counters move in step.
    """
    rest = _LE_LABEL.sub("", labels or "").replace("{,", "{")
    identity = f"{_HISTOGRAM_SUFFIX.sub('', name)}{'' if rest == '{}' else rest}"
    h = zlib.crc32(identity.encode())
    offset, step = float(h % 1000), float(1 + (h >> 10) % 7)
    if name.endswith("_sum"):  # the observations' values: fractions of a second
        return offset * 0.125, step * 0.0625
    return offset, step


class AdvancingPayload:
    """The recorded scrape with every counter and histogram series advancing on every
    GET, as a server under steady traffic reports it: each series from its own offset
    at its own rate (:func:`_advance`), so copies of a model's series (``scaled_payload``)
    do not repeat one another's values, which would flatter what the daemon keeps."""

    def __init__(self, text: str) -> None:
        self._parts: list[tuple[str, float, float] | str] = []
        for line in text.splitlines():
            m = _COUNTER_LINE.match(line)
            if m and not line.startswith("#"):
                offset, step = _advance(m.group(1), m.group(2))
                self._parts.append((line[: m.start(3)], float(m.group(3)) + offset, step))
            else:
                self._parts.append(line)
        self._gets = 0
        self._lock = threading.Lock()

    def render(self) -> bytes:
        with self._lock:
            self._gets += 1
            k = self._gets
        out = [p if isinstance(p, str) else f"{p[0]}{p[1] + p[2] * k!r}" for p in self._parts]
        return ("\n".join(out) + "\n").encode()


def wait_healthy(session: requests.Session, port: int, timeout: float = 30.0) -> None:
    """Until the daemon on ``port`` answers ``/healthz`` 200 (or ``timeout`` passes)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if session.get(f"http://127.0.0.1:{port}/healthz", timeout=1).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.01)


def serve_payloads(body: bytes | Callable[[], bytes], count: int) -> list[ThreadingHTTPServer]:
    """``count`` loopback servers answering ``body`` (or what ``body()`` renders) to GET."""
    render = body if callable(body) else lambda: body

    class Handler(BaseHTTPRequestHandler):
        # Keep-alive, as vLLM's uvicorn answers: an HTTP/1.0 handler closes every
        # connection, which would charge each scraper a connect per scrape.
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            payload = render()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: object) -> None:
            pass

    servers = []
    for _ in range(count):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
    return servers


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> dict[str, float]:
    """VmRSS and its parts, MiB. RssFile (resident pages of mapped libraries: numpy,
    libpython, libcrypto...) moves by several MiB between runs with the page cache, so
    a change in the daemon's own memory shows in RssAnon."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith((name + " ", name + "{")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def stored_at(db: Path, started: float) -> float | None:
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.05) as conn:
            rows = conn.execute("SELECT count(*) FROM head_log").fetchone()[0]
    except sqlite3.Error:
        return None
    return time.perf_counter() - started if rows else None


def answered_at(session: requests.Session, url: str, started: float) -> float | None:
    """Seconds since ``started`` if ``url`` answers 200 with a sample of the servers now."""
    try:
        resp = session.get(url, timeout=2)
    except requests.ConnectionError:
        return None
    ok = resp.status_code == 200 and b"gpuwarden_server_up{" in resp.content
    return time.perf_counter() - started if ok else None


def timed_gets(url: str, *, every: float = 0.0, count: int | None = None,
               seconds: float | None = None) -> list[float]:
    """The wall time of each GET of ``url`` by a scraper of its own (``bench/scraper.py``):
    ``count`` of them, or as many as ``seconds`` hold, one every ``every`` seconds."""
    args = [sys.executable, "-m", "bench.scraper", url, "--every", str(every)]
    if count is not None:
        args += ["--count", str(count)]
    if seconds is not None:
        args += ["--seconds", str(seconds)]
    done = subprocess.run(args, capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parent.parent)
    return [float(line) for line in done.stdout.split()]


#: The period of the scraper that reads fresh snapshots after the run: periodic, as a
#: Prometheus is, and not a multiple of the daemon's 1 s interval, so that its scrapes
#: fall at every point of the cycle in turn.
FRESH_PERIOD_S = 1.37


def nearest_rank(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` by nearest rank (the p99 of 100 is the largest
    but one)."""
    return sorted(values)[max(0, math.ceil(q * len(values)) - 1)]


#: Daemon starts timed (each against a ``python -c pass`` just before it); the last one
#: goes on to the long run.
STARTS = 5

#: What a running daemon of this config has imported (``sys.modules`` of one, less
#: what a module only imports to run a check or a command): the RSS of a bare process
#: importing these is the floor the daemon's own figure is read against.
DAEMON_IMPORTS = (
    "gpuwarden.cli.main", "gpuwarden.daemon.lifecycle", "gpuwarden.daemon.wiring",
    "gpuwarden.daemon.alerting", "gpuwarden.daemon.schedule", "gpuwarden.storage.store",
    "gpuwarden.storage.writer", "gpuwarden.storage.early", "gpuwarden.alerts.dispatch",
    "gpuwarden.alerts.engine", "gpuwarden.alerts.state", "gpuwarden.detectors.defaults",
    "gpuwarden.api.server", "gpuwarden.api.exposition", "gpuwarden.collector.scrape",
    "gpuwarden.collector.run", "gpuwarden.collector.sim", "gpuwarden.collector.memory_budget",
    "sqlalchemy.dialects.sqlite.pysqlite", "apscheduler.schedulers.background",
)


def import_floor_mib() -> float:
    """VmRSS of a bare process that has imported :data:`DAEMON_IMPORTS`, MiB."""
    code = (f"import importlib\nfor m in {DAEMON_IMPORTS!r}: importlib.import_module(m)\n"
            "print(next(ln.split()[1] for ln in open('/proc/self/status') "
            "if ln.startswith('VmRSS')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    return int(out.stdout) / 1024


def _median_or_none(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if len(known) == len(values) else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="60 s instead of 10 minutes")
    parser.add_argument("--seconds", type=float, help="run length (default 600, quick 60)")
    parser.add_argument("--servers", type=int, default=4)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--payload-kb", type=int, default=None)
    parser.add_argument("--fresh-gets", type=int, default=None,
                        help="fresh-snapshot GETs after the run (default 100, quick 20)")
    args = parser.parse_args()
    seconds = args.seconds or (60.0 if args.quick else 600.0)
    n_fresh = args.fresh_gets if args.fresh_gets is not None else (20 if args.quick else 100)

    body = scaled_payload(args.payload_kb)
    # Counters and histograms advance on every GET, as a server under traffic reports
    # them: a static payload would flatter what the daemon stores and keeps.
    servers = [server for _ in range(args.servers)
               for server in serve_payloads(AdvancingPayload(body.decode()).render, 1)]
    work = Path(tempfile.mkdtemp(prefix="gpuwarden-bench-"))
    port = free_port()
    server_tables = "".join(
        f'[[servers]]\nname = "vllm-{i}"\nkind = "vllm"\n'
        f'metrics_url = "http://127.0.0.1:{s.server_address[1]}/metrics"\n'
        for i, s in enumerate(servers)
    )

    def config_for(run: int) -> Path:
        """A config of its own database per start: "first stored" is a fresh file's."""
        config = work / f"gpuwarden-{run}.toml"
        config.write_text(
            f'node = "bench"\ninterval = "1s"\nlisten = "127.0.0.1:{port}"\n'
            f'[storage]\nurl = "sqlite:///{work / f"gw-{run}.db"}"\n'
            f'[gpu]\nsource = "sim"\nsim_gpus = {args.gpus}\n{server_tables}'
        )
        return config

    session = requests.Session()

    def start(run: int) -> tuple[subprocess.Popen[bytes], float | None, float | None]:
        """Start a daemon; seconds to its first stored sample and first /metrics answer."""
        started = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "gpuwarden.cli.main", "run", "--config",
                                 str(config_for(run))], stdout=subprocess.DEVNULL,
                                stderr=open(work / f"daemon-{run}.log", "wb"))  # noqa: SIM115
        first_sample = first_answer = None
        # "Stored" means committed to the database file: poll it with a reader of our
        # own (WAL mode lets it read while the daemon writes); and /metrics, as a
        # Prometheus that has just restarted the daemon would.
        while time.perf_counter() - started < 30 and (first_sample is None
                                                      or first_answer is None):
            if first_sample is None:
                first_sample = stored_at(work / f"gw-{run}.db", started)
            if first_answer is None:
                first_answer = answered_at(session, f"http://127.0.0.1:{port}/metrics",
                                           started)
            time.sleep(0.002)
        return proc, first_sample, first_answer

    # Start-up against the interpreter's own, interleaved (A B A B ...), medians.
    python_starts, samples_at, answers_at = [], [], []
    for run in range(STARTS):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python_starts.append(time.perf_counter() - t0)
        proc, first_sample, first_answer = start(run)
        samples_at.append(first_sample)
        answers_at.append(first_answer)
        if run < STARTS - 1:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=20)
    python_start = statistics.median(python_starts)
    first_sample = _median_or_none(samples_at)
    gaps = [a - f for f, a in zip(samples_at, answers_at, strict=True)
            if f is not None and a is not None]
    gap_s = statistics.median(gaps) if len(gaps) == STARTS else None
    first_answer = _median_or_none(answers_at)
    try:
        wait_healthy(session, port)
        text = session.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        cpu0, cycles0 = cpu_seconds(proc.pid), metric(text, "gpuwarden_cycles_total")
        # A Prometheus scraping every 15 s: its renders count in the CPU figure, and each
        # of its GETs is a fresh snapshot's first read (rendered as the cycle before it
        # ends once its period is known, api/scrape_forecast.py).
        run_end = time.perf_counter() + seconds
        scrapes = timed_gets(f"http://127.0.0.1:{port}/metrics", every=15.0, seconds=seconds)
        time.sleep(max(0.0, run_end - time.perf_counter()))  # its last GET came earlier
        text = session.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
        cpu1, cycles1 = cpu_seconds(proc.pid), metric(text, "gpuwarden_cycles_total")
        rss = rss_mib(proc.pid)
        floor = import_floor_mib()
        samples_per_cycle = metric(text, "gpuwarden_samples_collected_total") / max(cycles1, 1)
        metrics_times = timed_gets(f"http://127.0.0.1:{port}/metrics", count=300)
        health_times = timed_gets(f"http://127.0.0.1:{port}/healthz", count=300)
        metrics_bytes = len(session.get(f"http://127.0.0.1:{port}/metrics", timeout=2).content)
        fresh = timed_gets(f"http://127.0.0.1:{port}/metrics", every=FRESH_PERIOD_S,
                           count=n_fresh)
        errors = metric(text, "gpuwarden_cycle_errors_total")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        for server in servers:
            server.shutdown()

    cycles = max(cycles1 - cycles0, 1)
    cpu_ms = (cpu1 - cpu0) * 1000 / cycles
    med_m, med_h = statistics.median(metrics_times), statistics.median(health_times)
    p99_m = nearest_rank(metrics_times, 0.99)
    print(f"\n## gpuwarden daemon ({args.gpus} simulated GPUs + {args.servers} servers, "
          f"{len(body) / 1024:.0f} KB payloads, {seconds:.0f} s run, {cycles:.0f} cycles, "
          f"{samples_per_cycle:.0f} samples/cycle)\n")
    print("| measure | value | reference (same run) | ratio | target |")
    print("|---|---|---|---|---|")
    fs = f"{first_sample * 1000:.0f} ms" if first_sample else "never"
    print(f"| start → first stored sample (median of {STARTS} starts) | {fs} | python -c pass "
          f"{python_start * 1000:.0f} ms (median, interleaved) "
          f"| {(first_sample or 0) / python_start:.1f}x | ≤ 500 ms |")
    gap = f"{gap_s * 1000:.0f} ms" if gap_s is not None else "never"
    print(f"| first stored sample → first /metrics answer (median of {STARTS}) | {gap} "
          f"| start → first answer {(first_answer or 0) * 1000:.0f} ms | - | ≤ 100 ms |")
    print(f"| CPU per cycle | {cpu_ms:.1f} ms ({cpu_ms / 10:.1f} % of one core at 1 s) | - | - "
          f"| < 5 % (70 KB), < 10 % (250 KB) |")
    print(f"| RSS after {seconds:.0f} s | {rss['VmRSS']:.1f} MiB (anon {rss['RssAnon']:.1f} + "
          f"file {rss['RssFile']:.1f}) | the daemon's imports alone {floor:.1f} MiB "
          f"| {rss['VmRSS'] / floor:.2f}x | ≤ 80 MiB |")
    print(f"| GET /metrics ({metrics_bytes / 1024:.0f} KB) median / p99 | {med_m * 1000:.2f} / "
          f"{p99_m * 1000:.2f} ms | GET /healthz {med_h * 1000:.2f} ms | "
          f"{med_m / med_h:.1f}x | ≤ 15 ms |")
    if scrapes:
        print(f"| GET /metrics of a fresh snapshot (every 15 s, {len(scrapes)} GETs) median / max "
              f"| {statistics.median(scrapes) * 1000:.2f} / {max(scrapes) * 1000:.2f} ms | - | - "
              f"| ≤ 15 ms |")
    every = scrapes + fresh
    if every:
        print(f"| GET /metrics of a fresh snapshot, all {len(every)} (those and {len(fresh)} "
              f"after the run, every {FRESH_PERIOD_S} s) median / p99 / max | "
              f"{statistics.median(every) * 1000:.2f} / {nearest_rank(every, 0.99) * 1000:.2f} / "
              f"{max(every) * 1000:.2f} ms | cached GET /metrics median {med_m * 1000:.2f} ms "
              f"| - | p99 ≤ 15 ms |")
    print(f"| cycle errors | {errors:.0f} | - | - | 0 |")


if __name__ == "__main__":
    main()
