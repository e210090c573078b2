"""Every storage table, defined once (SQLAlchemy Core), plus the schema version.

The sample path is Prometheus-TSDB-like:

* ``series`` gives each (signal, canonical label JSON) one integer id, shared by every
  node writing to the same database.
* ``head_log`` is the write-ahead log of the in-memory head: one row per collection
  cycle (a packed blob of series ids, timestamps and values), tagged with the writing
  node so that each store replays only its own rows after a restart.
* ``chunks`` holds the compressed samples of one series over one aligned time window;
  head-log rows are deleted in the same transaction that inserts the chunks covering
  them.

``chunks`` is a rowid table on purpose: every cut inserts one chunk per series, and a
table clustered on (series_id, t_min) would split pages all over the key space on each
cut and end up ~2/3 full; appending by rowid keeps the big rows packed, and the small
(series_id, t_min) index does the lookups.

On PostgreSQL a new database's ``chunks`` is made by ``pg_chunks.py`` instead of from
the definition below: keyed on ``(series_id, t_min)`` so a retried cut inserts nothing
twice, partitioned by day of ``t_min`` (a TimescaleDB hypertable where that extension
is installed) so retention drops partitions. The definition below is SQLite's table and
that of PostgreSQL databases made before (used as they are, see ``chunk_table.py``).

``head_log`` has no secondary index on SQLite: a cycle's commit is the durability point,
and each page it touches costs a whole page frame in the ``-wal`` file (see
``engine.py``); the table's own leaf is the one page a cycle needs. Replay reads a
node's rows by scanning the table (at most a few chunk spans of cycles, since a cut
deletes what it covers). PostgreSQL, where many nodes may share the table, keeps the
``(writer, id)`` index. A database made before this drops the index when opened
(:func:`create_tables`).

``alerts``, ``audit``, ``dead_letters``, ``model_history`` and ``rollups_1m`` are filled
by later parts of the daemon; they are defined here so that one ``create_all`` and one
schema version cover the whole database (a table added later is created by that same
``create_all`` on the next start, so adding one needs no version bump).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    insert,
    inspect,
    select,
)

from gpuwarden.errors import StoreError
from gpuwarden.storage import pg_chunks
from gpuwarden.storage.engine import write_transaction

#: Bump when a table changes; a store refuses a database with a newer version.
SCHEMA_VERSION = 1
#: Indexes created on PostgreSQL only (``ddl_if``): left out of :func:`sqlite_ddl`.
POSTGRESQL_ONLY_INDEXES = frozenset({"ix_head_log_writer_id"})
#: Values per ``IN (...)`` list: SQLite's default limit on host parameters is 999.
IN_BATCH = 500

#: SQLite only turns ``INTEGER PRIMARY KEY`` into an auto-assigned rowid alias, not
#: ``BIGINT``; PostgreSQL needs 64-bit ids (BIGSERIAL) for long-lived shared databases.
BigId = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
)

series = Table(
    "series",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("signal", String(200), nullable=False),
    # Canonical JSON object of the sorted label pairs (json.dumps sort_keys, compact).
    Column("labels", Text, nullable=False),
    UniqueConstraint("signal", "labels", name="uq_series_signal_labels"),
)

chunks = Table(
    "chunks",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("series_id", BigInteger, nullable=False),
    Column("t_min", BigInteger, nullable=False),  # Unix milliseconds, inclusive
    Column("t_max", BigInteger, nullable=False),  # Unix milliseconds, inclusive
    Column("count", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),  # codec.encode_chunk
    Index("ix_chunks_series_tmin", "series_id", "t_min"),
    Index("ix_chunks_tmax", "t_max"),
)

head_log = Table(
    "head_log",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("writer", String(200), nullable=False),  # the node whose head this row belongs to
    Column("t_min", BigInteger, nullable=False),
    Column("t_max", BigInteger, nullable=False),
    Column("count", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),  # codec.encode_cycle
    # PostgreSQL only (see the module doc): on SQLite every cycle's commit would write
    # this index's page as well as the table's.
    Index("ix_head_log_writer_id", "writer", "id").ddl_if(dialect="postgresql"),
)

rollups_1m = Table(
    "rollups_1m",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("series_id", BigInteger, nullable=False),
    Column("t", BigInteger, nullable=False),  # start of the minute, Unix milliseconds
    Column("count", Integer, nullable=False),
    Column("sum", Float, nullable=False),
    Column("min", Float, nullable=False),
    Column("max", Float, nullable=False),
    Column("last", Float, nullable=False),
    Index("ix_rollups_1m_series_t", "series_id", "t", unique=True),
    Index("ix_rollups_1m_t", "t"),
)

def _alert_columns() -> list[Column[Any]]:
    """The columns of one alert instance (``alerts`` and ``fleet_alerts``)."""
    return [
        Column("fingerprint", String(64), primary_key=True),
        Column("rule", String(200), nullable=False),
        Column("labels", Text, nullable=False),  # JSON object
        Column("annotations", Text, nullable=False),  # JSON object
        Column("state", String(16), nullable=False),  # pending | firing | resolved
        Column("value", Float),
        Column("active_at", Float),  # Unix seconds
        Column("fired_at", Float),
        Column("resolved_at", Float),
        Column("updated_at", Float, nullable=False),
    ]


alerts = Table("alerts", metadata, *_alert_columns(), Index("ix_alerts_state", "state"))

audit = Table(
    "audit",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("action", String(200), nullable=False),
    Column("target", Text),
    Column("fingerprint", String(64)),
    Column("result", String(32), nullable=False),  # sent | suppressed | failed | ...
    Column("http_status", Integer),
    Column("attempt", Integer),
    Column("reason", Text),
    Column("detail", Text),
    Index("ix_audit_ts", "ts"),
    Index("ix_audit_fingerprint", "fingerprint"),
)

dead_letters = Table(
    "dead_letters",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("action", String(200), nullable=False),
    Column("fingerprint", String(64)),
    Column("payload", Text, nullable=False),  # JSON
    Column("last_error", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("replayed_at", Float),
    Index("ix_dead_letters_ts", "ts"),
)

#: Which model each inference server served, and since when: one row per change (a
#: server going A -> B -> A has three rows), ``last_seen`` refreshed now and then.
#: Checkpoint-rollback remediation reads the current and previous model from it.
model_history = Table(
    "model_history",
    metadata,
    Column("id", BigId, primary_key=True, autoincrement=True),
    Column("node", String(200), nullable=False),
    Column("server", String(200), nullable=False),
    Column("model", Text, nullable=False),
    Column("first_seen", Float, nullable=False),  # Unix seconds
    Column("last_seen", Float, nullable=False),
    Index("ix_model_history_node_server", "node", "server", "first_seen"),
)

#: Fleet mode (``gpuwarden/fleet/``): one row per node writing to a shared database, its
#: last successful write refreshed by the node's writer thread every pass. ``NodeSilent``
#: and ``gpuwarden fleet status`` read it; a clean stop sets ``stopped_at``.
nodes = Table(
    "nodes",
    metadata,
    Column("node", String(200), primary_key=True),
    Column("version", String(64), nullable=False),
    Column("interval_s", Float, nullable=False),
    Column("started_at", Float, nullable=False),  # Unix seconds
    Column("last_write_at", Float, nullable=False),
    Column("stopped_at", Float),
    Column("gpus", Integer, nullable=False),
    Column("servers", Integer, nullable=False),
)

#: Fleet alert instances (rules with ``scope = "fleet"``), written by the leader only,
#: so that a new leader continues pending and firing alerts where the old one stopped.
#: Same columns as ``alerts``; a table of its own because a fleet alert's ``node`` label
#: names the node it is about (``NodeSilent``), not the node that evaluated it.
fleet_alerts = Table("fleet_alerts", metadata, *_alert_columns())

__all__ = [
    "IN_BATCH",
    "SCHEMA_VERSION",
    "alerts",
    "audit",
    "chunks",
    "create_tables",
    "dead_letters",
    "fleet_alerts",
    "head_log",
    "metadata",
    "model_history",
    "nodes",
    "rollups_1m",
    "schema_version",
    "series",
]


def create_tables(engine: Engine) -> None:
    """Create the tables that are missing and the version row of a new database.

    Raises :class:`StoreError` for a database of a newer schema version, before
    touching it.
    """
    with engine.connect() as conn:
        version = None
        if inspect(conn).has_table("schema_version"):
            version = conn.scalar(select(func.max(schema_version.c.version)))
    if version is not None and version > SCHEMA_VERSION:
        raise StoreError(
            f"database schema version {version} is newer than this gpuwarden supports "
            f"({SCHEMA_VERSION}); upgrade gpuwarden or point it at another database"
        )
    with write_transaction(engine) as conn:
        if conn.dialect.name == "postgresql":  # before create_all: its own layout
            pg_chunks.create_chunks(conn)
        metadata.create_all(conn)
        if conn.dialect.name == "sqlite":  # a database made when SQLite had them too
            for name in sorted(POSTGRESQL_ONLY_INDEXES):
                conn.exec_driver_sql(f"DROP INDEX IF EXISTS {name}")
        # read again under the write lock: nodes starting together on a new PostgreSQL
        # (pg_chunks.create_chunks serialises them) must write the row once
        if version is None and conn.scalar(select(func.max(schema_version.c.version))) is None:
            conn.execute(insert(schema_version).values(version=SCHEMA_VERSION))


def sqlite_ddl() -> tuple[str, ...]:
    """The whole schema as SQLite DDL, in ``create_all``'s table order (IF NOT EXISTS).

    The early first-cycle writer (``storage/early.py``) creates the schema
    without importing SQLAlchemy, from a pre-rendered copy of this; a test keeps that
    copy equal to this rendering, so this module stays the one definition of the tables.
    After changing a table, that test fails and prints the new text to paste there.
    """
    from sqlalchemy.dialects import sqlite
    from sqlalchemy.schema import CreateIndex, CreateTable

    dialect = sqlite.dialect()
    statements: list[str] = []
    for table in metadata.sorted_tables:
        statements.append(str(CreateTable(table, if_not_exists=True).compile(dialect=dialect)))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            if index.name in POSTGRESQL_ONLY_INDEXES:
                continue
            statements.append(str(CreateIndex(index, if_not_exists=True).compile(dialect=dialect)))
    return tuple(s.strip() for s in statements)
