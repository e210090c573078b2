"""Prometheus text parser benchmark: ``python -m bench.bench_parser [--quick]``.

Why: gpuwarden parses every inference server's ``/metrics`` every few seconds on every
node, so parse cost is paid continuously; the target is a 100 KB payload in <= 2 ms of
CPU and >= 8x ``prometheus_client.parser.text_string_to_metric_families`` (the
reference, measured in the same run, its generator fully consumed).

Payloads: the recorded vLLM 0.32 scrape (tests/fixtures) and synthetic vLLM-shaped
payloads of ~100 KB and ~200 KB (latency/token histograms with vLLM's bucket layouts
and ``engine``/``le``/``model_name`` labels, counters with ``_created``, gauges).
CPU time is ``time.process_time``, best of N repeats (min filters scheduler noise).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gpuwarden.collector.promtext import parse
from gpuwarden.collector.servers import read_names

ROOT = Path(__file__).resolve().parent.parent
VLLM_FIXTURE = ROOT / "tests" / "fixtures" / "metrics" / "vllm-0.32-cpu-after-load.prom"

_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                    2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_TOKEN_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
_HISTOGRAMS = {
    "vllm:time_to_first_token_seconds": _LATENCY_BUCKETS,
    "vllm:e2e_request_latency_seconds": _LATENCY_BUCKETS,
    "vllm:inter_token_latency_seconds": _LATENCY_BUCKETS,
    "vllm:request_queue_time_seconds": _LATENCY_BUCKETS,
    "vllm:request_prefill_time_seconds": _LATENCY_BUCKETS,
    "vllm:request_decode_time_seconds": _LATENCY_BUCKETS,
    "vllm:request_prompt_tokens": _TOKEN_BUCKETS,
    "vllm:request_generation_tokens": _TOKEN_BUCKETS,
}
_COUNTERS = ("vllm:prompt_tokens", "vllm:generation_tokens", "vllm:num_preemptions")
_GAUGES = ("vllm:num_requests_running", "vllm:num_requests_waiting",
           "vllm:kv_cache_usage_perc")


def synthetic_payload(target_bytes: int) -> str:
    """A vLLM-shaped payload of at least ``target_bytes`` (grows the number of series)."""
    n = 1
    while True:
        text = _payload(n)
        if len(text.encode()) >= target_bytes:
            return text
        n += 1


def _payload(n_series: int) -> str:
    series = [f'engine="{i % 4}",model_name="org-{i}/Llama-3.1-8B-Instruct-v{i}"'
              for i in range(n_series)]
    out: list[str] = []
    for fam, buckets in _HISTOGRAMS.items():
        out.append(f"# HELP {fam} Histogram of {fam.split(':')[1].replace('_', ' ')}.")
        out.append(f"# TYPE {fam} histogram")
        for j, lbl in enumerate(series):
            count = 1000 + 37 * j
            engine, model = lbl.split(",", 1)
            for k, le in enumerate(buckets):
                out.append(f'{fam}_bucket{{{engine},le="{le}",{model}}} '
                           f"{float(count * (k + 1) // len(buckets))}")
            out.append(f'{fam}_bucket{{{engine},le="+Inf",{model}}} {float(count)}')
            out.append(f"{fam}_count{{{lbl}}} {float(count)}")
            out.append(f"{fam}_sum{{{lbl}}} {count * 0.123456789:.9g}")
    for fam in _COUNTERS:
        out += [f"# HELP {fam}_total Number of {fam}.", f"# TYPE {fam}_total counter"]
        out += [f"{fam}_total{{{lbl}}} {12345.0 + j}" for j, lbl in enumerate(series)]
        out += [f"# HELP {fam}_created Number of {fam}.", f"# TYPE {fam}_created gauge"]
        out += [f"{fam}_created{{{lbl}}} 1.7954270753e+09" for lbl in series]
    for fam in _GAUGES:
        out += [f"# HELP {fam} Gauge {fam}.", f"# TYPE {fam} gauge"]
        out += [f"{fam}{{{lbl}}} {0.5 + j / 1000}" for j, lbl in enumerate(series)]
    return "\n".join(out) + "\n"


def _best_cpu(fn: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    repeats_ours, repeats_ref = (30, 5) if quick else (200, 20)
    payloads = [
        ("vLLM 0.32 recorded scrape", VLLM_FIXTURE.read_bytes()),
        ("synthetic vLLM ~100 KB", synthetic_payload(100 * 1024).encode()),
        ("synthetic vLLM ~200 KB", synthetic_payload(200 * 1024).encode()),
    ]
    print("| payload | size KB | samples | ours ms | ours MB/s | prometheus_client ms "
          "| prometheus_client MB/s | ratio | ours, vLLM families only (the collector) ms |")
    print("|---|---|---|---|---|---|---|---|---|")
    wanted = read_names("vllm")
    for label, data in payloads:
        text = data.decode()
        exp = parse(data)
        n_samples = sum(len(rows) for rows in exp.samples.values())
        ref_samples = sum(len(m.samples) for m in text_string_to_metric_families(text))
        if exp.errors or n_samples != ref_samples:
            print(f"{label}: sample count mismatch ({n_samples} vs {ref_samples}) "
                  f"or errors {exp.errors[:3]}", file=sys.stderr)
        ours = _best_cpu(lambda d=data: parse(d), repeats_ours)  # type: ignore[misc]
        ref = _best_cpu(
            lambda t=text: list(text_string_to_metric_families(t)),  # type: ignore[misc]
            repeats_ref,
        )
        only = _best_cpu(lambda d=data: parse(d, only=wanted), repeats_ours)  # type: ignore[misc]
        mb = len(data) / 1e6
        print(f"| {label} | {len(data) / 1024:.1f} | {n_samples} | {ours * 1e3:.3f} "
              f"| {mb / ours:.1f} | {ref * 1e3:.2f} | {mb / ref:.1f} | {ref / ours:.1f}x "
              f"| {only * 1e3:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
