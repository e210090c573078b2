"""Fleet ingest: samples/s one PostgreSQL takes from N nodes writing through the store.

Usage::

    .venv/bin/python -m bench.bench_fleet_ingest            # N = 1, 8, 32; ~2.5 min
    .venv/bin/python -m bench.bench_fleet_ingest --quick    # N = 1, 8; ~40 s
    .venv/bin/python -m bench fleet-ingest [--quick] [--nodes 1,8,32]

The database is ``GPUWARDEN_BENCH_POSTGRES_URL``, else ``GPUWARDEN_TEST_POSTGRES_URL``,
else the local ``postgresql+psycopg://postgres@127.0.0.1:5432/test``; everything is
written into a schema made for the run and dropped after it.

Each simulated node is a process of its own with its own store (``open_store(url,
node=...)``, the daemon's write path: one head-log row per cycle, a cut into chunks every
4 simulated minutes). A cycle is the samples the collector maps from the recorded vLLM
0.32 scrape (``tests/fixtures/metrics``) plus 8 GPUs' NVML signals, ~400 samples, with
counters advancing and gauges moving. Two modes:

* **fast**: every node writes cycles back to back (its simulated clock advances a second
  a cycle), so the database and the 2-core machine are the limit; the cuts happen at
  their real proportion (one per 240 cycles);
* **real**: every node writes one cycle per wall-clock second, nodes spread over the
  second, as a fleet at a 1 s interval does.

Reported per phase: samples/s, p50/p99 cycle write latency (``Store.write``), and the CPU
of the PostgreSQL backends serving the nodes' connections (``/proc/PID/stat`` of the pids
``pg_stat_activity`` names for them), per node. The reference, timed in turns with the
store in the same run (fast: store, reference, store, reference), is the same samples
stored the plain way: one narrow row (series, ms timestamp, value) per sample, primary
key (series, ts) for the same idempotence, binary COPY of a cycle per transaction.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench.bench_storage import pg_schema

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
FIXTURE = (Path(__file__).resolve().parent.parent
           / "tests/fixtures/metrics/vllm-0.32-cpu-after-load.prom")
SPAN = 240  # the store's default chunk span, in 1 s cycles
T_BASE = 1_700_006_400.0  # midnight UTC: the run's days start on a partition boundary
TICK = os.sysconf("SC_CLK_TCK")


# -------------------------------------------------------------------- worker (a node)
def node_cycle_template(node: str) -> tuple[list[tuple[str, Any]], list[float], list[float]]:
    """(signal, labels) of one node's cycle, the first values and per-second increments."""
    import random

    from gpuwarden.collector.promtext import parse
    from gpuwarden.collector.registry import SERVER_KINDS
    from gpuwarden.collector.servers.base import map_exposition
    from gpuwarden.model import make_labels
    from gpuwarden.signals import SIGNALS

    rng = random.Random(node)
    mapped = map_exposition(SERVER_KINDS.load("vllm"), parse(FIXTURE.read_text()), node=node,
                            server="vllm-0", ts=0.0)
    keys: list[tuple[str, Any]] = [(s.signal, s.labels) for s in mapped]
    values = [s.value for s in mapped]
    gpu_signals = [name for name, sig in SIGNALS.items()
                   if "gpu" in sig.labels and "server" not in sig.labels]
    for g in range(8):
        for name in gpu_signals:
            keys.append((name, make_labels(node=node, gpu=str(g), uuid=f"GPU-{node}-{g}",
                                           model="H200")))
            values.append(rng.uniform(0, 100))
    # counters (_total, histogram parts) advance, gauges wander, a third stays constant
    steps = [0.0 if rng.random() < 0.33 else rng.uniform(0.01, 5.0) for _ in keys]
    return keys, values, steps


