"""Cost of one NVML collection cycle, and a recorder of real device states.

    python -m bench.bench_nvml --cycles 200
    python -m bench.bench_nvml --cycles 30 --interval 1 --record tests/fixtures/nvml/nvml-real.json

Runs ``NvmlCollector`` against the real driver when one answers; otherwise against the
fake 8x H100 scenario, and says so loudly (fake timings measure Python overhead only).
Prints the mean wall time of each NVML function and the CPU milliseconds per cycle (the
number that matters for a daemon polling every second). ``--record`` writes what the
collector read, one step per cycle, in the fake's scenario format, so a session with a
GPU can turn it into a fixture (rename it after what it shows, e.g.
``nvml-8xh100-idle.json``, and check the uuids are fine to publish). Every step keeps
the memory bus width and maximum memory clock (read once, recorded each cycle) and each
process's memory (per MIG device on a MIG GPU): the figures the constructed capacity
scenarios (A100, L4, MIG) should be checked against.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from gpuwarden.collector.nvml import NvmlCollector

REPO = Path(__file__).resolve().parent.parent


def _fake() -> Any:
    sys.path.insert(0, str(REPO))
    from tests.collector.fake_pynvml import load

    return load("nvml-8xh100-healthy.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between cycles")
    ap.add_argument("--record", type=Path, help="write the states seen as a scenario JSON")
    ap.add_argument("--fake", action="store_true", help="use the fake 8x H100 scenario")
    args = ap.parse_args(argv)

    collector = NvmlCollector("bench")
    source = "real NVIDIA driver"
    if not args.fake:
        collector.collect()  # probe: initialises NVML when a driver answers
    if args.fake or not collector.available:
        collector.close()
        fake = _fake()
        collector = NvmlCollector("bench", nvml=fake)
        source = "FAKE 8x H100 scenario"
        print("=" * 72)
        print("NO NVIDIA DRIVER (or --fake): measuring against the FAKE NVML module.")
        print("These numbers are Python overhead only, not driver/GPU cost.")
        print("=" * 72)
    else:
        collector.call_stats.clear()  # drop the probe cycle (init, handle lookups)

    steps: list[dict[str, Any]] = []
    cpu_per_cycle: list[float] = []
    wall_per_cycle: list[float] = []
    n_samples = 0
    for i in range(args.cycles):
        c0, w0 = time.process_time(), time.perf_counter()
        n_samples = len(list(collector.collect()))
        cpu_per_cycle.append(time.process_time() - c0)
        wall_per_cycle.append(time.perf_counter() - w0)
        if args.record:
            steps.append({"devices": collector.last_states, "events": collector.last_events})
        if args.interval and i + 1 < args.cycles:
            time.sleep(args.interval)

    print(f"source: {source}; driver {collector.driver_version or '?'}; "
          f"{args.cycles} cycles; {n_samples} samples in the last cycle")
    print(f"{'NVML function':52} {'calls':>7} {'mean us':>10}")
    for name, stat in sorted(collector.call_stats.items(), key=lambda kv: -kv[1].seconds):
        print(f"{name:52} {stat.calls:7d} {stat.mean_seconds * 1e6:10.1f}")
    cpu_ms = 1000 * sum(cpu_per_cycle) / len(cpu_per_cycle)
    wall_ms = 1000 * sum(wall_per_cycle) / len(wall_per_cycle)
    print(f"per cycle: CPU {cpu_ms:.3f} ms, wall {wall_ms:.3f} ms")

    if args.record:
        scenario = {
            "origin": (f"recorded by bench/bench_nvml.py from the {source} on "
                       f"{time.strftime('%Y-%m-%d')}, driver {collector.driver_version}"),
            "driver_version": collector.driver_version,
            "missing_functions": sorted(collector.missing_functions),
            "steps": steps,
        }
        args.record.write_text(json.dumps(scenario, indent=1) + "\n")
        print(f"recorded {len(steps)} steps to {args.record}")
    collector.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
