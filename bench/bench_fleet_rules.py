"""What one pass of the fleet rules costs the leader, by fleet size.

    .venv/bin/python -m bench fleet-rules [--nodes 1,8,32] [--cycles 300] [--url URL]

For each N: a fresh database on the local PostgreSQL, N nodes' histories written through
the store's own write path (``open_store(url, node=...)``, the cycle of
``bench_fleet_ingest``: the recorded vLLM 0.32 scrape mapped, plus 8 GPUs' signals,
337 samples), ``--cycles`` one-second cycles each (300: the 5 minutes ``NodeStraggler``
reads), cut into chunks as the daemon cuts them. Then the leader's pass
(``FleetEvaluator.run_once``: the lock check, one read of every input of the default
fleet rules over every node, the evaluation, the state write) is timed, wall and this
process's CPU, median of 7 passes, every rule evaluated in each (no ``every``); the
head-log rows there are counted. The reference, measured
in the same run, is one node's own rule pass over the same window: what the leader
costs compared with what each node already spends.

Where it stands: the leader reads every node's head-log rows of the window (a node's
cycles not yet cut, up to 4 minutes of them) and their chunks, so a pass grows with
nodes x window; the figures say at what fleet size a pass no longer fits an interval.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psycopg
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bench.bench_fleet_ingest import DEFAULT_URL, node_cycle_template

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig

T0 = 1_700_006_400.0


def _conninfo(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def every_pass(rules: Sequence[RuleConfig]) -> list[RuleConfig]:
    """The rules with no ``every``: each pass timed evaluates all of them (the daemon
    evaluates its window rules every 5 s; a pass here is the cost of such a pass)."""
    return [dataclasses.replace(rule, every=0.0) for rule in rules]


def write_history(url: str, nodes: int, cycles: int) -> None:
    from gpuwarden.fleet.nodes import NodeBeat
    from gpuwarden.model import Sample
    from gpuwarden.storage import open_store

    for n in range(nodes):
        node = f"node-{n:03d}"
        keys, values, steps = node_cycle_template(node)
        store = open_store(url, node=node)
        NodeBeat(store.engine, node, "bench", 1.0, clock=lambda: T0 + cycles - 1).beat()
        try:
            for k in range(cycles):
                ts = T0 + k
                store.write([Sample(sig, labels, v + s * k, ts)
                             for (sig, labels), v, s in zip(keys, values, steps, strict=True)])
        finally:
            store.close()


def time_passes(url: str, passes: int) -> tuple[float, float, int]:
    """Median wall and CPU seconds of the leader's pass, and the head-log rows it reads."""
    from gpuwarden.detectors.fleet_rules import effective_fleet_rules
    from gpuwarden.fleet.evaluator import FleetEvaluator

    engine = create_engine(url)
    now = [T0 + 0.0]
    evaluator = FleetEvaluator(engine, "bench-leader", every_pass(effective_fleet_rules([])),
                               interval=1.0, sink=lambda events: None, clock=lambda: now[0])
    walls, cpus = [], []
    try:
        with engine.connect() as conn:
            rows = int(conn.execute(text("SELECT count(*) FROM head_log")).scalar_one())
        for i in range(passes + 1):
            now[0] = T0 + 299.0 + i  # the history's last second, the rules' windows on it
            w0, c0 = time.perf_counter(), time.process_time()
            evaluator.run_once()
            if i:  # the first pass takes the lock and restores state
                walls.append(time.perf_counter() - w0)
                cpus.append(time.process_time() - c0)
        assert evaluator.errors_total == 0, "a fleet pass failed"
    finally:
        evaluator.stop()
        engine.dispose()
    return statistics.median(walls), statistics.median(cpus), rows


def time_node_pass(url: str, passes: int) -> tuple[float, float]:
    """One node's own rule pass over its store (the daemon's default rules), same window."""
    from gpuwarden.alerts.engine import RuleEngine
    from gpuwarden.detectors.defaults import effective_rules
    from gpuwarden.storage import open_store

    store = open_store(url, node="node-000")
    engine = RuleEngine(every_pass(effective_rules([])), node="node-000", interval=1.0)
    walls, cpus = [], []
    try:
        for i in range(passes):
            w0, c0 = time.perf_counter(), time.process_time()
            engine.evaluate(T0 + 299.0 + i, store)
            walls.append(time.perf_counter() - w0)
            cpus.append(time.process_time() - c0)
    finally:
        store.close()
    return statistics.median(walls), statistics.median(cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="1,8,32")
    ap.add_argument("--cycles", type=int, default=300)
    ap.add_argument("--passes", type=int, default=7)
    ap.add_argument("--url", default=DEFAULT_URL)
    ap.add_argument("--quick", action="store_true", help="N = 1, 8 and 120 cycles")
    args = ap.parse_args(argv)
    sizes = [1, 8] if args.quick else [int(x) for x in args.nodes.split(",")]
    cycles = 120 if args.quick else args.cycles
    base = make_url(args.url)
    try:
        admin: Any = psycopg.connect(_conninfo(args.url), autocommit=True)
    except psycopg.Error as exc:
        print(f"skipped: no PostgreSQL at {args.url}: {exc}")
        return 0
    print(f"{'nodes':>5} {'head-log rows':>13} {'leader pass wall':>17} {'CPU':>9} "
          f"{'node pass wall':>15} {'CPU':>9} {'leader/node CPU':>16}")
    with admin:
        for n in sizes:
            name = f"gw_bench_fleet_{uuid.uuid4().hex[:8]}"
            admin.execute(f'CREATE DATABASE "{name}"')
            url = base.set(database=name).render_as_string(hide_password=False)
            try:
                write_history(url, n, cycles)
                wall, cpu, rows = time_passes(url, args.passes)
                node_wall, node_cpu = time_node_pass(url, args.passes)
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            print(f"{n:5d} {rows:13d} {wall * 1000:14.1f} ms {cpu * 1000:6.1f} ms "
                  f"{node_wall * 1000:12.1f} ms {node_cpu * 1000:6.1f} ms "
                  f"{cpu / node_cpu:15.1f}x", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
