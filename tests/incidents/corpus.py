"""The incident corpus: scripted node traces as data files, turned into samples.

Each ``traces/<what-it-shows>.json`` describes a node second by second with compact
generator specs instead of recorded numbers, so a trace stays readable and reviewable
("kv ramps 0.5 -> 0.97 from t=300 to t=720"), and is reproducible (seeded noise).

Format (times are seconds from the start of the trace)::

    {
      "description": "what happens and what should (not) fire",
      "duration": 1200,            # seconds; one cycle per second, t = 0 .. duration-1
      "seed": 7,
      "background": {"gpus": 8, "servers": ["vllm-0", "vllm-1"]},   # a healthy node
      "overrides": [               # replace the segments of background series ...
        {"signal": "kv_cache_usage_ratio", "match": {"server": "vllm-0"},
         "segments": [[0, {"const": 0.5}], [300, {"ramp": [0.5, 0.97]}], [720, ...]]},
        {"signal": "itl_seconds", "match": {"server": "vllm-0"},              # histogram
         "segments": [[0, {"median": 0.035}], [300, {"median": 0.11, "sigma": 0.3}]]}
      ],
      "expect": [                  # exactly these (rule, labels subset) fire, nothing else
        {"rule": "KVCacheNearFull", "match": {"server": "vllm-0"},
         "fires": [670, 700], "resolves": [905, 935],       # first FIRING / last RESOLVED
         "episodes": 1}                                     # FIRING events (optional)
      ],
      "may_fire": ["KVCacheSaturationSoon"],  # allowed, not required (judgement calls)
      "extra": [                   # series the background lacks (added after it)
        {"signal": "prefill_time_seconds", "labels": {"server": "vllm-1", "model": "..."},
         "kind": "histogram", "buckets": "request", "segments": [[0, {"median": 0.1}]]}
      ],
      "rules": "[[rules]] ..."     # TOML: config rules run with the defaults (optional)
    }

Segment specs, each holding from its start until the next segment's start:
gauges ``{"const": v}``, ``{"ramp": [v0, v1]}``, ``{"absent": true}`` (no samples: a
scrape that failed, a GPU that vanished); counters ``{"rate": r}`` (per second,
cumulative; ``{"reset": true}`` restarts at 0, as a restarted server does);
histograms ``{"rps": n, "median": m, "sigma": s}`` (lognormal latencies, requests
per second drawn Poisson and spread over vLLM's buckets multinomially: the cumulative
``_bucket``/``_count``/``_sum`` series a vLLM scrape exposes). Keys not given in a
segment carry over from the previous one. A series-level ``noise`` (sd) adds seeded
Gaussian noise to gauges, clipped to ``clip`` ([lo, hi]). An ``extra`` histogram names
its buckets (:data:`BUCKETS`: vLLM's ``ttft``, ``itl``, ``request`` latency edges,
``tokens`` for lengths).

The background's capacity series (free-memory headroom, the servers' configured memory
fraction, speculative-decoding counters, KV capacity and request lengths) come after the
older ones, so that adding them
left the seeded noise of every older series, hence every older trace, as it was.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gpuwarden.model import Labels, Sample, make_labels

TRACES = Path(__file__).parent / "traces"
T0 = 1_700_000_000.0  # multiple of the store's chunk span: trace time 0

# vLLM's bucket bounds (vllm/v1/metrics/loggers.py)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
# e2e, queue, prefill and decode time (tests/fixtures/metrics/vllm-0.32-cpu-idle.prom)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0,
                   50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# prompt and generation lengths: vLLM's 1-2-5 series up to the model's context (32k here)
TOKEN_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
                 5000.0, 10000.0, 20000.0)
BUCKETS = {"ttft": TTFT_BUCKETS, "itl": ITL_BUCKETS, "request": REQUEST_BUCKETS,
           "tokens": TOKEN_BUCKETS}


@dataclass
class Spec:
    """One generated series (or histogram) of the trace."""

    signal: str
    labels: dict[str, str]
    kind: str  # gauge | counter | histogram
    segments: list[tuple[float, dict[str, Any]]]
    noise: float = 0.0
    clip: tuple[float, float] = (-math.inf, math.inf)
    every: int = 1
    buckets: tuple[float, ...] = ()


@dataclass
class Trace:
    name: str
    description: str
    duration: int
    node: str
    seed: int
    specs: list[Spec]
    expect: list[dict[str, Any]] = field(default_factory=list)
    may_fire: list[str] = field(default_factory=list)
    rules: str = ""  # TOML [[rules]] run with the defaults

    def cycles(self) -> Iterator[tuple[float, list[Sample]]]:
        """(timestamp, samples) for every second of the trace, deterministic."""
        gens = [_Generator(spec, self.node, self.seed * 1000 + i)
                for i, spec in enumerate(self.specs)]
        for t in range(self.duration):
            ts = T0 + t
            out: list[Sample] = []
            for g in gens:
                out.extend(g.at(t, ts))
            yield ts, out


def _seg_at(segments: list[tuple[float, dict[str, Any]]], t: float) -> tuple[
        dict[str, Any], float, float]:
    """The merged spec in force at t, with its start and end."""
    merged: dict[str, Any] = {}
    start, end = 0.0, math.inf
    for i, (s, spec) in enumerate(segments):
        if s > t:
            break
        merged = {k: v for k, v in merged.items() if k not in ("const", "ramp", "absent",
                                                                "reset")} | spec
        start = s
        end = segments[i + 1][0] if i + 1 < len(segments) else math.inf
    return merged, start, end


class _Generator:
    def __init__(self, spec: Spec, node: str, seed: int) -> None:
        self.spec = spec
        self.labels: Labels = make_labels(spec.labels, node=node)
        self.rng = np.random.default_rng(seed)
        self.total = 0.0
        self.counts = np.zeros(len(spec.buckets) + 1)
        self.sum = 0.0
        self.last_reset_start: float | None = None

    def at(self, t: int, ts: float) -> list[Sample]:
        spec = self.spec
        seg, start, end = _seg_at(spec.segments, t)
        noise = self.rng.normal(0.0, spec.noise) if spec.noise else 0.0  # drawn every second
        if seg.get("absent") or t % spec.every:
            return []
        if seg.get("reset") and self.last_reset_start != start:
            self.last_reset_start = start
            self.total, self.sum = 0.0, 0.0
            self.counts[:] = 0
        if spec.kind == "gauge":
            if "ramp" in seg:
                v0, v1 = seg["ramp"]
                frac = (t - start) / (end - start) if math.isfinite(end) else 0.0
                value = v0 + (v1 - v0) * frac
            else:
                value = float(seg.get("const", 0.0))
            value = min(max(value + noise, spec.clip[0]), spec.clip[1])
            return [Sample(spec.signal, self.labels, float(value), ts)]
        if spec.kind == "counter":
            rate = float(seg.get("rate", 0.0))
            self.total += self.rng.poisson(rate) if seg.get("poisson", True) else rate
            return [Sample(spec.signal, self.labels, self.total, ts)]
        return self._histogram(seg, ts)

    def _histogram(self, seg: dict[str, Any], ts: float) -> list[Sample]:
        spec = self.spec
        n = int(self.rng.poisson(float(seg.get("rps", 10.0))))
        median, sigma = float(seg.get("median", 0.05)), float(seg.get("sigma", 0.3))
        bounds = np.array(spec.buckets)
        cdf = 0.5 * (1.0 + np.vectorize(math.erf)(np.log(bounds / median) / (sigma * math.sqrt(2))))
        probs = np.diff(np.concatenate(([0.0], cdf, [1.0])))
        self.counts += self.rng.multinomial(n, probs / probs.sum())
        self.sum += n * median * math.exp(sigma * sigma / 2)
        cum = np.cumsum(self.counts)
        base = self.spec.signal
        out = [Sample(f"{base}_bucket", make_labels(self.labels, le=_le(b)), float(c), ts)
               for b, c in zip((*spec.buckets, math.inf), cum, strict=True)]
        out.append(Sample(f"{base}_count", self.labels, float(cum[-1]), ts))
        out.append(Sample(f"{base}_sum", self.labels, self.sum, ts))
        return out


def _le(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(float(bound))


def _segments(raw: list[list[Any]]) -> list[tuple[float, dict[str, Any]]]:
    return [(float(s), dict(spec)) for s, spec in raw]


def background(gpus: int, servers: list[str]) -> list[Spec]:
    """A healthy node: busy, balanced GPUs and servers well inside every SLO."""
    const = lambda v: [(0.0, {"const": v})]  # noqa: E731
    specs: list[Spec] = []
    for g in range(gpus):
        gl = {"gpu": str(g), "uuid": f"GPU-{g:04d}", "model": "NVIDIA H100 80GB HBM3"}
        specs += [
            Spec("gpu_up", gl, "gauge", const(1.0)),
            Spec("gpu_utilization_ratio", gl, "gauge", const(0.86), 0.03, (0.0, 1.0)),
            Spec("gpu_temperature_celsius", gl, "gauge", const(62.0), 1.5),
            Spec("gpu_power_watts", gl, "gauge", const(540.0), 15.0),
            Spec("gpu_memory_used_bytes", gl, "gauge", const(6.6e10)),
            Spec("gpu_memory_total_bytes", gl, "gauge", const(8.1e10)),
            Spec("gpu_xid_errors_total", gl, "counter", [(0.0, {"rate": 0.0})]),
        ]
    for s in servers:
        sl = {"server": s, "model": "meta-llama/Llama-3.1-8B-Instruct"}
        specs += [
            Spec("server_up", {"server": s, "kind": "vllm"}, "gauge", const(1.0)),
            Spec("kv_cache_usage_ratio", sl, "gauge", const(0.45), 0.03, (0.0, 1.0)),
            Spec("requests_running", sl, "gauge", const(24.0), 2.0, (0.0, 256.0)),
            Spec("requests_waiting", sl, "gauge", const(0.0)),
            Spec("preemptions_total", sl, "counter", [(0.0, {"rate": 0.0})]),
            Spec("generation_tokens_total", sl, "counter", [(0.0, {"rate": 1500.0})]),
            Spec("prompt_tokens_total", sl, "counter", [(0.0, {"rate": 4000.0})]),
            Spec("prefix_cache_queries_total", sl, "counter", [(0.0, {"rate": 4000.0})]),
            Spec("prefix_cache_hits_total", sl, "counter", [(0.0, {"rate": 2400.0})]),
            Spec("quality_similarity", sl, "gauge", const(0.97), 0.005, (0.0, 1.0), every=60),
            Spec("ttft_seconds", sl, "histogram",
                 [(0.0, {"rps": 8.0, "median": 0.25, "sigma": 0.5})], buckets=TTFT_BUCKETS),
            Spec("itl_seconds", sl, "histogram",
                 [(0.0, {"rps": 400.0, "median": 0.035, "sigma": 0.3})], buckets=ITL_BUCKETS),
        ]
    # Capacity: 18.5 % of each GPU free (vLLM at gpu_memory_utilization 0.80 plus its
    # CUDA context), speculative decoding with 3 draft tokens a step, 70 % accepted, a KV
    # cache of 335k tokens (Llama-3.1-8B's 128 KiB a token in ~44 GB) and request lengths
    # whose p95s (~4,000 prompt + ~770 generated tokens) fit ~70 sequences.
    for g in range(gpus):
        gl = {"gpu": str(g), "uuid": f"GPU-{g:04d}", "model": "NVIDIA H100 80GB HBM3"}
        specs.append(Spec("gpu_memory_headroom_ratio", gl, "gauge", const(0.185), 0.002,
                          (0.0, 1.0)))
    for s in servers:
        sl = {"server": s, "model": "meta-llama/Llama-3.1-8B-Instruct"}
        specs += [
            Spec("server_gpu_memory_utilization_config", sl, "gauge", const(0.80)),
            Spec("spec_decode_draft_tokens_total", sl, "counter", [(0.0, {"rate": 1450.0})]),
            Spec("spec_decode_accepted_tokens_total", sl, "counter",
                 [(0.0, {"rate": 1015.0})]),
            Spec("kv_cache_capacity_tokens", sl, "gauge", const(335_000.0)),
            Spec("prompt_length_tokens", sl, "histogram",
                 [(0.0, {"rps": 8.0, "median": 800.0, "sigma": 0.8})], buckets=TOKEN_BUCKETS),
            Spec("generation_length_tokens", sl, "histogram",
                 [(0.0, {"rps": 8.0, "median": 200.0, "sigma": 0.7})], buckets=TOKEN_BUCKETS),
        ]
    return specs


def _extra(name: str, i: int, raw: dict[str, Any]) -> Spec:
    kind = raw.get("kind", "gauge")
    buckets = BUCKETS[raw["buckets"]] if kind == "histogram" else ()
    if kind not in ("gauge", "counter", "histogram") or (kind == "histogram" and not buckets):
        raise ValueError(f"{name}: extra[{i}]: kind {kind!r} with buckets {raw.get('buckets')!r}")
    clip = tuple(raw.get("clip", (-math.inf, math.inf)))
    return Spec(raw["signal"], dict(raw["labels"]), kind, _segments(raw["segments"]),
                float(raw.get("noise", 0.0)), (float(clip[0]), float(clip[1])),
                int(raw.get("every", 1)), buckets)


def load(name: str) -> Trace:
    raw = json.loads((TRACES / f"{name}.json").read_text())
    bg = raw.get("background", {})
    specs = background(int(bg.get("gpus", 8)), list(bg.get("servers", ["vllm-0", "vllm-1"])))
    for i, ov in enumerate(raw.get("overrides", ())):
        hits = [s for s in specs if s.signal == ov["signal"]
                and all(s.labels.get(k) == v for k, v in ov.get("match", {}).items())]
        if not hits:
            raise ValueError(f"{name}: overrides[{i}] matches no background series")
        for s in hits:
            s.segments = _segments(ov["segments"])
            if "noise" in ov:
                s.noise = float(ov["noise"])
    specs += [_extra(name, i, ex) for i, ex in enumerate(raw.get("extra", ()))]
    return Trace(name=name, description=raw["description"], duration=int(raw["duration"]),
                 node=raw.get("node", "gpu-node-01"), seed=int(raw.get("seed", 1)), specs=specs,
                 expect=list(raw.get("expect", ())), may_fire=list(raw.get("may_fire", ())),
                 rules=str(raw.get("rules", "")))


def names() -> list[str]:
    return sorted(p.stem for p in TRACES.glob("*.json"))
