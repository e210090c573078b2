"""The ``chunks`` table on PostgreSQL: many nodes writing one table, idempotently.

Why it differs from SQLite's rowid table (``schema.py``): on a shared PostgreSQL many
nodes cut into one table, a cut whose commit reply was lost (a network partition) is
retried, and a day of a 1,000-node fleet is ~10^8 chunk rows, too many to expire by
``DELETE``. So a new database gets (:func:`chunks_ddl`):

* a primary key on ``(series_id, t_min)``. A series belongs to one node (``node`` is a
  label) and a chunk is that series over one aligned window starting at its first
  sample, so a key names one chunk; re-inserting it is a retry of the same cut. The key
  also serves the range reads (``queries.read_chunks``), so there is no ``id`` column.
* ``PARTITION BY RANGE (t_min)``, one partition a day (:data:`PARTITION_MS`), created
  ahead by the writer and the retention job (:func:`ensure_partitions`); retention drops
  whole partitions (:func:`drop_partitions_before`). A unique key on a partitioned table
  must hold the partition key, which ``t_min`` is.
* with the TimescaleDB extension installed, a hypertable on ``t_min`` with day chunks
  instead of declarative partitions (TimescaleDB then makes the partitions itself and
  ``drop_chunks`` expires them).

Inserts are binary ``COPY`` straight into the table inside a savepoint; only when the
key already holds a row (a retried cut) does the savepoint roll back and the rows go
through a temporary table and ``INSERT .. SELECT .. ON CONFLICT DO NOTHING``
(:func:`insert_idempotent`). Measured on the development VM (a cut of 400 / 2,400 chunk
rows into a partitioned table, median of 12, interleaved): COPY 2.4 / 22.6 ms,
COPY in a savepoint 3.1 / 22.0 ms, COPY into a temporary table + INSERT .. SELECT
4.7 / 34.2 ms, ``INSERT .. SELECT FROM unnest(arrays)`` 6.8 / 69.5 ms, ``executemany``
9.1 / 53.3 ms; a retried 2,400-row cut costs 43 ms (the failed COPY, then the fallback).
Nothing of it holds session state between transactions, so it works through a pooler in
transaction mode (PgBouncer); the temporary table is dropped at commit.

A database made before this has a plain ``chunks`` table (``"legacy"``): it is used as
it is (plain COPY, ``DELETE`` retention) and a line says once how to migrate it
(``python -m gpuwarden.storage.pg_migrate URL``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import zlib
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError

log = logging.getLogger(__name__)

#: How ``chunks`` is laid out: SQLite's rowid table, a PostgreSQL table made before
#: partitioning, declarative day partitions, or a TimescaleDB hypertable.
Layout = Literal["rowid", "legacy", "partitioned", "hypertable"]
#: One partition (or hypertable chunk) per UTC day of ``t_min``.
PARTITION_MS = 86_400_000
#: Transaction-level advisory lock key taken while DDL on ``chunks`` runs, so nodes
#: starting together do not race on ``CREATE TABLE`` (a transaction lock: it works
#: through a pooler in transaction mode and is never held past the DDL).
DDL_LOCK_KEY = zlib.crc32(b"gpuwarden.storage.chunks.ddl")
COLUMNS = "(series_id, t_min, t_max, count, data)"
COPY_TYPES = ["int8", "int8", "int8", "int4", "bytea"]

_TABLE = (
    "CREATE TABLE IF NOT EXISTS chunks (\n"
    "\tseries_id BIGINT NOT NULL,\n"
    "\tt_min BIGINT NOT NULL,\n"  # Unix milliseconds, inclusive
    "\tt_max BIGINT NOT NULL,\n"
    "\tcount INTEGER NOT NULL,\n"
    "\tdata BYTEA NOT NULL,\n"  # codec.encode_chunk
    "\tCONSTRAINT pk_chunks PRIMARY KEY (series_id, t_min)\n"
    ")"
)
#: ``max(t_max)`` at a store's start and the ``DELETE`` path read it.
_TMAX_INDEX = "CREATE INDEX IF NOT EXISTS ix_chunks_tmax ON chunks (t_max)"


def chunks_ddl(extensions: Iterable[str]) -> tuple[str, ...]:
    """The statements that make a new ``chunks`` table, given the installed extensions."""
    if "timescaledb" in set(extensions):
        return (
            _TABLE,
            "SELECT create_hypertable('chunks', 't_min', "
            f"chunk_time_interval => {PARTITION_MS}::bigint, "
            "create_default_indexes => FALSE, if_not_exists => TRUE)",
            _TMAX_INDEX,
        )
    return (_TABLE + " PARTITION BY RANGE (t_min)", _TMAX_INDEX)


def installed_extensions(conn: Connection) -> set[str]:
    return {str(name) for name in conn.scalars(text("SELECT extname FROM pg_extension"))}


def detect_layout(conn: Connection) -> Layout | None:
    """How the ``chunks`` table on the search path is laid out; None when there is none."""
    kind = conn.scalar(text("SELECT relkind FROM pg_class WHERE oid = to_regclass('chunks')"))
    if kind is None:
        return None
    if kind == "p":
        return "partitioned"
    if "timescaledb" in installed_extensions(conn) and conn.scalar(text(
            "SELECT count(*) FROM timescaledb_information.hypertables "
            "WHERE hypertable_name = 'chunks' AND hypertable_schema = current_schema()")):
        return "hypertable"
    return "legacy"


#: How long a node waits for the other nodes' DDL on ``chunks`` (nodes starting together
#: queue here; the store's own ``lock_timeout``, 300 ms, is meant for a cycle's write).
DDL_LOCK_TIMEOUT_MS = 5_000


def lock_ddl(conn: Connection) -> None:
    """Serialise schema changes between nodes until this transaction ends.

    Only the wait for the advisory lock is long: the table locks the DDL then takes
    (``ACCESS EXCLUSIVE`` on ``chunks`` to make or drop a partition) keep the session's
    short ``lock_timeout``, since every write and read of ``chunks`` queues behind a
    waiting one; a partition that cannot be made or dropped now is tried again later.
    """
    short = conn.scalar(text("SELECT current_setting('lock_timeout')"))
    conn.execute(text(f"SET LOCAL lock_timeout = {DDL_LOCK_TIMEOUT_MS}"))
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": DDL_LOCK_KEY})
    conn.execute(text("SELECT set_config('lock_timeout', :v, true)"), {"v": short})


def create_chunks(conn: Connection) -> Layout:
    """Make ``chunks`` if it is missing (see the module doc); its layout either way.

    Runs in the caller's transaction (``schema.create_tables``), under :func:`lock_ddl`.
    """
    lock_ddl(conn)
    layout = detect_layout(conn)
    if layout is not None:
        return layout
    for statement in chunks_ddl(installed_extensions(conn)):
        conn.execute(text(statement))
    layout = detect_layout(conn)
    assert layout is not None  # just made
    return layout


# ------------------------------------------------------------------------- partitions
def partition_name(day: int) -> str:
    """``chunks_pYYYYMMDD`` for a UTC day number (days since the Unix epoch)."""
    try:
        date = dt.date(1970, 1, 1) + dt.timedelta(days=day)
    except OverflowError:  # a timestamp outside years 1-9999 still gets a partition
        return f"chunks_d{day}".replace("-", "m")
    return f"chunks_p{date:%Y%m%d}"


def existing_partitions(conn: Connection) -> dict[str, int]:
    """Partition name -> its first day, of every partition of ``chunks``."""
    rows = conn.execute(text(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
        "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass('chunks')"
    )).all()
    out: dict[str, int] = {}
    for name, bound in rows:  # FOR VALUES FROM ('1700006400000') TO ('1700092800000')
        lower = str(bound).split("(", 1)[1].split(")", 1)[0].strip("'")
        if lower.lstrip("-").isdigit():
            out[str(name)] = int(lower) // PARTITION_MS
    return out


class Partitions:
    """The day partitions a store knows exist; makes the missing ones, thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._known: set[int] = set()
        self.created_total = 0

    def forget(self) -> None:
        """Ask the database again next time (a partition may have been dropped)."""
        with self._lock:
            self._known.clear()

    def missing(self, days: Iterable[int]) -> list[int]:
        with self._lock:
            return sorted(set(days) - self._known)

    def ensure(self, conn: Connection, days: Sequence[int]) -> None:
        """Create the partitions of ``days`` that do not exist, in the caller's
        transaction (commit it before inserting: the DDL takes a lock on ``chunks``)."""
        if not days:
            return
        have = set(existing_partitions(conn).values())
        if not set(days) <= have:  # only a node that has one to make queues for the lock
            lock_ddl(conn)
            have = set(existing_partitions(conn).values())
        for day in days:
            if day in have:
                continue
            lo, hi = day * PARTITION_MS, (day + 1) * PARTITION_MS
            conn.execute(text(f'CREATE TABLE "{partition_name(day)}" PARTITION OF chunks '
                              f"FOR VALUES FROM ({lo}) TO ({hi})"))
            self.created_total += 1
        with self._lock:
            self._known.update(days)


