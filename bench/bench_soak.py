"""Soak benchmark: is the daemon's memory bounded once its head window is full?

``python -m bench soak [--minutes N]`` (default 30 minutes; not part of ``python -m bench``)

Runs ``gpuwarden run`` as a subprocess at a 100 ms interval (10x the default rate, so a
half hour holds as many cycles as five hours at 1 s) with 8 simulated GPUs and 4
vLLM-like servers on 127.0.0.1. Each server serves the recorded vLLM 0.32 payload with
its counters, histogram buckets and sums advancing over time, as a loaded server's do,
so the stored series do not compress to nothing. The store is SQLite in a temp dir.

Every minute it prints, measured from outside as an operator would: VmRSS and RssAnon
(/proc/PID/status), open file descriptors (/proc/PID/fd), CPU % of one core over the
minute and the lowest / highest 10-second slice of it (the head is cut into chunks
every ``chunk_span``; CPU that climbs between cuts shows as a wide min-max), and the
cycles completed. At the end: the RSS growth from the minute the head window is full
(``memory_window`` + one ``chunk_span``: everything the head holds has been through a
cut and an eviction) to the end, PASS below 5 %, against the RSS of minute 1 and the
head's theoretical bound (``head.memory_bound``) for the series count seen. RSS is a
sawtooth with the chunk span (uncut cycles pile up, a cut compresses them), so growth
compares the peak of the first span after the window is full with the peak of the last
span: peaks to peaks, whatever the phase of the run's first and last minute.

Exit status 1 on FAIL. Every process it starts is stopped by its PID; all traffic is
to 127.0.0.1; the run ends after ``--minutes`` whatever happens.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

from bench.bench_daemon import (
    PAYLOAD,
    cpu_seconds,
    free_port,
    metric,
    rss_mib,
    serve_payloads,
    wait_healthy,
)
from gpuwarden.storage.head import memory_bound

INTERVAL_S = 0.1
CHUNK_SPAN_S = 240.0  # the store's defaults, which the daemon uses
MEMORY_WINDOW_S = 600.0
GROWTH_LIMIT_PCT = 5.0
_COUNTER = re.compile(r"^[^#\s{]+?(_total|_bucket|_count|_sum)(\{[^}]*\})? ")


class AdvancingPayload:
    """The recorded payload with every counter-like value growing with time.

    Cumulative series (``_total``, ``_bucket``, ``_count``, ``_sum``) are scaled by
    ``1 + t / 60`` (t: seconds since start, per server a different rate), which keeps
    histogram buckets cumulative; gauges stay as recorded. Rendered at most once per
    100 ms per server.
    """

    def __init__(self, body: str, rate: float) -> None:
        self._parts: list[tuple[str, float | None]] = []
        for line in body.splitlines():
            if _COUNTER.match(line):
                head, value = line.rsplit(" ", 1)
                self._parts.append((head + " ", float(value)))
            else:
                self._parts.append((line, None))
        self._rate = rate
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self._tick = -1
        self._cached = b""

    def render(self) -> bytes:
        elapsed = time.monotonic() - self._start
        tick = int(elapsed * 10)
        with self._lock:
            if tick != self._tick:
                scale = 1.0 + self._rate * elapsed / 60.0
                lines = [p if v is None else f"{p}{math.floor(v * scale):.1f}"
                         for p, v in self._parts]
                self._cached, self._tick = ("\n".join(lines) + "\n").encode(), tick
            return self._cached


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def series_count(db: Path) -> int:
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1.0) as conn:
            return int(conn.execute("SELECT count(*) FROM series").fetchone()[0])
    except sqlite3.Error:
        return 0


def scrape(session: requests.Session, port: int) -> str:
    try:
        return session.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except requests.RequestException:
        return ""


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench soak")
    parser.add_argument("--minutes", type=int, default=30, help="run length (default 30)")
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--servers", type=int, default=4)
    args = parser.parse_args()
    minutes = max(1, args.minutes)
    full_minute = math.ceil((MEMORY_WINDOW_S + CHUNK_SPAN_S) / 60.0)

    body = PAYLOAD.read_text()
    servers = [server for i in range(args.servers)
               for server in serve_payloads(AdvancingPayload(body, 1.0 + 0.25 * i).render, 1)]
    work = Path(tempfile.mkdtemp(prefix="gpuwarden-soak-"))
    port = free_port()
    server_tables = "".join(
        f'[[servers]]\nname = "vllm-{i}"\nkind = "vllm"\n'
        f'metrics_url = "http://127.0.0.1:{s.server_address[1]}/metrics"\n'
        for i, s in enumerate(servers)
    )
    config = work / "gpuwarden.toml"
    config.write_text(
        f'node = "soak"\ninterval = "{round(INTERVAL_S * 1000)}ms"\n'
        f'listen = "127.0.0.1:{port}"\n'
        f'[storage]\nurl = "sqlite:///{work / "gw.db"}"\n'
        f'[gpu]\nsource = "sim"\nsim_gpus = {args.gpus}\n{server_tables}'
    )
    print(f"## soak: gpuwarden run, {INTERVAL_S * 1000:.0f} ms interval, {args.gpus} simulated "
          f"GPUs + {args.servers} servers (advancing recorded vLLM payload), SQLite, "
          f"{minutes} min; work dir {work}\n", flush=True)

    session = requests.Session()
    log_file = open(work / "daemon.log", "w")  # noqa: SIM115 (closed in finally)
    proc = subprocess.Popen([sys.executable, "-m", "gpuwarden.cli.main", "run", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=log_file)
    rows: list[tuple[int, float, float, int, float, float, float, float]] = []
    try:
        wait_healthy(session, port)
        start = time.monotonic()
        cpu_prev = cpu_seconds(proc.pid)
        cycles_prev = metric(scrape(session, port), "gpuwarden_cycles_total")
        print("| minute | VmRSS MiB | RssAnon MiB | fds | CPU % (min-max of 10 s) "
              "| cycles | samples/cycle |")
        print("|---|---|---|---|---|---|---|", flush=True)
        for minute in range(1, minutes + 1):
            slices = []
            for k in range(1, 7):  # six 10-second slices
                time.sleep(max(0.0, start + (minute - 1) * 60 + k * 10 - time.monotonic()))
                if proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {proc.returncode}; see "
                                       f"{work / 'daemon.log'}")
                cpu = cpu_seconds(proc.pid)
                slices.append((cpu - cpu_prev) / 10.0 * 100)
                cpu_prev = cpu
            rss = rss_mib(proc.pid)
            fds = fd_count(proc.pid)
            text = scrape(session, port)
            cycles = metric(text, "gpuwarden_cycles_total")
            per_cycle = metric(text, "gpuwarden_samples_collected_total") / max(cycles, 1)
            cpu_pct = sum(slices) / len(slices)
            rows.append((minute, rss["VmRSS"], rss["RssAnon"], fds, cpu_pct, min(slices),
                         max(slices), cycles - cycles_prev))
            print(f"| {minute} | {rss['VmRSS']:.1f} | {rss['RssAnon']:.1f} | {fds} "
                  f"| {cpu_pct:.1f} ({min(slices):.0f}-{max(slices):.0f}) "
                  f"| {cycles - cycles_prev:.0f} | {per_cycle:.0f} |", flush=True)
            cycles_prev = cycles
        nseries = series_count(work / "gw.db")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log_file.close()
        for server in servers:
            server.shutdown()

    bound = memory_bound(nseries, INTERVAL_S, CHUNK_SPAN_S, MEMORY_WINDOW_S) / 2**20
    print(f"\nreference: RSS at minute 1 {rows[0][1]:.1f} MiB; head bound for {nseries} series "
          f"at {INTERVAL_S * 1000:.0f} ms (span {CHUNK_SPAN_S:.0f} s, window "
          f"{MEMORY_WINDOW_S:.0f} s): {bound:.1f} MiB")
    span = math.ceil(CHUNK_SPAN_S / 60.0)
    if len(rows) < full_minute - 1 + 2 * span:
        print(f"growth: not measured (the head window is full at minute {full_minute}; "
              f"run with --minutes >= {full_minute - 1 + 2 * span})")
        return 0
    first, last = rows[full_minute - 1:full_minute - 1 + span], rows[-span:]
    base, end = max(r[1] for r in first), max(r[1] for r in last)
    growth = (end - base) / base * 100
    anon = (max(r[2] for r in last) - max(r[2] for r in first)) / max(r[2] for r in first) * 100
    verdict = "PASS" if growth < GROWTH_LIMIT_PCT else "FAIL"
    print(f"growth: peak VmRSS {base:.1f} MiB in minutes {first[0][0]}-{first[-1][0]} -> "
          f"{end:.1f} MiB in minutes {last[0][0]}-{last[-1][0]} ({growth:+.1f} %; RssAnon "
          f"{anon:+.1f} %) -> {verdict} (limit < {GROWTH_LIMIT_PCT:.0f} %)")
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
