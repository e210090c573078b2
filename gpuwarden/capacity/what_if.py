"""What another ``gpu_memory_utilization`` would give a server's KV cache.

vLLM sizes its KV cache as the configured fraction of the GPU's total memory minus what
the weights, the activation peak and the non-torch memory take (its worker's memory
profiling); a change of fraction leaves those alone, so the KV memory moves by exactly
the change x the total::

    KV bytes' = KV bytes + (fraction' - fraction) x total memory of the GPU
    tokens'   = tokens x KV bytes' / KV bytes

(for tensor parallelism, per GPU: every rank holds the same number of blocks, each a
shard; the smallest of the server's GPUs bounds it). Sequences at the p95 length scale
the same way. Servers sharing a GPU share its memory: a fraction that would make theirs
sum to more than 1 does not start, which the ``note`` says.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WhatIf:
    gpu_memory_utilization: float
    kv_cache_memory_bytes: float
    tokens: float
    sequences_p95: float | None
    note: str | None = None

    def to_json(self) -> dict[str, object]:
        return {"gpu_memory_utilization": self.gpu_memory_utilization,
                "kv_cache_memory_bytes": self.kv_cache_memory_bytes,
                "tokens": self.tokens, "sequences_p95": self.sequences_p95,
                "note": self.note}


def what_if(target: float, *, tokens: float | None, kv_bytes: float | None,
            configured: float | None, gpu_total: float | None, sequences_p95: float | None,
            neighbours: Sequence[tuple[str, float | None]] = ()
            ) -> tuple[WhatIf | None, str | None]:
    """The KV cache at fraction ``target``, or None and why it cannot be computed.

    ``neighbours``: the other servers on the same GPUs and their configured fractions.
    """
    if tokens is None:
        return None, "server does not export kv_cache_capacity_tokens"
    if kv_bytes is None or not kv_bytes > 0:
        return None, "server does not export kv_cache_memory_bytes"
    if configured is None:
        return None, "server does not export its gpu_memory_utilization"
    if gpu_total is None:
        return None, "the total memory of the server's GPUs is unknown"
    new_bytes = max(0.0, kv_bytes + (target - configured) * gpu_total)
    scale = new_bytes / kv_bytes
    note = None
    shared = [(name, f) for name, f in neighbours if f is not None]
    together = target + sum(f for _, f in shared)
    if new_bytes == 0:
        note = "no memory left for a KV cache at this fraction"
    elif shared and together > 1.0:
        names = ", ".join(f"{name} ({f:g})" for name, f in shared)
        note = (f"does not fit beside {names} on the same GPU: the fractions would sum to "
                f"{together:.2f} > 1")
    return WhatIf(target, new_bytes, tokens * scale,
                  None if sequences_p95 is None else sequences_p95 * scale, note), None
