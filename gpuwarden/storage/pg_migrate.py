"""Partition a PostgreSQL ``chunks`` table made before partitioning, in place.

``python -m gpuwarden.storage.pg_migrate postgresql+psycopg://USER@HOST/DB``, with every
gpuwarden daemon on that database stopped (the move locks ``chunks`` and reads it
whole). In one transaction: the old table is renamed, the new one is made as a new
database gets it (``pg_chunks.chunks_ddl``: day partitions, or a hypertable under
TimescaleDB), the partitions of every day held are made, the rows are copied (a chunk
stored twice by a retried cut is kept once) and the old table is dropped. A failure
leaves the database as it was. A table already partitioned is left alone.
"""

from __future__ import annotations

import sys

from sqlalchemy import Engine, text

from gpuwarden.errors import StoreError
from gpuwarden.storage import pg_chunks
from gpuwarden.storage.db_errors import DB_ERRORS, db_error_text
from gpuwarden.storage.engine import open_engine, write_transaction

OLD = "chunks_unpartitioned"


def migrate_chunks(engine: Engine) -> int | None:
    """Move a legacy ``chunks`` into the partitioned layout; the rows moved, or None
    when there was nothing to migrate (no table, or one partitioned already)."""
    with write_transaction(engine) as conn:
        conn.execute(text("SET LOCAL statement_timeout = 0"))  # a whole table is copied
        pg_chunks.lock_ddl(conn)
        if pg_chunks.detect_layout(conn) != "legacy":
            return None
        conn.execute(text(f"ALTER TABLE chunks RENAME TO {OLD}"))
        conn.execute(text("DROP INDEX IF EXISTS ix_chunks_series_tmin, ix_chunks_tmax"))
        extensions = pg_chunks.installed_extensions(conn)
        for statement in pg_chunks.chunks_ddl(extensions):
            conn.execute(text(statement))
        if "timescaledb" not in extensions:
            days = conn.scalars(text(
                f"SELECT DISTINCT floor(t_min::numeric / {pg_chunks.PARTITION_MS})::bigint "
                f"FROM {OLD}")).all()
            pg_chunks.Partitions().ensure(conn, sorted(int(d) for d in days))
        cols = pg_chunks.COLUMNS
        moved = conn.execute(text(
            f"INSERT INTO chunks {cols} SELECT {cols[1:-1]} FROM {OLD} "
            "ORDER BY t_min, series_id ON CONFLICT DO NOTHING")).rowcount
        conn.execute(text(f"DROP TABLE {OLD}"))
    return int(moved)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    try:
        engine = open_engine(argv[0])
        try:
            moved = migrate_chunks(engine)
        finally:
            engine.dispose()
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except DB_ERRORS as exc:
        print(f"error: migration failed, database unchanged: {db_error_text(exc)}",
              file=sys.stderr)
        return 1
    if moved is None:
        print("nothing to migrate: chunks is missing or partitioned already")
    else:
        print(f"chunks partitioned: {moved} rows moved")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