def days_of(t_mins: Iterable[int]) -> list[int]:
    """The days holding these ``t_min``."""
    return sorted({t // PARTITION_MS for t in t_mins})


def drop_partitions_before(conn: Connection, layout: Layout, before_ms: int) -> int:
    """Drop every partition (hypertable chunk) whose rows all have ``t_min < before_ms``;
    the rows they held, as the planner's estimate (counting them would read them)."""
    if layout == "hypertable":
        rows = conn.execute(text(
            "SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) FROM show_chunks("
            "'chunks', older_than => CAST(:t AS bigint)) s JOIN pg_class c ON c.oid = s"),
            {"t": before_ms}).scalar_one()
        conn.execute(text("SELECT drop_chunks('chunks', older_than => CAST(:t AS bigint))"),
                     {"t": before_ms})
        return int(rows)
    dropped = 0
    for name, day in sorted(existing_partitions(conn).items(), key=lambda kv: kv[1]):
        if (day + 1) * PARTITION_MS > before_ms:
            continue
        estimate = conn.scalar(text("SELECT reltuples FROM pg_class WHERE oid = to_regclass(:n)"),
                               {"n": f'"{name}"'})
        conn.execute(text(f'DROP TABLE "{name}"'))
        dropped += max(int(estimate or 0), 0)
    return dropped


# ----------------------------------------------------------------------------- insert
def _raw(conn: Connection) -> Any:
    return conn.connection.dbapi_connection


def _copy(cursor: Any, table: str, rows: Sequence[tuple[int, int, int, int, bytes]]) -> None:
    with cursor.copy(f"COPY {table} {COLUMNS} FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(COPY_TYPES)
        for row in rows:
            copy.write_row(row)


def copy_rows(conn: Connection, rows: Sequence[tuple[int, int, int, int, bytes]]) -> None:
    """Binary COPY into ``chunks`` in the connection's transaction (no key check)."""
    import psycopg

    try:
        with _raw(conn).cursor() as cur:
            _copy(cur, "chunks", rows)
    except psycopg.Error as exc:  # raw DB-API errors, as SQLAlchemy would have raised them
        raise DBAPIError.instance("COPY chunks", None, exc, psycopg.Error) from exc


def insert_idempotent(
    conn: Connection, rows: Sequence[tuple[int, int, int, int, bytes]]
) -> tuple[int, int]:
    """Insert chunk rows whose key is not stored yet; (rows inserted, rows already
    stored with other content). See the module doc for why COPY first."""
    import psycopg
    from psycopg import errors

    if not rows:
        return 0, 0
    savepoint = conn.begin_nested()
    try:
        with _raw(conn).cursor() as cur:
            _copy(cur, "chunks", rows)
    except errors.UniqueViolation:
        savepoint.rollback()
    except psycopg.Error as exc:
        savepoint.rollback()
        raise DBAPIError.instance("COPY chunks", None, exc, psycopg.Error) from exc
    else:
        savepoint.commit()
        return len(rows), 0
    try:
        with _raw(conn).cursor() as cur:
            cur.execute("CREATE TEMPORARY TABLE chunks_in (LIKE chunks) ON COMMIT DROP")
            _copy(cur, "chunks_in", rows)
            cur.execute(f"INSERT INTO chunks {COLUMNS} SELECT {COLUMNS[1:-1]} FROM chunks_in "
                        "ON CONFLICT DO NOTHING")
            inserted = int(cur.rowcount)
            cur.execute("SELECT count(*) FROM chunks_in i JOIN chunks c "
                        "USING (series_id, t_min) WHERE c.data <> i.data")
            differing = int(cur.fetchone()[0])
            cur.execute("DROP TABLE chunks_in")
    except psycopg.Error as exc:
        raise DBAPIError.instance("INSERT INTO chunks", None, exc, psycopg.Error) from exc
    return inserted, differing


def is_missing_partition(exc: BaseException) -> bool:
    """Whether a failed insert found no partition for a row (one was dropped)."""
    return "no partition of relation" in str(getattr(exc, "orig", None) or exc)