class NodeWorker:
    """One simulated node in its own process: commands in, results out, over a pipe."""

    def __init__(self, index: int, url: str, conninfo: str, pipe: Connection) -> None:
        from gpuwarden.model import Sample
        from gpuwarden.storage import open_store

        self.index = index
        self.node = f"bench-node-{index:03d}"
        self.pipe = pipe
        self.sample = Sample
        app = f"gw-bench-{index:03d}"
        from sqlalchemy.engine import make_url

        self.store = open_store(make_url(url).update_query_dict(
            {"application_name": app}).render_as_string(hide_password=False), node=self.node)
        self.conninfo = f"{conninfo}&application_name=gw-bench-ref-{index:03d}"
        self.keys, self.values, self.steps = node_cycle_template(self.node)
        # the node's simulated clock, cycle k at T_BASE + k s; nodes start at spread
        # places in the chunk window so that back-to-back phases cut at the real proportion
        self.k = index * 97 % SPAN
        self.ref_k = 0
        self.ref_conn: Any = None

    def cycle(self, k: int) -> list[Any]:
        ts = T_BASE + k + (self.index % 7) * 0.001
        mk = self.sample
        return [mk(sig, labels, v + k * step, ts)
                for (sig, labels), v, step in zip(self.keys, self.values, self.steps, strict=True)]

    def run(self, kind: str, mode: str, seconds: float, start_at: float,
            spread: float) -> dict[str, Any]:
        write = self.write_store if kind == "store" else self.write_reference
        if kind == "store" and mode == "real":
            # a fleet's clocks agree: every node crosses the next window boundary 3 s
            # into the phase and cuts then, all in the same second (what 1 s nodes do
            # every 4 minutes); the head is cut first, outside the timed phase
            self.store.flush()
            self.k = (self.k // SPAN + 2) * SPAN - 3
        if kind == "reference" and self.ref_conn is None:
            import psycopg

            self.ref_conn = psycopg.connect(self.conninfo)
        latencies: list[float] = []
        samples = 0
        time.sleep(max(0.0, start_at - time.time()))
        cpu0 = time.process_time()
        began = time.perf_counter()
        offset = spread  # real mode: this node's place in the second
        n = 0
        while True:
            if mode == "real":
                due = began + offset + n
                if due - began >= seconds:
                    break
                time.sleep(max(0.0, due - time.perf_counter()))
            elif time.perf_counter() - began >= seconds:
                break
            t0 = time.perf_counter()
            samples += write()
            latencies.append(time.perf_counter() - t0)
            n += 1
        wall = seconds if mode == "real" else time.perf_counter() - began  # real: the offered
        return {"samples": samples, "cycles": n, "latencies": latencies,  # seconds, not the
                "client_cpu": time.process_time() - cpu0, "wall": wall}  # last write's end

    def write_store(self) -> int:
        self.k += 1
        return self.store.write(self.cycle(self.k))

    def write_reference(self) -> int:
        self.ref_k += 1
        ts_ms = round((T_BASE + self.ref_k) * 1000)
        base = self.index * 100_000
        with self.ref_conn.cursor() as cur, cur.copy(
                "COPY samples_ref (series_id, ts, value) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int8", "int8", "float8"])
            for i, (v, step) in enumerate(zip(self.values, self.steps, strict=True)):
                copy.write_row((base + i, ts_ms, v + self.ref_k * step))
        self.ref_conn.commit()
        return len(self.values)

    def serve(self) -> None:
        self.pipe.send(("ready", len(self.keys)))
        while True:
            cmd = self.pipe.recv()
            if cmd[0] == "stop":
                self.store.close()
                if self.ref_conn is not None:
                    self.ref_conn.close()
                self.pipe.send(("stopped",))
                return
            self.pipe.send(("done", self.run(*cmd[1:])))


def worker_main(index: int, url: str, conninfo: str, pipe: Connection) -> None:
    NodeWorker(index, url, conninfo, pipe).serve()


