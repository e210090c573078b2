"""Run every benchmark in turn: ``python -m bench [--quick]``; ``python -m bench soak``.

Each benchmark is its own module (so one can be run alone) and prints a markdown
table with its reference measured in the same run. The soak benchmark runs for 30
minutes, so it is not in the default set: ``python -m bench soak [--minutes N]``; nor
is ``python -m bench faults [--tree CHECKOUT]``, the fault figures of a checkout (its
reference is the same script run on an older one), nor ``python -m bench vs-prometheus``,
gpuwarden and a Prometheus doing the same scraping and rules side by side (minutes), nor
``python -m bench fleet-ingest``, N nodes writing into one PostgreSQL (~2.5 minutes), nor
``python -m bench fleet-rules``, the fleet leader's pass by fleet size (~30 s), nor
``python -m bench http-clients``, CPU per scrape of requests, urllib3 and libcurl (~30 s),
nor ``python -m bench window-reads``, the daemon's window reads going on from the last
cycle's against reading anew (~1 min).
"""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = ("bench_storage", "bench_parser", "bench_rules", "bench_daemon", "bench_nvml")
#: Run by name only (``python -m bench NAME [args]``), never by default.
ON_REQUEST = {"soak": "bench_soak", "faults": "bench_faults",
              "vs-prometheus": "bench_vs_prometheus", "fleet-ingest": "bench_fleet_ingest",
              "fleet-rules": "bench_fleet_rules", "http-clients": "bench_http_clients",
              "window-reads": "bench_window_reads"}


def main() -> int:
    if sys.argv[1:] and sys.argv[1] in ON_REQUEST:
        module = ON_REQUEST[sys.argv[1]]
        return subprocess.run([sys.executable, "-m", f"bench.{module}", *sys.argv[2:]],
                              check=False).returncode
    quick = "--quick" in sys.argv[1:]
    failed = []
    for name in BENCHMARKS:
        print(f"\n# {name}\n", flush=True)
        args = [sys.executable, "-m", f"bench.{name}"]
        if quick and name != "bench_nvml":
            args.append("--quick")
        if subprocess.run(args, check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
