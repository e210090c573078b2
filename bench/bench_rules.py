"""Rule evaluation benchmark: ``python -m bench.bench_rules [--quick]``.

Why: every default rule is evaluated every cycle (1 s) on every node, for the life of
the node; the target is all default rules at 8 GPUs + 4 servers in < 5 ms of CPU per
cycle, so that alerting stays a small share of the daemon's budget.

The window is what the alert engine would hand the detectors: for each signal the
longest lookback any default rule declares (the PrefixCacheHitFalling rule reads 10
minutes of counters), 1 s samples, 8 GPUs and 4 vLLM-like servers whose TTFT and ITL
histograms (vLLM's bucket layouts, 23 and 20 buckets with +Inf) keep growing. Some
conditions hold (one server's KV cache at 95 %, one GPU lagging, one server's p95 ITL
over the SLO) so the annotation paths are timed too.

CPU time is ``time.process_time``, best of N repeats of a batch of calls. The
reference, measured in the same run, is one ``numpy.mean`` over every array in the
window (one call per series): the floor for "looking at every series once".
"""

from __future__ import annotations

import functools
import sys
import time
from collections.abc import Callable

import numpy as np

from gpuwarden.detectors import Window, build_detector
from gpuwarden.detectors.defaults import DEFAULT_RULES
from gpuwarden.model import Labels, SeriesData, make_labels

NOW = 1_800_000_000.0
TTFT_EDGES = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
              5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_EDGES = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
             7.5, 10.0, 20.0, 40.0, 80.0)
TARGET_MS = 5.0


def _series(signal: str, labels: Labels, ts: np.ndarray, vs: np.ndarray) -> SeriesData:
    return SeriesData(signal, labels, ts, np.asarray(vs, dtype=np.float64))


def _histogram(signal: str, labels: Labels, edges: tuple[float, ...], ts: np.ndarray,
               *, centre: float, rng: np.random.Generator) -> list[SeriesData]:
    """Cumulative buckets of ~20 requests/s with log-normal latencies around ``centre``."""
    per_s = rng.poisson(20, len(ts))
    bounds = np.array([*edges, np.inf])
    cumulative = np.zeros((len(ts), len(bounds)))
    total = np.zeros(len(bounds))
    for k, n in enumerate(per_s):
        obs = centre * rng.lognormal(0.0, 0.4, n)
        total += np.searchsorted(obs, bounds, side="right", sorter=np.argsort(obs))
        cumulative[k] = total
    les = [*(f"{e:g}" for e in edges), "+Inf"]
    return [_series(f"{signal}_bucket", make_labels(dict(labels), le=le), ts, cumulative[:, i])
            for i, le in enumerate(les)]


