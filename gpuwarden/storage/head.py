"""The in-memory head: cycles as columnar numpy parts, and the query merge.

Why columnar per cycle rather than a list per series: ``write()`` then costs a handful
of numpy calls per cycle instead of 2,400 Python appends, and a cut is one
``lexsort`` over all cycles. A query finds its series in each cycle with one
``searchsorted`` over the cycle's sorted id array; consecutive cycles with the same
series set share one id array, so that lookup is done once per run of cycles.

Everything here is pure (no locks, no I/O): the store takes snapshots of the entry
list under its lock and hands them to these functions outside it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from gpuwarden.model import Labels, SeriesData
from gpuwarden.storage import codec
from gpuwarden.storage.codec import F64Array, I64Array


@dataclass(slots=True)
class Part:
    """Samples of one cycle with unique local series ids, sorted by id."""

    ids: I64Array
    ts: I64Array
    vals: F64Array


@dataclass(slots=True, eq=False)
class Entry:
    """One ``write()`` call; one head-log row once persisted (``log_id``)."""

    parts: list[Part]
    t_min: int
    t_max: int
    count: int
    log_id: int | None = None
    chunked: bool = False

    def columns(self) -> tuple[I64Array, I64Array, F64Array]:
        if len(self.parts) == 1:
            p = self.parts[0]
            return p.ids, p.ts, p.vals
        return (
            np.concatenate([p.ids for p in self.parts]),
            np.concatenate([p.ts for p in self.parts]),
            np.concatenate([p.vals for p in self.parts]),
        )


#: (t_min, t_max, parts) of each entry, as copied under the store's lock.
Snapshot = list[tuple[int, int, list[Part]]]


def split_cycle(
    lids: I64Array, ts: I64Array, vals: F64Array, last_ids: I64Array
) -> tuple[Entry, I64Array]:
    """Sort a cycle by series, splitting it where a series occurs more than once.

    Returns the entry and the id array to share with the next cycle.
    """
    order = np.argsort(lids, kind="stable")
    lids, ts, vals = lids[order], ts[order], vals[order]
    n = int(lids.size)
    same = lids[1:] == lids[:-1]
    if n > 1 and same.any():
        first = np.concatenate(([True], ~same))
        starts = np.flatnonzero(first)
        rank = np.arange(n) - starts[np.cumsum(first) - 1]
        parts = []
        for r in range(int(rank.max()) + 1):
            m = rank == r
            parts.append(Part(lids[m], ts[m], vals[m]))
    else:
        if np.array_equal(lids, last_ids):
            lids = last_ids
        last_ids = lids
        parts = [Part(lids, ts, vals)]
    return Entry(parts, int(ts.min()), int(ts.max()), n), last_ids


def _locate(ids: I64Array, want: I64Array) -> tuple[I64Array, I64Array]:
    """(positions in ``want`` found in ``ids``, their indices in ``ids``)."""
    if ids.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pos = np.minimum(np.searchsorted(ids, want), ids.size - 1)
    hit = np.flatnonzero(ids[pos] == want)
    return hit, pos[hit]


@dataclass(slots=True)
class Gathered:
    """Samples collected for a query: target index, int64 ms timestamp, value."""

    targets: list[I64Array] = field(default_factory=list)
    ts: list[I64Array] = field(default_factory=list)
    vals: list[F64Array] = field(default_factory=list)

    def add_chunks(
        self, rows: Sequence[tuple[int, bytes]], target_of_db: Mapping[int, int]
    ) -> None:
        for db_id, blob in rows:
            t, v = codec.decode_chunk(blob)
            self.targets.append(np.full(t.size, target_of_db[db_id], dtype=np.int64))
            self.ts.append(t)
            self.vals.append(v)

    def add_head(self, snap: Snapshot, lids: Sequence[int], lo: int, hi: int) -> None:
        """Add head samples of the targets' local ids (-1: not in the head)."""
        lid_arr = np.array(lids, dtype=np.int64)
        order = np.argsort(lid_arr, kind="stable")
        order = order[lid_arr[order] >= 0]
        want = lid_arr[order]
        if not want.size:
            return
        prev_ids: I64Array | None = None
        hit = idx = np.empty(0, np.int64)
        for t_min, t_max, parts in snap:
            if t_max < lo or t_min > hi:
                continue
            for p in parts:
                if p.ids is not prev_ids:
                    prev_ids = p.ids
                    hit, idx = _locate(p.ids, want)
                if hit.size:
                    self.targets.append(order[hit])
                    self.ts.append(p.ts[idx])
                    self.vals.append(p.vals[idx])

    def to_series(
        self, signal: str, keys: Sequence[Labels], start: float, end: float
    ) -> list[SeriesData]:
        """One SeriesData per target with samples in [start, end], sorted by time."""
        if not self.ts:
            return []
        tgt = np.concatenate(self.targets)
        secs = np.concatenate(self.ts) / 1000.0
        vals = np.concatenate(self.vals)
        keep = (secs >= start) & (secs <= end)
        tgt, secs, vals = tgt[keep], secs[keep], vals[keep]
        srt = np.lexsort((secs, tgt))
        tgt, secs, vals = tgt[srt], secs[srt], vals[srt]
        bounds = (np.flatnonzero(tgt[1:] != tgt[:-1]) + 1).tolist()
        out = []
        for a, b in zip([0, *bounds], [*bounds, int(tgt.size)], strict=True):
            if b > a:
                out.append(SeriesData(signal, keys[int(tgt[a])], secs[a:b], vals[a:b]))
        return out


def newest(
    entries_newest_first: Sequence[Entry], lids: Sequence[int]
) -> dict[int, tuple[int, float]]:
    """Local id -> (ts ms, value) of the most recently written sample of each id."""
    want = np.array(sorted(lids), dtype=np.int64)
    found = np.zeros(want.size, dtype=bool)
    out: dict[int, tuple[int, float]] = {}
    for e in entries_newest_first:
        for p in reversed(e.parts):
            if found.all():
                return out
            hit, idx = _locate(p.ids, want)
            fresh = ~found[hit]
            for j, i in zip(hit[fresh].tolist(), idx[fresh].tolist(), strict=True):
                out[int(want[j])] = (int(p.ts[i]), float(p.vals[i]))
            found[hit] = True
    return out
