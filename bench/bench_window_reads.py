"""The daemon's window reads, going on from the last cycle's vs read anew:
``python -m bench window-reads [--servers N] [--minutes M] [--cycles C]``.

Why: every 5 s the rules and the window signals read 1-20 minutes of 37 signals, and
``storage/held_windows.py`` answers those reads from each signal's last answer plus the
cycles appended since. This measures what that saves, in process, on the store the
daemon keeps: N servers of the recorded vLLM 0.32 payload (its counters and histograms
advancing, ``bench_daemon.AdvancingPayload``) and 8 simulated GPUs, one cycle a second,
M minutes written first (so the windows are full and reach cut chunks), then C cycles
each read both ways, in the daemon's schedule (``RuleEngine.due_inputs`` every cycle,
``derive_lookbacks`` every 5 s, the hour-long ones every 60): the reference (a full
``Store.query_many``) and ``HeldReads.query_many``, alternating which goes first, on the
same head. CPU is ``time.process_time``. Each pair of answers is compared bit for bit.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from bench.bench_daemon import PAYLOAD, AdvancingPayload
from gpuwarden.alerts.engine import RuleEngine
from gpuwarden.collector.promtext import parse
from gpuwarden.collector.registry import SERVER_KINDS
from gpuwarden.collector.servers.base import map_exposition
from gpuwarden.collector.sim import SimulatedGpuCollector
from gpuwarden.detectors.defaults import effective_rules
from gpuwarden.model import Sample, SeriesData
from gpuwarden.promql.derived import DEFAULT_WINDOW, LONG_LOOKBACK, derive_lookbacks
from gpuwarden.promql.prefetch import Prefetched, widest
from gpuwarden.storage import open_store
from gpuwarden.storage.held_windows import HELD_BYTES_MAX, HeldReads

NODE = "bench-node"
T0 = 1_800_000_000.0


Read = Callable[[Mapping[str, tuple[float, float]]],
                tuple[Mapping[str, list[SeriesData]], Mapping[str, Exception]]]


def exact(got: Mapping[str, list[SeriesData]]) -> dict[str, list[tuple[object, bytes, bytes]]]:
    return {signal: [(s.labels, s.timestamps.tobytes(), s.values.tobytes()) for s in series]
            for signal, series in got.items()}


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench window-reads")
    ap.add_argument("--servers", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=11.0)
    ap.add_argument("--cycles", type=int, default=120)
    args = ap.parse_args()

    clock = [T0]
    gpus = SimulatedGpuCollector(NODE, 8, seed=1, clock=lambda: clock[0])
    payloads = [AdvancingPayload(PAYLOAD.read_text()) for _ in range(args.servers)]
    mapping = SERVER_KINDS.load("vllm")

    def cycle(now: float) -> list[Sample]:
        clock[0] = now
        out = list(gpus.collect())
        for i, payload in enumerate(payloads):
            out += map_exposition(mapping, parse(payload.render().decode()), node=NODE,
                                  server=f"vllm-{i}", ts=now)
        return out

    engine = RuleEngine(effective_rules([]), node=NODE, interval=1.0)
    timed: list[tuple[bool, float, float]] = []  # (every-5-s cycle, full ms, held ms)
    with tempfile.TemporaryDirectory() as tmp, open_store(
            f"sqlite:///{Path(tmp) / 'gw.db'}", node=NODE, cut_delay=DEFAULT_WINDOW) as store:
        held = HeldReads(store)
        readers: dict[str, Read] = {"full": store.query_many, "held": held.query_many}
        warm = int(args.minutes * 60)
        samples = 0
        for k in range(warm + args.cycles):
            now = T0 + k
            batch = cycle(now)
            samples = len(batch)
            store.write(batch)
            if k < warm - 10:
                continue
            wanted = [engine.due_inputs(now)]
            five = k % 5 == 0
            if five:
                wanted.append(derive_lookbacks(skip=() if k % 60 == 0 else LONG_LOOKBACK))
            ranges = widest(*wanted)
            spans = {signal: (now - lookback, now) for signal, lookback in ranges.items()}
            answers: dict[str, Mapping[str, list[SeriesData]]] = {}
            times: dict[str, float] = {}
            for name in ("full", "held") if k % 2 == 0 else ("held", "full"):
                started = time.process_time()
                answers[name] = readers[name](spans)[0]
                times[name] = (time.process_time() - started) * 1000.0
            if exact(answers["full"]) != exact(answers["held"]):
                print(f"cycle {k}: the two reads differ", file=sys.stderr)
                return 1
            engine.evaluate(now, Prefetched(store, ranges, now))
            if k < warm:
                continue  # the held reads' first (full) reads, not measured
            timed.append((five, times["full"], times["held"]))
    mean_full = statistics.fmean(f for _, f, _ in timed)
    mean_held = statistics.fmean(h for _, _, h in timed)
    print(f"{args.servers} servers + 8 GPUs, {samples} samples a cycle, {args.minutes:g} min "
          f"written, {args.cycles} cycles read both ways "
          f"({held.held.held_reads_total} signal reads held, "
          f"{held.held.full_reads_total} full; {held.held.held_bytes / 2**20:.2f} MiB held "
          f"at the end, at most {HELD_BYTES_MAX / 2**20:g})\n")
    print("| read | read anew (reference) | going on from the last | ratio |")
    print("|---|---|---|---|")
    print(f"| mean CPU per cycle | {mean_full:.2f} ms | {mean_held:.2f} ms | "
          f"{mean_held / mean_full:.2f}x |")
    for label, which in (("every-5-s cycles", True), ("other cycles", False)):
        full = statistics.median(f for five, f, _ in timed if five is which)
        kept = statistics.median(h for five, _, h in timed if five is which)
        print(f"| median, {label} | {full:.2f} ms | {kept:.2f} ms | {kept / full:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
