"""Storage benchmark: write throughput, bytes per sample on disk, query latency.

    python -m bench.bench_storage            # 2 h of a 2,400-series node (~17 M samples)
    python -m bench.bench_storage --quick    # 20 min (~2.9 M samples)
    GPUWARDEN_TEST_POSTGRES_URL=postgresql+psycopg://postgres@127.0.0.1:5432/test \\
        python -m bench.bench_storage        # adds the PostgreSQL rows

The simulated node writes what NVML and vLLM really report, at their resolution:
8 GPUs x 15 signals (integer percent / 100 random walks, MiB x 1048576, integer deg C,
mW / 1000, MHz x 1e6, constant limits and error counters) and 4 inference servers, each
with 7 models x 3 latency histograms x 27 series (25 cumulative integer buckets,
_count, and a float _sum) plus 3 gauges: 2,400 series, one cycle per simulated second
with 0-2 ms of scheduler jitter. Synthetic timestamps let a simulated day run faster
than real time; a full day (200 M samples) takes too long for a benchmark, so a
representative fraction is written and the per-sample figure is reported as measured.

Every throughput has its reference measured in the same run, in turns with it (a
reference cycle after every few store cycles, A B A B), and the ratio is the median of
the ratios of ten blocks of turns: raw sqlite3 ``executemany`` of narrow (ts, series_id,
value) rows, and raw psycopg binary COPY of the same rows into PostgreSQL.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from gpuwarden.model import Labels, Sample, make_labels
from gpuwarden.storage import Store, open_store

T0 = 1_700_000_000.0
N_GPUS, N_SERVERS, N_MODELS = 8, 4, 7
HISTOGRAMS = ("ttft_seconds", "itl_seconds", "e2e_latency_seconds")
LE = [0.001 * 1.6**i for i in range(24)]  # 24 finite bounds + +Inf = 25 buckets
GPU_SIGNALS = [
    "gpu_up",
    "gpu_utilization_ratio",
    "gpu_memory_used_bytes",
    "gpu_memory_total_bytes",
    "gpu_temperature_celsius",
    "gpu_power_watts",
    "gpu_power_limit_watts",
    "gpu_sm_clock_hertz",
    "gpu_memory_clock_hertz",
    "gpu_xid_errors_total",
    "gpu_ecc_errors_total",
    "gpu_throttle_reasons",
    "gpu_process_memory_used_bytes",
    "gpu_memory_utilization_ratio",
    "gpu_energy_joules_total",
]


class Node:
    """A simulated node: 2,400 series whose values evolve like real ones."""

    def __init__(self, seed: int = 1) -> None:
        self.rng = np.random.default_rng(seed)
        self.keys: list[tuple[str, Labels]] = []
        for g in range(N_GPUS):
            gl = {"node": "bench", "gpu": str(g), "uuid": f"GPU-{g:08x}", "model": "H100"}
            self.keys += [(s, make_labels(gl)) for s in GPU_SIGNALS]
        les = [f"{b:.6g}" for b in LE] + ["+Inf"]
        for s in range(N_SERVERS):
            for m in range(N_MODELS):
                sl = {"node": "bench", "server": f"vllm-{s}", "model": f"model-{m}"}
                for h in HISTOGRAMS:
                    self.keys += [(f"{h}_bucket", make_labels(sl, le=le)) for le in les]
                    self.keys += [(f"{h}_count", make_labels(sl)), (f"{h}_sum", make_labels(sl))]
            sl = {"node": "bench", "server": f"vllm-{s}", "model": "model-0"}
            self.keys += [
                (g, make_labels(sl))
                for g in ("kv_cache_usage_ratio", "requests_running", "requests_waiting")
            ]
        assert len(self.keys) == 2400, len(self.keys)
        r = self.rng
        self.util = r.integers(20, 90, N_GPUS)
        self.mem_mib = r.integers(30_000, 70_000, N_GPUS)
        self.temp = r.integers(45, 70, N_GPUS)
        self.energy_mj = r.integers(10**9, 10**10, N_GPUS)
        n_hist = N_SERVERS * N_MODELS * len(HISTOGRAMS)
        self.rate = r.uniform(0.2, 15.0, n_hist)
        self.buckets = np.zeros((n_hist, len(LE) + 1), dtype=np.int64)
        self.sums = np.zeros(n_hist)
        scale = np.tile(np.array([0.15, 0.02, 3.0]), N_SERVERS * N_MODELS)  # ttft, itl, e2e
        self.scale = scale
        cdf = [np.clip(np.log(np.array(LE) / sc) / 1.2 + 0.5, 0, 1) for sc in (0.15, 0.02, 3.0)]
        probs = [np.diff(np.concatenate(([0.0], c, [1.0]))) for c in cdf]
        self.probs = [p / p.sum() for p in probs]
        self.kv_blocks = r.integers(1000, 15000, N_SERVERS)

    def values(self) -> np.ndarray:
        r = self.rng
        self.util = np.clip(self.util + r.integers(-3, 4, N_GPUS), 0, 100)
        self.mem_mib = np.clip(
            self.mem_mib + r.integers(-2, 3, N_GPUS) * (r.random(N_GPUS) < 0.2), 0, 81_559
        )
        self.temp = np.clip(
            self.temp + r.integers(-1, 2, N_GPUS) * (r.random(N_GPUS) < 0.1), 30, 95
        )
        power_mw = 80_000 + self.util * 6_000 + r.integers(-4_000, 4_000, N_GPUS)
        self.energy_mj += power_mw
        throttled = r.random(N_GPUS) < 0.02
        gpu = np.stack(
            [
                np.ones(N_GPUS),
                self.util / 100,
                self.mem_mib * 1048576.0,
                np.full(N_GPUS, 81_559 * 1048576.0),
                self.temp.astype(float),
                power_mw / 1000,
                np.full(N_GPUS, 700.0),
                np.where(throttled, 1755e6, 1980e6),
                np.full(N_GPUS, 2619e6),
                np.zeros(N_GPUS),
                np.zeros(N_GPUS),
                np.where(throttled, 4.0, 0.0),
                self.mem_mib * 1048576.0 - 512 * 1048576.0,
                np.clip(self.util + r.integers(-5, 6, N_GPUS), 0, 100) / 100,
                self.energy_mj / 1000,
            ],
            axis=1,
        ).ravel()
        n = r.poisson(self.rate)
        k = len(HISTOGRAMS)
        for i in range(k):
            self.buckets[i::k] += r.multinomial(n[i::k], self.probs[i])
        self.sums += n * self.scale * r.lognormal(0.0, 0.3, n.size)
        cum = np.cumsum(self.buckets, axis=1)
        hist = np.concatenate([cum, cum[:, -1:], self.sums[:, None]], axis=1).reshape(N_SERVERS, -1)
        self.kv_blocks = np.clip(self.kv_blocks + r.integers(-40, 41, N_SERVERS), 0, 16384)
        gauges = np.stack(
            [self.kv_blocks / 16384, r.integers(0, 64, N_SERVERS), r.integers(0, 10, N_SERVERS)],
            axis=1,
        ).astype(float)
        return np.concatenate([gpu, np.concatenate([hist, gauges], axis=1).ravel()])

    def cycle(self, k: int) -> list[Sample]:
        ts = T0 + k + int(self.rng.integers(0, 3)) / 1000
        return [
            Sample(sig, lab, v, ts)
            for (sig, lab), v in zip(self.keys, self.values().tolist(), strict=True)
        ]


class NarrowSqlite:
    """The reference: raw ``executemany`` of narrow (ts, series_id, value) rows into a
    table without an index, one transaction per 2,400-row cycle."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute("CREATE TABLE samples (ts INTEGER, series_id INTEGER, value REAL)")
        self.rows = 0

    def write(self, k: int, values: list[float]) -> int:
        batch = list(zip([int((T0 + k) * 1000)] * len(values), range(1, len(values) + 1),
                         values, strict=True))
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO samples VALUES (?, ?, ?)", batch)
        self.conn.execute("COMMIT")
        self.rows += len(batch)
        return len(batch)

    def bytes_per_row(self) -> float:
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self.conn.close()
        return _disk_bytes(self.path) / self.rows


