"""Each GPU's memory budget, which GPUs each server uses, and what a GPU hour costs.

Computed once per cycle from what the collectors returned (``gpu_memory_total_bytes``,
``gpu_memory_headroom_ratio`` and ``gpu_process_memory_used_bytes`` of the GPU source,
``kv_cache_memory_bytes`` of the servers), after collection (``daemon/cycle.py``), so the
samples are stored and exported like any other.

Per GPU (per MIG instance where the GPU has them; never for a MIG parent, which would
count its instances' memory twice), ``gpu_memory_budget_bytes{part}``:

* ``free`` = headroom x total;
* server memory = the memory of the GPU's processes that belong to a server:
  attributed through /proc (``attribution.py``), or, on a GPU in a server's configured
  ``gpus`` where /proc gave that server no process, the largest process there that no
  server claimed (an inference server runs one process per GPU: a vLLM or SGLang worker
  per tensor-parallel rank, a TGI shard, llama.cpp's one process; so a second unclaimed
  process there is someone else's, e.g. a job started beside the server). With
  several such servers on one GPU, as many of the largest unclaimed processes, shared
  between them;
* ``kv_cache`` = the sum over the servers on the GPU of their ``kv_cache_memory_bytes``
  (vLLM's KV size per GPU), each clamped to that server's memory on the GPU; a server
  that does not export its KV size counts wholly to ``server_other``;
* ``server_other`` = server memory - ``kv_cache``: weights, activations, CUDA graphs, the
  CUDA context, the allocator's cache (NVML gives one figure per process, so it cannot
  be split further);
* ``other_processes`` = total - free - server memory: processes of no server, and
  driver-reserved memory; clamped at 0, with free reduced so that the parts sum to the
  total exactly (every part is whole bytes).

A GPU without a process list (dcgm-exporter lists none; NVML may refuse it) but with a
configured server gives its used memory (total - free) to the servers: ``kv_cache`` as
above, the rest ``server_other``, ``other_processes`` 0 (other processes cannot be told
apart there). A GPU counts as listing its processes once a process was seen on it
(:class:`MemoryBudget` remembers), since an idle GPU's list is empty, not missing.

``server_gpu_info{node,server,gpu} 1`` for each GPU a server's processes use and each of
its configured ``gpus``. ``gpu_cost_per_hour_usd`` from ``[cost] gpu_hour_usd``: one
price for every GPU, or a price per GPU model name (the ``model`` label); a MIG instance
costs its parent's price x its share of the parent's memory.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gpuwarden.collector.attribution import ProcessAttribution
from gpuwarden.collector.base import ServerSpec
from gpuwarden.model import Labels, Sample, make_labels

PARTS = ("kv_cache", "server_other", "other_processes", "free")
Price = float | tuple[tuple[str, float], ...] | None


@dataclass(slots=True)
class _Gpu:
    """One GPU's (or MIG instance's) figures in this cycle."""

    labels: Labels
    ts: float
    total: float | None = None
    headroom: float | None = None
    processes: dict[int, float] = field(default_factory=dict)


def _gpus(samples: Iterable[Sample]) -> tuple[dict[str, _Gpu], dict[str, float]]:
    """``{gpu label: figures}`` and ``{server: kv_cache_memory_bytes}`` of one cycle."""
    gpus: dict[str, _Gpu] = {}
    kv: dict[str, float] = {}
    for s in samples:
        signal = s.signal
        if signal == "kv_cache_memory_bytes":
            server = dict(s.labels).get("server")
            if server is not None:
                kv[server] = max(kv.get(server, 0.0), s.value)
            continue
        if signal not in ("gpu_memory_total_bytes", "gpu_memory_headroom_ratio",
                          "gpu_process_memory_used_bytes"):
            continue
        labels = dict(s.labels)
        name = labels.get("gpu")
        if name is None:
            continue
        if signal == "gpu_process_memory_used_bytes":
            try:
                pid = int(labels.pop("pid"))
            except (KeyError, ValueError):
                continue
            gpu = gpus.setdefault(name, _Gpu(make_labels(labels), s.ts))
            gpu.processes[pid] = gpu.processes.get(pid, 0.0) + s.value
            continue
        gpu = gpus.setdefault(name, _Gpu(s.labels, s.ts))
        gpu.labels, gpu.ts = s.labels, s.ts  # the GPU's own series name it best
        if signal == "gpu_memory_total_bytes":
            gpu.total = s.value
        else:
            gpu.headroom = s.value
    return gpus, kv


def _covers(configured: str, gpu: str) -> bool:
    """A configured GPU covers itself and, when it is a MIG parent, its instances."""
    return gpu == configured or gpu.startswith(configured + "/")


def split(total: float, free: float, server_memory: float, kv_cache: float,
          other: float | None = None) -> dict[str, float]:
    """The four parts, in whole bytes, summing to ``total`` exactly.

    ``other`` None: other processes are what neither free nor the servers account for;
    a number: that (0 where processes cannot be told apart).
    """
    total_b = float(round(total))
    free_b = float(min(max(round(free), 0), total_b))
    server_b = float(min(max(round(server_memory), 0), total_b))
    kv_b = float(min(max(round(kv_cache), 0), server_b))
    if other is None:
        other_b = total_b - free_b - server_b
    else:
        other_b = float(min(max(round(other), 0), total_b - server_b))
    other_b = max(other_b, 0.0)
    return {"kv_cache": kv_b, "server_other": server_b - kv_b, "other_processes": other_b,
            "free": total_b - server_b - other_b}


def _price(gpu_hour_usd: Price, model: str) -> float | None:
    if gpu_hour_usd is None or isinstance(gpu_hour_usd, float | int):
        return gpu_hour_usd
    return dict(gpu_hour_usd).get(model)


def budget_samples(samples: Sequence[Sample], *, node: str, owners: Mapping[int, str],
                   server_gpus: Mapping[str, Sequence[str]], gpu_hour_usd: Price = None,
                   listed: Collection[str] | None = None) -> list[Sample]:
    """The budget, ``server_gpu_info`` and cost samples of one cycle's ``samples``.

    ``owners``: GPU pid -> server (``attribution.py``); ``server_gpus``: each server's
    configured ``gpus``; ``listed``: the GPUs whose processes are listed (None: those
    with a process in ``samples``).
    """
    gpus, kv = _gpus(samples)
    if listed is None:
        listed = {name for name, gpu in gpus.items() if gpu.processes}
    fallback_ts = max((s.ts for s in samples), default=0.0)
    mig_parents = {name.split("/", 1)[0] for name in gpus if "/" in name}
    on_gpu: dict[str, set[str]] = {}  # server -> GPUs its processes or config put it on
    out: list[Sample] = []
    for name, gpu in gpus.items():
        configured = {s for s, names in server_gpus.items()
                      if any(_covers(c, name) for c in names)}
        claimed: dict[str, float] = {}
        unclaimed: list[float] = []
        for pid, used in gpu.processes.items():
            server = owners.get(pid)
            if server is not None:
                claimed[server] = claimed.get(server, 0.0) + used
                on_gpu.setdefault(server, set()).add(name)
            else:
                unclaimed.append(used)
        # A configured server that /proc gave no process here holds one of the unclaimed
        # ones: the largest (an inference server runs one process per GPU).
        pooled = {s for s in configured if s not in claimed}
        pool = sum(sorted(unclaimed, reverse=True)[:len(pooled)])
        for server in configured:
            on_gpu.setdefault(server, set()).add(name)
        if gpu.total is None or gpu.headroom is None or name in mig_parents:
            continue
        free = gpu.headroom * gpu.total
        other: float | None = None
        if name in listed:
            memory = {s: claimed.get(s, 0.0) + (pool if s in pooled else 0.0)
                      for s in set(claimed) | configured}
            server_memory = sum(claimed.values()) + pool
        elif configured:  # no process list: what is used is the configured servers'
            used = gpu.total - free
            memory, server_memory, other = dict.fromkeys(configured, used), used, 0.0
        else:  # no process list, no server: all that is used is other processes'
            memory, server_memory = {}, 0.0
        kv_cache = sum(min(kv[s], mem) for s, mem in memory.items() if s in kv)
        parts = split(gpu.total, free, server_memory, kv_cache, other)
        out.extend(Sample("gpu_memory_budget_bytes", make_labels(gpu.labels, part=part),
                          value, gpu.ts) for part, value in parts.items())
    out.extend(_costs(gpus, gpu_hour_usd))
    for server in sorted(on_gpu.keys() | server_gpus.keys()):
        for name in sorted(on_gpu.get(server, set()) | set(server_gpus.get(server, ()))):
            ts = gpus[name].ts if name in gpus else fallback_ts
            out.append(Sample("server_gpu_info",
                              make_labels(node=node, server=server, gpu=name), 1.0, ts))
    return out


def _costs(gpus: Mapping[str, _Gpu], gpu_hour_usd: Price) -> list[Sample]:
    """``gpu_cost_per_hour_usd`` per GPU whose model has a price; a MIG instance at its
    parent's price x its share of the parent's memory total."""
    if gpu_hour_usd is None:
        return []
    out: list[Sample] = []
    for name, gpu in gpus.items():
        if gpu.total is None:
            continue
        parent_name, _, instance = name.partition("/")
        parent = gpus.get(parent_name) if instance else gpu
        if parent is None or not parent.total:
            continue
        price = _price(gpu_hour_usd, dict(parent.labels).get("model", ""))
        if price is None:
            continue
        share = gpu.total / parent.total if instance else 1.0
        out.append(Sample("gpu_cost_per_hour_usd", gpu.labels, price * share, gpu.ts))
    return out


class MemoryBudget:
    """:func:`budget_samples` each cycle, with the attribution cached between cycles
    and the GPUs seen listing their processes remembered."""

    def __init__(self, node: str, servers: Sequence[ServerSpec], gpu_hour_usd: Price = None,
                 *, attribution: ProcessAttribution | None = None) -> None:
        self.node = node
        self.server_gpus = {s.name: tuple(s.gpus) for s in servers if s.gpus}
        self.gpu_hour_usd = gpu_hour_usd
        self.attribution = attribution if attribution is not None else \
            ProcessAttribution(servers)
        self._listed: set[str] = set()

    def samples(self, cycle: Sequence[Sample]) -> list[Sample]:
        pids: set[int] = set()
        for s in cycle:
            if s.signal == "gpu_process_memory_used_bytes":
                labels = dict(s.labels)
                try:
                    pids.add(int(labels["pid"]))
                except (KeyError, ValueError):
                    continue
                self._listed.add(labels.get("gpu", ""))
        owners = self.attribution.owners(pids)
        return budget_samples(cycle, node=self.node, owners=owners,
                              server_gpus=self.server_gpus, gpu_hour_usd=self.gpu_hour_usd,
                              listed=self._listed)
