"""A scripted node in a real SQLite store, for the budget's tests (capacity, CLI, API).

Node ``n1``: GPU 0 runs two vLLM servers (``vllm-a`` with every capacity figure,
``vllm-b`` an older vLLM without ``kv_cache_memory_bytes`` nor length histograms),
GPUs 1-2 run ``vllm-tp`` (tensor parallel 2). One sample a minute for the last hour, as
the daemon would have stored them. The numbers are the module's constants, so a test
can redo the arithmetic from them.
"""

from __future__ import annotations

from pathlib import Path

from gpuwarden.model import Labels, Sample, make_labels
from gpuwarden.storage import Store, open_store

GIB = float(1 << 30)
NODE = "n1"
STEP = 60.0
H100 = "NVIDIA H100 80GB HBM3"
TOTAL = 80 * GIB
#: GPU -> (kv_cache, server_other, other_processes, free) in GiB (each sums to 80)
SPLIT = {"0": (52.0, 18.0, 2.0, 8.0), "1": (50.0, 16.0, 0.0, 14.0),
         "2": (50.0, 16.0, 0.0, 14.0)}
COST = {"0": 2.5}  # GPUs 1 and 2 have no configured price
PEAK_BW = 3.35e12
USES = {"vllm-a": ("0",), "vllm-b": ("0",), "vllm-tp": ("1", "2")}
MODELS = {"vllm-a": "llama-8b", "vllm-b": "qwen-7b", "vllm-tp": "llama-70b"}
TOKENS = {"vllm-a": 200_000.0, "vllm-b": 150_000.0, "vllm-tp": 400_000.0}
KV_GIB = {"vllm-a": 30.0, "vllm-tp": 50.0}  # vllm-b does not export it
FRACTION = {"vllm-a": 0.45, "vllm-b": 0.40, "vllm-tp": 0.90}
#: server -> histogram -> (bounds, index of the bucket every request of the hour fell in)
PROMPT_BOUNDS = ("128", "512", "1024", "2048", "+Inf")
GENERATION_BOUNDS = ("64", "256", "1024", "+Inf")
LENGTH_BUCKET = {"vllm-a": {"prompt_length_tokens": (PROMPT_BOUNDS, 2),
                            "generation_length_tokens": (GENERATION_BOUNDS, 1)},
                 "vllm-tp": {"prompt_length_tokens": (PROMPT_BOUNDS, 3),
                             "generation_length_tokens": (GENERATION_BOUNDS, 1)}}
REQUESTS_PER_MINUTE = 40.0
#: Generated tokens per second, steady (vllm-b an idle older server generates none).
GENERATION_RATE = {"vllm-a": 500.0, "vllm-tp": 2000.0}
#: vllm-a's running + waiting: 20 + 0, but 150 + 30 five minutes ago and 500 + 0 twenty
#: minutes ago (outside the 10-minute peak window)
SPIKES = {300.0: (150.0, 30.0), 1200.0: (500.0, 0.0)}


def gpu_labels(gpu: str, **extra: str) -> Labels:
    return make_labels(node=NODE, gpu=gpu, uuid=f"GPU-{gpu}", model=H100, **extra)


def server_labels(server: str, **extra: str) -> Labels:
    return make_labels(node=NODE, server=server, model=MODELS[server], **extra)


def cycle(ts: float, age: float, minutes: int) -> list[Sample]:
    """What one cycle stores at ``ts`` (``age`` seconds before now, ``minutes`` since the
    first cycle)."""
    out = []
    for gpu, split in SPLIT.items():
        out.append(Sample("gpu_memory_total_bytes", gpu_labels(gpu), TOTAL, ts))
        for part, gib in zip(("kv_cache", "server_other", "other_processes", "free"), split,
                             strict=True):
            out.append(Sample("gpu_memory_budget_bytes", gpu_labels(gpu, part=part),
                              gib * GIB, ts))
        out.append(Sample("gpu_memory_headroom_ratio", gpu_labels(gpu), split[3] / 80, ts))
        out.append(Sample("gpu_memory_bandwidth_peak_bytes_per_second", gpu_labels(gpu),
                          PEAK_BW, ts))
        if gpu in COST:
            out.append(Sample("gpu_cost_per_hour_usd", gpu_labels(gpu), COST[gpu], ts))
    for server, gpus in USES.items():
        for gpu in gpus:
            out.append(Sample("server_gpu_info", make_labels(node=NODE, server=server, gpu=gpu),
                              1.0, ts))
        out.append(Sample("kv_cache_capacity_tokens", server_labels(server), TOKENS[server],
                          ts))
        if server in KV_GIB:
            out.append(Sample("kv_cache_memory_bytes", server_labels(server),
                              KV_GIB[server] * GIB, ts))
        out.append(Sample("server_gpu_memory_utilization_config", server_labels(server),
                          FRACTION[server], ts))
        running, waiting = SPIKES.get(age, (20.0, 0.0)) if server == "vllm-a" else (5.0, 0.0)
        if server in GENERATION_RATE:
            out.append(Sample("generation_tokens_total", server_labels(server),
                              1000.0 + GENERATION_RATE[server] * STEP * minutes, ts))
        out.append(Sample("requests_running", server_labels(server), running, ts))
        out.append(Sample("requests_waiting", server_labels(server), waiting, ts))
        for hist, (bounds, hit) in LENGTH_BUCKET.get(server, {}).items():
            for i, le in enumerate(bounds):
                count = 10.0 + (REQUESTS_PER_MINUTE * minutes if i >= hit else 0.0)
                out.append(Sample(f"{hist}_bucket", server_labels(server, le=le), count, ts))
    return out


def write_node(store: Store, now: float, *, minutes: int = 60) -> None:
    """``minutes`` + 1 cycles, a minute apart, the last at ``now``."""
    for i in range(minutes + 1):
        age = (minutes - i) * STEP
        store.write(cycle(now - age, age, i))


def node_store(path: Path, now: float) -> str:
    """A SQLite store at ``path`` holding the scripted hour; returns its URL (closed)."""
    url = f"sqlite:///{path}"
    store = open_store(url, node=NODE)
    try:
        write_node(store, now)
        store.flush()
    finally:
        store.close()
    return url