class CopyPostgres:
    """The PostgreSQL reference: raw psycopg binary COPY of the same narrow rows, one
    transaction per cycle."""

    def __init__(self, conninfo: str) -> None:
        import psycopg

        self.conn = psycopg.connect(conninfo)
        self.conn.execute("CREATE TABLE samples (ts int8, series_id int4, value float8)")
        self.conn.commit()

    def write(self, k: int, values: list[float]) -> int:
        with self.conn.cursor() as cur, cur.copy(
                "COPY samples FROM STDIN (FORMAT BINARY)") as cp:
            cp.set_types(["int8", "int4", "float8"])
            ts = int((T0 + k) * 1000)
            for series_id, value in enumerate(values, 1):
                cp.write_row((ts, series_id, value))
        self.conn.commit()
        return len(values)

    def close(self) -> None:
        self.conn.close()


class Reference(Protocol):
    def write(self, k: int, values: list[float]) -> int: ...


@dataclass
class Interleaved:
    """Throughputs of the store and of its reference, timed in turns (A B A B) within one
    loop, so that a change of the machine's speed during the run moves both."""

    store_rate: float  # samples/s over the whole run
    reference_rate: float  # rows/s over the whole run
    ratios: list[float]  # store rate / reference rate per block of turns
    samples: int

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)