# -------------------------------------------------------------------------- the parent
def backend_cpu(pids: list[int]) -> dict[int, float]:
    """CPU seconds (user + system) of each PostgreSQL backend still running."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / TICK
    return out


@dataclass
class Phase:
    kind: str
    mode: str
    nodes: int
    samples: int = 0
    cycles: int = 0
    wall: float = 0.0
    db_cpu: float = 0.0
    client_cpu: float = 0.0
    latencies: list[float] = field(default_factory=list)

    def add(self, other: Phase) -> None:
        self.samples += other.samples
        self.cycles += other.cycles
        self.wall += other.wall
        self.db_cpu += other.db_cpu
        self.client_cpu += other.client_cpu
        self.latencies += other.latencies

    @property
    def rate(self) -> float:
        return self.samples / self.wall if self.wall else 0.0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return math.nan
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    @property
    def db_cpu_per_node(self) -> float:
        """Backend CPU seconds per wall second, per node."""
        return self.db_cpu / self.wall / self.nodes if self.wall else 0.0

    @property
    def db_cpu_per_cycle(self) -> float:
        return self.db_cpu / self.cycles if self.cycles else 0.0


class Fleet:
    def __init__(self, url: str, conninfo: str) -> None:
        self.url, self.conninfo = url, conninfo
        self.ctx = mp.get_context("spawn")  # a clean interpreter per node, as on a real node
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        self.samples_per_cycle = 0

    def grow(self, n: int) -> None:
        started = []
        for i in range(len(self.pipes), n):
            ours, theirs = self.ctx.Pipe()
            p = self.ctx.Process(target=worker_main, args=(i, self.url, self.conninfo, theirs),
                                 daemon=True)
            p.start()
            self.pipes.append(ours)
            self.procs.append(p)
            started.append(ours)
        for pipe in started:
            if not pipe.poll(120):
                raise RuntimeError("a node process did not start within 120 s")
            msg = pipe.recv()
            self.samples_per_cycle = msg[1]

    def backend_pids(self, admin: Any, n: int, kind: str) -> list[int]:
        prefix = "gw-bench-ref-" if kind == "reference" else "gw-bench-"
        names = [f"{prefix}{i:03d}" for i in range(n)]
        rows = admin.execute("SELECT pid FROM pg_stat_activity WHERE application_name = ANY(%s)",
                             [names]).fetchall()
        return [int(r[0]) for r in rows]

    def phase(self, admin: Any, n: int, kind: str, mode: str, seconds: float) -> Phase:
        if kind == "reference":  # open the reference connections before the clock starts
            for pipe in self.pipes[:n]:
                pipe.send(("run", kind, "fast", 0.0, 0.0, 0.0))
            for pipe in self.pipes[:n]:
                pipe.recv()
        pids = self.backend_pids(admin, n, kind)
        before = backend_cpu(pids)
        start_at = time.time() + (0.3 if mode == "fast" else 1.5)
        for i, pipe in enumerate(self.pipes[:n]):
            pipe.send(("run", kind, mode, seconds, start_at, i / n))
        results = [pipe.recv()[1] for pipe in self.pipes[:n]]
        after = backend_cpu(pids)
        ph = Phase(kind, mode, n)
        for r in results:
            ph.samples += r["samples"]
            ph.cycles += r["cycles"]
            ph.client_cpu += r["client_cpu"]
            ph.latencies += r["latencies"]
        ph.wall = max(r["wall"] for r in results)
        ph.db_cpu = sum(after[p] - before[p] for p in after if p in before)
        return ph

    def stop(self) -> None:
        for pipe in self.pipes:
            try:
                pipe.send(("stop",))
            except OSError:
                continue
        for pipe, p in zip(self.pipes, self.procs, strict=True):
            if pipe.poll(30):
                pipe.recv()
            p.join(10)
            if p.is_alive():
                p.kill()


def fmt_ms(s: float) -> str:
    return f"{s * 1000:.1f} ms"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="N = 1, 8 and shorter phases")
    ap.add_argument("--nodes", default=None, help="comma-separated N (default 1,8,32)")
    ap.add_argument("--fast-seconds", type=float, default=None)
    ap.add_argument("--real-seconds", type=float, default=None)
    args = ap.parse_args(argv)
    counts = [int(x) for x in (args.nodes or ("1,8" if args.quick else "1,8,32")).split(",")]
    fast_s = args.fast_seconds or (2.0 if args.quick else 4.0)
    real_s = args.real_seconds or (5.0 if args.quick else 10.0)
    base = (os.environ.get("GPUWARDEN_BENCH_POSTGRES_URL")
            or os.environ.get("GPUWARDEN_TEST_POSTGRES_URL") or DEFAULT_URL)
    import psycopg

    started = time.perf_counter()
    try:
        ctx = pg_schema(base)
        url, conninfo = ctx.__enter__()
    except psycopg.OperationalError as exc:
        print(f"skipped: PostgreSQL at {base} not reachable: {exc}".splitlines()[0])
        return 0
    fleet = Fleet(url, conninfo)
    table: list[tuple[Phase, Phase]] = []
    try:
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute("CREATE TABLE samples_ref (series_id bigint NOT NULL, ts bigint "
                          "NOT NULL, value double precision NOT NULL, PRIMARY KEY (series_id, ts))")
            for n in counts:
                fleet.grow(n)
                for mode, seconds, rounds in (("fast", fast_s, 2), ("real", real_s, 1)):
                    store, ref = Phase("store", mode, n), Phase("reference", mode, n)
                    for _ in range(rounds):  # in turns: store, reference, store, reference
                        store.add(fleet.phase(admin, n, "store", mode, seconds))
                        ref.add(fleet.phase(admin, n, "reference", mode, seconds))
                    table.append((store, ref))
                    print(f"  N={n:>3} {mode:<4}: {store.rate:>10,.0f} samples/s (reference "
                          f"{ref.rate:,.0f}), p99 {fmt_ms(store.quantile(0.99))}", flush=True)
            stats = admin.execute(
                "SELECT (SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits "
                "WHERE inhparent = 'chunks'::regclass), pg_total_relation_size('head_log'), "
                "(SELECT sum(count) FROM chunks), pg_total_relation_size('samples_ref'), "
                "(SELECT count(*) FROM samples_ref), (SELECT count(*) FROM pg_inherits "
                "WHERE inhparent = 'chunks'::regclass), (SELECT avg(octet_length(data)) "
                "FROM head_log), (SELECT avg(octet_length(data)) FROM chunks), "
                "(SELECT avg(count) FROM chunks)").fetchone()
    finally:
        fleet.stop()
        ctx.__exit__(None, None, None)
    print_report(table, fleet.samples_per_cycle, stats, time.perf_counter() - started)
    return 0


def print_report(table: list[tuple[Phase, Phase]], per_cycle: int, stats: Any,
                 elapsed: float) -> None:
    print(f"\n{per_cycle} samples per node cycle; {os.cpu_count()} CPUs shared by the nodes "
          f"and PostgreSQL; run took {elapsed:.0f} s\n")
    print("| N | mode | store samples/s | p50 / p99 cycle write | DB CPU per node | "
          "reference samples/s | reference DB CPU per node | store / reference |")
    print("|---|---|---|---|---|---|---|---|")
    for store, ref in table:
        # seconds the backends spent per wall second, per node (1.0 = one core)
        cpu = f"{store.db_cpu_per_node * 100:.2f} % of a core"
        ref_cpu = f"{ref.db_cpu_per_node * 100:.2f} %"
        print(f"| {store.nodes} | {store.mode} | {store.rate:,.0f} | "
              f"{fmt_ms(store.quantile(0.5))} / {fmt_ms(store.quantile(0.99))} | {cpu} | "
              f"{ref.rate:,.0f} | {ref_cpu} | {store.rate / ref.rate if ref.rate else 0:.2f}x |")
    fast = [s for s, _ in table if s.mode == "fast"]
    if fast:
        per_cycle_cpu = statistics.median(s.db_cpu_per_cycle for s in fast)
        refs = [r for _, r in table if r.mode == "fast"]
        ref_cycle_cpu = statistics.median(r.db_cpu_per_cycle for r in refs)
        print(f"\nDB CPU per node cycle (fast phases, cuts included, median over N): "
              f"{per_cycle_cpu * 1000:.2f} ms store, {ref_cycle_cpu * 1000:.2f} ms reference: "
              f"a node at 1 s costs the database {per_cycle_cpu * 100:.2f} % of a core "
              f"({ref_cycle_cpu * 100:.2f} % the narrow-row way)")
    chunk_bytes, log_bytes, chunk_samples, ref_bytes, ref_rows, parts, log_blob, chunk_blob, \
        chunk_count = stats
    if chunk_samples:
        chunk_bytes = int(chunk_bytes or 0)
        print(f"on disk at the end: chunks {chunk_bytes / 1e6:.1f} MB for {int(chunk_samples):,} "
              f"samples ({chunk_bytes / int(chunk_samples):.2f} B/sample, {parts} day "
              f"partitions), head_log {log_bytes / 1e6:.1f} MB; reference {ref_bytes / 1e6:.1f} MB "
              f"for {ref_rows:,} rows ({ref_bytes / max(ref_rows, 1):.1f} B/row)")
        print(f"blobs: head_log row {float(log_blob or 0):.0f} B a cycle; chunk "
              f"{float(chunk_blob or 0):.0f} B for {float(chunk_count or 0):.0f} samples")


if __name__ == "__main__":
    sys.exit(main())
