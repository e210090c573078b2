"""Retention: delete chunks and rollups older than the retention, a little at a time.

Why batches: one ``DELETE ... WHERE t_max < cutoff`` over a day of chunks (~900 k rows
at 2,400 series) holds SQLite's single write lock for seconds, during which every
collection cycle would fail over to the pending buffer; on PostgreSQL it makes one huge
transaction and a burst of WAL. Deleting ``batch_size`` rows per short transaction, by
primary key picked through the ``t_max`` / ``t`` index, keeps each lock hold to
milliseconds so the scheduler's writes interleave.

On PostgreSQL a partitioned ``chunks`` table (``pg_chunks.py``) is expired by dropping
whole day partitions instead (``chunk_table.py``); this ``DELETE`` path stays for SQLite
and for a table made before partitioning.

Series rows are deliberately kept: on a shared PostgreSQL another node may still hold
a series in its in-memory head (its head-log blobs are opaque to SQL), and a series row
costs ~100 bytes, so deleting it is not worth the risk of orphaning live samples.

The retention is applied to whole chunks by their newest sample (``t_max``): a chunk
is kept while any of its samples is inside the retention, so data up to one chunk span
older than the cutoff may remain; queries still filter by exact timestamps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import Column, Connection, Table, delete, select

from gpuwarden.storage import schema

BeginWrite = Callable[[], AbstractContextManager[Connection]]


def _delete_older(
    begin: BeginWrite,
    table: Table,
    ts_col: Column[int],
    *,
    cutoff_ms: int,
    batch_size: int,
    pause: float,
) -> int:
    """Delete rows with ``ts_col < cutoff_ms`` in transactions of at most batch_size rows."""
    id_col = table.c.id
    total = 0
    while True:
        with begin() as conn:
            ids = conn.scalars(
                select(id_col).where(ts_col < cutoff_ms).order_by(ts_col).limit(batch_size)
            ).all()
            if ids:
                conn.execute(delete(table).where(id_col.in_(ids)))
        total += len(ids)
        if len(ids) < batch_size:
            return total
        if pause:
            time.sleep(pause)  # let the collection loop take the write lock


def apply_retention(
    begin: BeginWrite,
    now: float,
    retention_seconds: float,
    *,
    batch_size: int = 1000,
    pause: float = 0.0,
) -> int:
    """Delete chunks and 1-minute rollups older than ``now - retention_seconds``.

    ``begin`` opens one write transaction (``engine.write_transaction``). Returns the number
    of rows deleted. Each batch commits on its own, so an interruption (a locked
    database, a crash) leaves a consistent store with part of the work done; the next
    call carries on.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if retention_seconds <= 0:
        raise ValueError("retention_seconds must be positive")
    cutoff_ms = int((now - retention_seconds) * 1000)
    c = schema.chunks
    deleted = _delete_older(
        begin, c, c.c.t_max, cutoff_ms=cutoff_ms, batch_size=batch_size, pause=pause
    )
    return deleted + apply_rollup_retention(begin, cutoff_ms, batch_size=batch_size, pause=pause)


def apply_rollup_retention(
    begin: BeginWrite, cutoff_ms: int, *, batch_size: int = 1000, pause: float = 0.0
) -> int:
    """Delete 1-minute rollups older than ``cutoff_ms`` (Unix ms) in short batches; also
    on a partitioned ``chunks`` table, whose retention drops partitions instead
    (``chunk_table.py``)."""
    r = schema.rollups_1m
    return _delete_older(begin, r, r.c.t, cutoff_ms=cutoff_ms, batch_size=batch_size,
                         pause=pause)