def write_interleaved(store: Store, node: Node, cycles: int, reference: Reference,
                      reference_cycles: int, *, blocks: int = 10) -> Interleaved:
    """``cycles`` store cycles, with a reference cycle after every ``cycles //
    reference_cycles`` of them; the ratio per block of ``reference_cycles // blocks``
    reference cycles (each block spans several chunk cuts of the store)."""
    stride = max(1, cycles // reference_cycles)
    per_block = max(1, reference_cycles // blocks)
    ref_node = Node(2)
    spent = ref_spent = 0.0
    n = ref_rows = 0
    block = [0.0, 0, 0.0, 0]  # store s, samples, reference s, rows
    ratios: list[float] = []
    done = 0
    for k in range(cycles):
        samples = node.cycle(k)
        t = time.perf_counter()
        store.write(samples)
        dt = time.perf_counter() - t
        spent, n = spent + dt, n + len(samples)
        block[0] += dt
        block[1] += len(samples)
        if k % stride == stride - 1 and done < reference_cycles:
            values = ref_node.values().tolist()
            t = time.perf_counter()
            rows = reference.write(done, values)
            dt = time.perf_counter() - t
            ref_spent, ref_rows, done = ref_spent + dt, ref_rows + rows, done + 1
            block[2] += dt
            block[3] += rows
            if done % per_block == 0:
                ratios.append((block[1] / block[0]) / (block[3] / block[2]))
                block = [0.0, 0, 0.0, 0]
    return Interleaved(n / spent, ref_rows / ref_spent, ratios, n)


def _disk_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median milliseconds of ``fn``."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def query_32(store: Store, start: float, end: float) -> int:
    sigs = (
        "gpu_utilization_ratio",
        "gpu_power_watts",
        "gpu_temperature_celsius",
        "gpu_memory_used_bytes",
    )
    return sum(len(s) for sig in sigs for s in store.query(sig, None, start, end))


@contextmanager
def pg_schema(base: str) -> Iterator[tuple[str, str]]:
    """(SQLAlchemy URL, libpq conninfo) scoped to a throwaway schema."""
    import psycopg
    from sqlalchemy.engine import make_url

    schema = f"gw_bench_{uuid.uuid4().hex[:8]}"
    url = make_url(base)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    try:
        scoped = url.update_query_dict({"options": f"-csearch_path={schema}"})
        yield (
            scoped.render_as_string(hide_password=False),
            f"{conninfo}?options=-csearch_path%3D{schema}",
        )
    finally:
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 simulated minutes instead of 2 h")
    ap.add_argument("--seconds", type=int, help="simulated seconds to write to SQLite")
    args = ap.parse_args(argv)
    seconds = args.seconds or (1200 if args.quick else 7200)
    ref_cycles = 120 if args.quick else 300
    rows: list[tuple[str, str, str, str]] = []
    started = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        reference = NarrowSqlite(Path(tmp) / "narrow.db")
        db = Path(tmp) / "store.db"
        node = Node(1)
        store = open_store(f"sqlite:///{db}", node="bench")
        run = write_interleaved(store, node, seconds, reference, ref_cycles)
        ref_bytes = reference.bytes_per_row()
        n = run.samples
        rows.append(
            (
                "write, SQLite",
                f"{run.store_rate:,.0f} samples/s",
                f"{run.reference_rate:,.0f} rows/s",
                f"{run.ratio:.2f}x ({min(run.ratios):.2f}-{max(run.ratios):.2f})",
            )
        )
        end = T0 + seconds - 0.5  # cycle k is at T0 + k + 0..2 ms
        head_ms = timed(lambda: query_32(store, end - 60, end), 200)
        assert query_32(store, end - 60, end) == 32 * 60
        hour = min(3600, seconds - 600)  # older than the memory window: read from chunks
        old = end - seconds + hour
        assert query_32(store, old - hour, old) == 32 * hour
        chunk_ms = timed(lambda: query_32(store, old - hour, old), 10)
        store.flush()
        with store.engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
            free = conn.exec_driver_sql("PRAGMA freelist_count").scalar_one()
            page = conn.exec_driver_sql("PRAGMA page_size").scalar_one()
            blob = conn.exec_driver_sql("SELECT sum(length(data)) FROM chunks").scalar_one()
        store.close()
        size = _disk_bytes(db)
        rows.append(
            (
                "disk, SQLite (file+WAL after checkpoint)",
                f"{size / n:.2f} B/sample",
                f"{ref_bytes:.1f} B/row",
                f"{ref_bytes / (size / n):.1f}x smaller",
            )
        )
        rows.append(
            (
                "  of which chunk blobs / free pages",
                f"{blob / n:.2f} / {free * page / n:.2f} B/sample",
                "",
                "",
            )
        )
        rows.append(("query 60 s x 32 series (head)", f"{head_ms:.2f} ms", "", ""))
        span = "1 h" if hour == 3600 else f"{hour // 60} min"
        rows.append((f"query {span} x 32 series (chunks)", f"{chunk_ms:.2f} ms", "", ""))

    pg_url = os.environ.get("GPUWARDEN_BENCH_POSTGRES_URL") or os.environ.get(
        "GPUWARDEN_TEST_POSTGRES_URL"
    )
    if pg_url:
        with pg_schema(pg_url) as (url, conninfo):
            copy = CopyPostgres(conninfo)
            store = open_store(url, node="bench")
            pg_seconds = 600 if args.quick else 1200
            try:
                pg = write_interleaved(store, Node(1), pg_seconds, copy, ref_cycles)
                store.flush()
            finally:
                store.close()
                copy.close()
        rows.append(
            (
                "write, PostgreSQL",
                f"{pg.store_rate:,.0f} samples/s",
                f"{pg.reference_rate:,.0f} rows/s (COPY)",
                f"{pg.ratio:.2f}x ({min(pg.ratios):.2f}-{max(pg.ratios):.2f})",
            )
        )
    else:
        rows.append(("write, PostgreSQL", "skipped: set GPUWARDEN_TEST_POSTGRES_URL", "", ""))

    print(
        f"\nSimulated {seconds} s of a 2,400-series node ({seconds * 2400:,} samples), "
        f"1 cycle per simulated second; run took {time.perf_counter() - started:.0f} s.\n"
    )
    print("| measure | gpuwarden store | reference (same run) | ratio |")
    print("|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
