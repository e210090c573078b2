"""Every node's samples of a signal, read from the shared store for the fleet rules.

The leader reads what the nodes have written: the ``chunks`` of the matching series and
the ``head_log`` rows of every node (the cycles not cut into chunks yet; a cut moves a
cycle from one to the other in one transaction, so a sample is in exactly one of them).
Several signals are read together (:meth:`FleetSource.query_many`, which the rule
engine prefers) so that one evaluation scans the head log once, however many signals
its rules need. Samples a node has collected but not written yet are not seen: the
fleet runs on what reached the database.

``node_silence_intervals`` is not stored: it is computed from the ``nodes`` table
(``nodes.NodeRow.silence_intervals``), one series per node that is running (not
stopped cleanly), with one sample at the end of the range read (the evaluation time).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Mapping

import numpy as np
from sqlalchemy import Connection, Engine, and_, select

from gpuwarden.fleet.nodes import read_nodes
from gpuwarden.model import Labels, SeriesData, labels_match
from gpuwarden.storage import codec, schema
from gpuwarden.storage.queries import ms_bounds, read_chunks, series_of

SILENCE_SIGNAL = "node_silence_intervals"
Ranges = Mapping[str, tuple[float, float]]


class FleetSource:
    """A rule engine's ``SeriesSource`` over every node of a shared store."""

    def __init__(self, engine: Engine, clock: Callable[[], float]) -> None:
        self.engine = engine
        self._clock = clock

    def query(self, signal: str, matchers: Mapping[str, str] | None = None,
              start: float = -math.inf, end: float = math.inf) -> list[SeriesData]:
        got, failed = self.query_many({signal: (start, end)})
        if signal in failed:
            raise failed[signal]
        return [s for s in got[signal] if labels_match(s.labels, matchers)]

    def query_many(
        self, ranges: Ranges
    ) -> tuple[dict[str, list[SeriesData]], dict[str, Exception]]:
        """Each signal's series over its ``(start, end)``; a failed read fails them all
        (one connection, one snapshot of the fleet)."""
        try:
            with self.engine.connect() as conn:
                return self._read(conn, ranges), {}
        except Exception as exc:
            return {}, dict.fromkeys(ranges, exc)

    def _read(self, conn: Connection, ranges: Ranges) -> dict[str, list[SeriesData]]:
        out: dict[str, list[SeriesData]] = {}
        stored = {s: r for s, r in ranges.items() if s != SILENCE_SIGNAL}
        if SILENCE_SIGNAL in ranges:
            # At the end of the range (the evaluation's ``now``): a sample stamped later,
            # when the read happens, would fall outside the rule's window.
            out[SILENCE_SIGNAL] = self._silence(conn, min(ranges[SILENCE_SIGNAL][1],
                                                          self._clock()))
        if not stored:
            return out
        keys: dict[int, tuple[str, Labels]] = {
            db_id: (signal, labels)
            for signal, found in series_of(conn, sorted(stored), None).items()
            for db_id, labels in found}
        bounds = [ms_bounds(start, end) for start, end in stored.values()]
        lo, hi = min(b[0] for b in bounds), max(b[1] for b in bounds)
        parts: dict[int, list[tuple[np.ndarray, np.ndarray]]] = defaultdict(list)
        if keys:
            self._chunks(conn, sorted(keys), lo, hi, parts)
            self._head_log(conn, np.array(sorted(keys), dtype=np.int64), lo, hi, parts)
        for signal in stored:
            out[signal] = []
        for sid, pieces in sorted(parts.items()):
            signal, labels = keys[sid]
            start, end = stored[signal]
            ts = np.concatenate([p[0] for p in pieces]) / 1000.0
            vals = np.concatenate([p[1] for p in pieces])
            # Sorted, and one sample per timestamp: a cycle written twice (a commit whose
            # acknowledgement was lost, then retried) must not count twice in a rate.
            ts, first = np.unique(ts, return_index=True)
            vals = vals[first]
            keep = (ts >= start) & (ts <= end)
            if keep.any():
                out[signal].append(SeriesData(signal, labels, ts[keep], vals[keep]))
        return out

    @staticmethod
    def _chunks(conn: Connection, ids: list[int], lo: int, hi: int,
                parts: dict[int, list[tuple[np.ndarray, np.ndarray]]]) -> None:
        rows = read_chunks(conn, ids, lo, hi)
        for (sid, _), (ts, vals) in zip(rows, codec.decode_chunks([b for _, b in rows]),
                                        strict=True):
            parts[sid].append((ts, vals))

    @staticmethod
    def _head_log(conn: Connection, ids: np.ndarray, lo: int, hi: int,
                  parts: dict[int, list[tuple[np.ndarray, np.ndarray]]]) -> None:
        hl = schema.head_log
        rows = conn.execute(select(hl.c.data).where(
            and_(hl.c.t_max >= lo, hl.c.t_min <= hi))).all()
        if not rows:
            return
        # Every row's wanted samples gathered first, then split by series once: a
        # per-row, per-series split costs a numpy call per series and cycle.
        wanted = np.zeros(int(ids.max()) + 2, dtype=bool)  # a table: np.isin sorts per row
        wanted[ids] = True
        picked = []
        for r in rows:
            sids, ts, vals = codec.decode_cycle(r.data)
            mask = wanted[np.minimum(sids, wanted.size - 1)]
            if mask.any():
                picked.append((sids[mask], ts[mask], vals[mask]))
        if not picked:
            return
        sids = np.concatenate([p[0] for p in picked])
        ts = np.concatenate([p[1] for p in picked])
        vals = np.concatenate([p[2] for p in picked])
        order = np.argsort(sids, kind="stable")
        sids, ts, vals = sids[order], ts[order], vals[order]
        bounds = np.flatnonzero(np.diff(sids)) + 1
        for sid_part, ts_part, val_part in zip(np.split(sids, bounds), np.split(ts, bounds),
                                               np.split(vals, bounds), strict=True):
            parts[int(sid_part[0])].append((ts_part, val_part))

    @staticmethod
    def _silence(conn: Connection, now: float) -> list[SeriesData]:
        out = []
        for row in read_nodes(conn):
            if row.stopped:
                continue  # stopped on purpose: not expected to write
            out.append(SeriesData(SILENCE_SIGNAL, (("node", row.node),), np.array([now]),
                                  np.array([row.silence_intervals(now)])))
        return out
