"""``gpuwarden budget``: the memory budget as one page of text, from a config's store.

The page is written from the budget's JSON (``capacity/budget.py``, ``Budget.to_json``),
whichever way it came: built here over the config's store (:func:`budget_from_config`),
or fetched from a running daemon's ``/api/v1/budget``. One formatter for both, so the
two never drift apart. Every absent figure reads "n/a" with its reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

from gpuwarden.alerts.alert import rfc3339
from gpuwarden.config import Config
from gpuwarden.durations import format_duration

PART_NAMES = {"kv_cache": "KV cache", "server_other": "server other",
              "other_processes": "other processes", "free": "free"}
Doc = Mapping[str, Any]


def budget_from_config(config: Config, now: float) -> dict[str, object]:
    """The budget of the config's node over its store, opened as ``backtest`` does.

    Raises ``StoreError`` for a store that cannot be opened or read.
    """
    from gpuwarden.capacity.budget import build_budget
    from gpuwarden.storage import open_store

    # Read-only in practice: nothing is written; a generous busy timeout so a running
    # daemon's write lock delays the report instead of failing it.
    store = open_store(config.storage.url, node=config.node, busy_timeout_ms=5000)
    try:
        return build_budget(store, now, node=config.node, interval=config.interval).to_json()
    finally:
        store.close()


def dumps(doc: Doc) -> str:
    return json.dumps(doc, indent=2)


def _na(missing: Mapping[str, str], name: str) -> str:
    reason = missing.get(name)
    return f"n/a ({reason})" if reason else "n/a"


def _num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def _pct(ratio: float) -> str:
    return f"{ratio * 100:.0f} %"


def _gpu_line(gpu: Doc, target: float) -> str:
    total = gpu.get("total_gib")
    parts = gpu.get("parts") or {}
    missing = gpu.get("missing") or {}
    pieces = []
    for name, shown in PART_NAMES.items():
        part = parts.get(name) or {}
        if part.get("gib") is None:
            pieces.append(f"{shown} {_na(missing, f'parts.{name}')}")
        elif part.get("percent") is None:
            pieces.append(f"{shown} {part['gib']:.1f} GiB")
        else:
            pieces.append(f"{shown} {part['gib']:.1f} GiB ({part['percent']:.0f} %)")
    head = f"GPU {gpu.get('gpu')} {gpu.get('model')}".rstrip()
    size = "n/a" if total is None else f"{total:.1f} GiB"
    headroom = gpu.get("headroom_ratio")
    if headroom is None:
        room = f"headroom {_na(missing, 'headroom_ratio')}"
    elif gpu.get("below_target"):
        room = f"headroom {_pct(headroom)} below the {_pct(target)} target"
    else:
        room = f"headroom {_pct(headroom)} (target {_pct(target)})"
    return f"{head}: {size} = {' + '.join(pieces)} - {room}"


def _gpu_detail(gpu: Doc) -> str:
    missing = gpu.get("missing") or {}
    servers = ", ".join(gpu.get("servers") or ()) or "none known"
    bandwidth = gpu.get("peak_bandwidth_bytes_per_second")
    peak = ("n/a" if bandwidth is None else f"{bandwidth / 1e12:.2f} TB/s")
    cost = gpu.get("cost_per_hour_usd")
    price = _na(missing, "cost_per_hour_usd") if cost is None else f"${cost:.2f}"
    return f"  servers: {servers}; peak memory bandwidth {peak}; cost per hour {price}"


def _lengths(lengths: Doc) -> str:
    shown = []
    for q in ("p50", "p95"):
        row = lengths.get(q) or {}
        if row.get("total") is None:
            continue
        shown.append(f"{q} {_num(row['total'])} tokens (prompt {_num(row['prompt'])} + "
                     f"generation {_num(row['generation'])})")
    return ", ".join(shown)


def _server_lines(server: Doc, doc: Doc) -> list[str]:
    missing = server.get("missing") or {}
    windows = doc.get("windows") or {}
    gpus = server.get("gpus") or []
    where = (f"GPU {', '.join(gpus)}" if len(gpus) == 1 else f"GPUs {', '.join(gpus)}") \
        if gpus else "GPUs unknown"
    lines = [f"server {server.get('server')} ({server.get('model')}) on node "
             f"{server.get('node')}, {where}:"]
    tokens = server.get("kv_cache_capacity_tokens")
    kv = server.get("kv_cache_memory_bytes")
    fraction = server.get("gpu_memory_utilization_config")
    size = (_na(missing, "kv_cache_capacity_tokens") if tokens is None
            else f"{_num(tokens)} tokens")
    memory = (_na(missing, "kv_cache_memory_bytes") if kv is None
              else f"{kv / (1 << 30):.1f} GiB")
    setting = (_na(missing, "server_gpu_memory_utilization_config") if fraction is None
               else f"{fraction:g}")
    lines.append(f"  KV cache {size} in {memory}; gpu_memory_utilization {setting}")
    lengths_window = format_duration(windows.get("lengths_seconds", 0))
    lengths = _lengths(server.get("lengths_tokens") or {})
    lines.append(f"  request length over the last {lengths_window}: "
                 f"{lengths or _na(missing, 'lengths_tokens')}")
    fits = server.get("sequences") or {}
    if all(fits.get(q) is None for q in ("p50", "p95")) and \
            missing.get("sequences.p50") == missing.get("sequences.p95"):
        lines.append(f"  sequences that fit: {_na(missing, 'sequences.p95')}")
    else:
        lines.append("  sequences that fit: " + ", ".join(
            f"{_na(missing, f'sequences.{q}')} at {q}" if fits.get(q) is None
            else f"{_num(fits[q], 1)} at {q}" for q in ("p50", "p95")))
    target = doc.get("what_if_gpu_memory_utilization")
    change = server.get("what_if")
    if change is None:
        lines.append(f"  at gpu_memory_utilization {target:g}: {_na(missing, 'what_if')}")
    else:
        seq = change.get("sequences_p95")
        text = (f"  at gpu_memory_utilization {change['gpu_memory_utilization']:g}: "
                f"{_num(math.floor(change['tokens']))} tokens, "
                + ("n/a" if seq is None else _num(seq, 1)) + " sequences at p95")
        lines.append(text + (f" ({change['note']})" if change.get("note") else ""))
    lines.append("  " + _load(server, windows))
    lines.append("  " + _efficiency(server, windows))
    return lines


def _load(server: Doc, windows: Doc) -> str:
    missing = server.get("missing") or {}
    peak = server.get("peak_requests")
    head = f"peak running + waiting over the last {format_duration(windows.get('peak_seconds', 0))}"
    if peak is None:
        return f"{head}: {_na(missing, 'peak_requests')}"
    ratio = server.get("capacity_over_peak")
    if ratio is None:
        return f"{head}: {_num(peak)}"
    verdict = ("fits" if ratio >= 1 else
               "more than fit at p95: preemptions are coming")
    return f"{head}: {_num(peak)}, capacity at p95 {ratio:.2f} x the peak ({verdict})"


def _efficiency(server: Doc, windows: Doc) -> str:
    missing = server.get("missing") or {}
    name = "memory_bandwidth_utilization_ratio"
    by_gpu = server.get(name)
    if not by_gpu:
        bandwidth = _na(missing, name)
    else:
        bandwidth = ", ".join(f"{_pct(v)}" + (f" (GPU {g})" if g else "")
                              for g, v in sorted(by_gpu.items()))
    flops = server.get("model_flops_utilization_ratio")
    mfu = (_na(missing, "model_flops_utilization_ratio") if flops is None else _pct(flops))
    usd = server.get("cost_per_million_tokens_usd")
    cost = _na(missing, "cost_per_million_tokens_usd") if usd is None else f"${usd:.2f}"
    window = format_duration(windows.get("efficiency_seconds", 0))
    return (f"over the last {window}: memory bandwidth {bandwidth}; FLOP utilisation {mfu}; "
            f"cost per million tokens {cost}")


def format_text(doc: Doc) -> str:
    """The one-page budget: a line (and a detail line) per GPU, a block per server."""
    target = float(doc.get("headroom_target_ratio", 0.15))
    node = doc.get("node")
    at = doc.get("generated_at")
    lines = [f"memory budget{f' of node {node}' if node else ''}"
             f"{f' at {rfc3339(at)}' if at is not None else ''}"]
    gpus: Sequence[Doc] = doc.get("gpus") or []
    servers: Sequence[Doc] = doc.get("servers") or []
    if not gpus and not servers:
        lines.append("no GPU or server in the store for this node: is the daemon running "
                     "and writing to it?")
        return "\n".join(lines)
    nodes = {g.get("node") for g in gpus}
    for gpu in gpus:
        prefix = f"[{gpu.get('node')}] " if len(nodes) > 1 else ""
        lines += ["", prefix + _gpu_line(gpu, target), _gpu_detail(gpu)]
    for server in servers:
        lines += ["", *_server_lines(server, doc)]
    return "\n".join(lines)
