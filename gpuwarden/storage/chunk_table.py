"""Where a store's chunks go: the ``chunks`` layout it found, and how to fill and expire it.

SQLite (``"rowid"``) and a PostgreSQL table made before partitioning (``"legacy"``) are
written as before (``chunk_cut.insert_chunks``) and expired by short ``DELETE`` batches
(``retention.py``). A partitioned table or a TimescaleDB hypertable (``pg_chunks.py``)
gets its day partitions made ahead of each cut, idempotent inserts, and retention by
dropping whole partitions. The store calls :meth:`ChunkTable.prepare` before its cut's
transaction and :meth:`ChunkTable.insert` inside it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import Connection, Engine

from gpuwarden.ratelog import RateLimitedLog
from gpuwarden.storage import pg_chunks, retention
from gpuwarden.storage.chunk_cut import MAX_CHUNK_SPAN_MS, ChunkRow, insert_chunks
from gpuwarden.storage.db_errors import DB_ERRORS, db_error_text
from gpuwarden.storage.engine import write_transaction
from gpuwarden.storage.pg_chunks import Layout

log = logging.getLogger(__name__)
_ratelog = RateLimitedLog(log)

LEGACY_NOTE = (
    "chunks table of %s is not partitioned (made before gpuwarden partitioned it): "
    "samples are stored and expired as before (DELETE batches; a retried cut may store a "
    "chunk twice); to partition it, stop the daemons and run "
    "`python -m gpuwarden.storage.pg_migrate URL`, or point gpuwarden at a new database"
)
#: Databases whose legacy table was reported already (once per process, not per store).
_noted_legacy: set[str] = set()


class ChunkTable:
    """The ``chunks`` table of one store's database (see the module doc)."""

    def __init__(self, engine: Engine) -> None:
        self.layout: Layout = "rowid"
        self.partitions = pg_chunks.Partitions()
        self.conflicts_total = 0  # chunk rows a retried cut found stored already
        self.differing_total = 0  # of those, rows whose stored chunk holds other samples
        if engine.dialect.name != "postgresql":
            return
        with engine.connect() as conn:
            self.layout = pg_chunks.detect_layout(conn) or "legacy"
        url = engine.url.render_as_string(hide_password=True)
        if self.layout == "legacy" and url not in _noted_legacy:
            _noted_legacy.add(url)
            log.warning(LEGACY_NOTE, url)

    @property
    def partitioned(self) -> bool:
        return self.layout in ("partitioned", "hypertable")

    def prepare(self, engine: Engine, rows: Sequence[ChunkRow]) -> None:
        """Make the day partitions these rows need, and the next day's ahead, each in a
        transaction of its own: partition DDL locks ``chunks``, a cut should not wait."""
        days = pg_chunks.days_of(r[1] for r in rows)
        self.prepare_days(engine, days)
        if days:
            self.prepare_ahead(engine, days[-1] + 1)

    def prepare_days(self, engine: Engine, days: Sequence[int]) -> None:
        """Make these days' partitions; raises what the database raised."""
        if self.layout != "partitioned":
            return
        missing = self.partitions.missing(days)
        if missing:
            with write_transaction(engine) as conn:
                self.partitions.ensure(conn, missing)

    def prepare_ahead(self, engine: Engine, day: int) -> None:
        """Make a day's partition before rows need it; a failure (the lock on ``chunks``
        not granted within the lock timeout) is logged and tried again on the next call."""
        try:
            self.prepare_days(engine, [day])
        except DB_ERRORS as exc:
            _ratelog.warning("ahead", "partition of day %d not made yet, will retry: %s",
                             day, db_error_text(exc))

    def insert(self, conn: Connection, rows: list[ChunkRow]) -> None:
        """Insert a cut's rows in the connection's transaction; a row whose key is stored
        already (a retried cut) is skipped on a partitioned table or hypertable."""
        if not self.partitioned:
            insert_chunks(conn, rows)
            return
        try:
            inserted, differing = pg_chunks.insert_idempotent(conn, rows)
        except Exception as exc:
            if pg_chunks.is_missing_partition(exc):
                self.partitions.forget()  # dropped under us: made again on the next try
            raise
        self.conflicts_total += len(rows) - inserted
        self.differing_total += differing
        if differing:
            _ratelog.warning(
                "differing", "%d chunks of this cut were stored already with other samples "
                "(same series and first timestamp: a clock that stepped back?); the stored "
                "ones are kept (%d so far)", differing, self.differing_total)

    def apply_retention(
        self, engine: Engine, now: float, retention_seconds: float, *, batch_size: int
    ) -> int:
        """Expire chunks and rollups older than the retention; rows removed (for dropped
        partitions the planner's estimate). Partitions are made ahead here too."""
        if not self.partitioned:
            return retention.apply_retention(
                lambda: write_transaction(engine), now, retention_seconds,
                batch_size=batch_size)
        if retention_seconds <= 0:
            raise ValueError("retention_seconds must be positive")
        cutoff_ms = int((now - retention_seconds) * 1000)
        today = int(now * 1000) // pg_chunks.PARTITION_MS
        self.prepare_ahead(engine, today)
        self.prepare_ahead(engine, today + 1)
        with write_transaction(engine) as conn:
            pg_chunks.lock_ddl(conn)
            # a chunk starting before this ends before the cutoff (chunks never span more)
            dropped = pg_chunks.drop_partitions_before(
                conn, self.layout, cutoff_ms - MAX_CHUNK_SPAN_MS)
        self.partitions.forget()
        return dropped + retention.apply_rollup_retention(
            lambda: write_transaction(engine), cutoff_ms, batch_size=batch_size)