def build_window(lookbacks: dict[str, float]) -> Window:
    rng = np.random.default_rng(42)
    span = max(lookbacks.values())
    ts = NOW - span + np.arange(int(span) + 1, dtype=np.float64)
    n = len(ts)
    data: dict[str, list[SeriesData]] = {}

    def add(s: SeriesData) -> None:
        lookback = lookbacks.get(s.signal)
        if lookback is None:
            return
        keep = s.timestamps >= NOW - lookback
        data.setdefault(s.signal, []).append(
            SeriesData(s.signal, s.labels, s.timestamps[keep], s.values[keep]))

    for g in range(8):
        labels = make_labels(node="n1", gpu=str(g), uuid=f"GPU-{g:04d}", model="H100")
        add(_series("gpu_up", labels, ts, np.ones(n)))
        base = 0.6 if g == 5 else 0.92  # GPU 5 lags: the spread rule fires
        add(_series("gpu_utilization_ratio", labels, ts,
                    np.clip(base + rng.normal(0, 0.05, n), 0, 1)))
        add(_series("gpu_xid_errors_total", labels, ts, np.zeros(n)))
    for i in range(4):
        labels = make_labels(node="n1", server=f"vllm-{i}", model="llama-3.1-8b")
        add(_series("server_up", make_labels(node="n1", server=f"vllm-{i}", kind="vllm"), ts,
                    np.ones(n)))
        kv = 0.95 if i == 0 else 0.6 + 0.05 * i
        add(_series("kv_cache_usage_ratio", labels, ts,
                    np.clip(kv + rng.normal(0, 0.01, n), 0, 1)))
        add(_series("requests_running", labels, ts, rng.integers(14, 18, n).astype(float)))
        add(_series("requests_waiting", labels, ts, rng.integers(0, 3, n).astype(float)))
        add(_series("preemptions_total", labels, ts, np.cumsum(rng.poisson(0.02, n))))
        add(_series("generation_tokens_total", labels, ts, np.cumsum(rng.poisson(900, n))))
        queries = np.cumsum(rng.poisson(2000, n)).astype(float)
        add(_series("prefix_cache_queries_total", labels, ts, queries))
        add(_series("prefix_cache_hits_total", labels, ts, np.floor(queries * 0.4)))
        every_minute = ts[::60]
        add(_series("quality_similarity", labels, every_minute,
                    0.97 + rng.normal(0, 0.005, len(every_minute))))
        hist_ts = ts[ts >= NOW - max(lookbacks.get("ttft_seconds_bucket", 0.0),
                                     lookbacks.get("itl_seconds_bucket", 0.0))]
        for s in _histogram("ttft_seconds", labels, TTFT_EDGES, hist_ts, centre=0.3, rng=rng):
            add(s)
        for s in _histogram("itl_seconds", labels, ITL_EDGES, hist_ts,
                            centre=0.14 if i == 1 else 0.04, rng=rng):
            add(s)
    return Window(now=NOW, interval=1.0, data=data)


def best_ms(fn: Callable[[], object], repeats: int, batch: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(batch):
            fn()
        best = min(best, (time.process_time() - start) / batch)
    return best * 1000.0


def main() -> int:
    quick = "--quick" in sys.argv[1:]
    repeats, batch = (5, 5) if quick else (30, 10)
    detectors = [build_detector(r) for r in DEFAULT_RULES]
    lookbacks: dict[str, float] = {}
    for det in detectors:
        for signal, lookback in det.inputs.items():
            lookbacks[signal] = max(lookbacks.get(signal, 0.0), lookback)
    window = build_window(lookbacks)
    n_series = sum(len(v) for v in window.data.values())
    n_samples = sum(len(s) for v in window.data.values() for s in v)
    arrays = [s.values for v in window.data.values() for s in v]

    rows = []
    total = 0.0
    for rule, det in zip(DEFAULT_RULES, detectors, strict=True):
        det.evaluate(window)  # warm: first-call imports and caches are not per-cycle cost
        ms = best_ms(functools.partial(det.evaluate, window), repeats, batch)
        total += ms
        rows.append((rule.name, rule.detector, len(det.evaluate(window)), ms))
    all_ms = best_ms(lambda: [d.evaluate(window) for d in detectors], repeats, batch)
    ref_ms = best_ms(lambda: [float(np.mean(a)) for a in arrays], repeats, batch)

    print(f"8 GPUs, 4 servers: {n_series} series, {n_samples:,} samples in the window "
          f"(longest lookback {max(lookbacks.values()):.0f} s); best of {repeats} x {batch}\n")
    print("| rule | detector | findings | CPU ms |")
    print("|---|---|---|---|")
    for name, detector, found, ms in rows:
        print(f"| {name} | {detector} | {found} | {ms:.3f} |")
    print(f"| **sum of the above** | | | **{total:.3f}** |")
    print(f"| all rules in one pass | | | {all_ms:.3f} |")
    print(f"| reference: numpy.mean over each of the {n_series} arrays | | | {ref_ms:.3f} |")
    print(f"\nall rules / reference: {all_ms / ref_ms:.1f}x; "
          f"target < {TARGET_MS:g} ms: {'met' if all_ms < TARGET_MS else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
