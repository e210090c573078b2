"""Cutting head cycles into chunks: one compressed chunk per series and time window.

Why aligned windows of ``span_ms``: every node cuts at the same boundaries, a chunk never
spans more than :data:`MAX_CHUNK_SPAN_MS` (so a range query bounds its index scan by
``t_min``, see ``queries.py``), and the cut cycles' head-log rows can be deleted in the
same transaction that inserts their chunks. The chunks the cut encodes for the database
are kept as the head's :class:`~gpuwarden.storage.head.Block` too, so the memory window
is held compressed without encoding twice.

Pure but for :func:`insert_chunks`; the store chooses the cycles and holds the locks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sqlalchemy import Connection

from gpuwarden.storage import codec
from gpuwarden.storage.codec import I64Array
from gpuwarden.storage.head import Block, Entry, cut_slices

#: Chunks never span more than this, so a range query bounds its index scan by t_min.
MAX_CHUNK_SPAN_MS = 3_600_000

#: A ``chunks`` row: database series id, t_min, t_max (ms), sample count, blob.
ChunkRow = tuple[int, int, int, int, bytes]


def encode_cut(
    cycles: Sequence[Entry], span_ms: int, level: int, db_ids: I64Array
) -> tuple[list[ChunkRow], Block]:
    """The chunk rows of ``cycles`` (``db_ids``: database id by local id) and the same
    chunks as a head block, both ordered by (series, window)."""
    rows: list[ChunkRow] = []
    chunk_lids: list[I64Array] = []
    chunk_tmin: list[I64Array] = []
    chunk_tmax: list[I64Array] = []
    for lids, ts, vals in cut_slices(cycles, span_ms):
        win = ts // span_ms
        cuts = np.flatnonzero((lids[1:] != lids[:-1]) | (win[1:] != win[:-1])) + 1
        starts = np.concatenate(([0], cuts))
        ends = np.concatenate((cuts, [lids.size]))
        chunk_lids.append(lids[starts])
        chunk_tmin.append(ts[starts])
        chunk_tmax.append(ts[ends - 1])
        series = db_ids[lids[starts]].tolist()
        for a, b, sid in zip(starts.tolist(), ends.tolist(), series, strict=True):
            t = ts[a:b]
            rows.append(
                (sid, int(t[0]), int(t[-1]), b - a, codec.encode_chunk(t, vals[a:b], level))
            )
    t_min, t_max = np.concatenate(chunk_tmin), np.concatenate(chunk_tmax)
    block = Block(np.concatenate(chunk_lids), t_min, t_max, [r[4] for r in rows],
                  int(t_min.min()), int(t_max.max()))
    return rows, block


def insert_chunks(conn: Connection, rows: list[ChunkRow]) -> None:
    """Insert chunk rows in the connection's transaction, the fastest way the driver has."""
    if conn.dialect.name == "postgresql":  # binary COPY: ~2.7x executemany on PostgreSQL
        raw: Any = conn.connection.dbapi_connection
        sql = "COPY chunks (series_id, t_min, t_max, count, data) FROM STDIN (FORMAT BINARY)"
        with raw.cursor() as cur, cur.copy(sql) as copy:
            copy.set_types(["int8", "int8", "int8", "int4", "bytea"])
            for row in rows:
                copy.write_row(row)
    else:
        conn.exec_driver_sql(
            "INSERT INTO chunks (series_id, t_min, t_max, count, data) VALUES (?, ?, ?, ?, ?)",
            rows,
        )
