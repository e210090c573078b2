"""From a storage URL to a configured SQLAlchemy engine, and how to write through it.

Every writer of the store's database (samples, alert state, audit trail, model history)
opens its transactions with :func:`write_transaction` and builds its upserts with
:func:`dialect_insert`, so they all take the write lock the same way.

SQLite: WAL journal (readers never block the writer), ``synchronous=NORMAL`` (a crash
can lose the last commits only on power loss, never corrupt), and a busy_timeout of a
few hundred ms so a locked database fails a write quickly into the pending buffer
instead of stalling the collection loop. pysqlite's implicit transactions are switched
off and transactions begin explicitly, with ``BEGIN IMMEDIATE`` for writes: a deferred
transaction that reads first and then upgrades to a write lock gets SQLITE_BUSY at once,
without honouring busy_timeout.

What a SQLite commit costs on disk: each page it changes is appended to the ``-wal`` file
as a whole frame (the page plus 24 bytes), so a cycle's head-log row (~290 bytes at 1
vLLM server, ~415 at 4) costs a page, not its own size. New databases therefore use 1 KiB pages
(:data:`SQLITE_PAGE_SIZE`, SQLite's default before 3.12) instead of 4 KiB: measured
with the daemon on the recorded vLLM payload, a cycle went from ~10 KB of
``write_bytes`` to ~2.5 KB at 1 server and ~3.2 KB at 4 (``python -m bench vs-prometheus``;
the head-log table's own index, now PostgreSQL-only, was the other page; see
``schema.py``). A database that exists keeps the page size it was made with (SQLite
cannot change it in WAL mode without a ``VACUUM``). ``synchronous=NORMAL`` stays: in
WAL mode a commit is in the operating system's page cache when it returns, so a
process killed at any point (SIGKILL included) keeps every committed cycle; only a
power loss or a kernel crash can drop the last commits, never corrupt the file. The
``-wal`` file is checkpointed and cut back by the store writer (``writer.py``,
:func:`checkpoint_wal`).

PostgreSQL: psycopg 3, pre-ping (a restarted server or a terminated backend costs one
reconnect, not a failed cycle), and deadlines on everything the server can enforce:
``connect_timeout``, ``statement_timeout``, ``lock_timeout`` (the analogue of SQLite's
busy_timeout), ``idle_in_transaction_session_timeout``, TCP keepalives and
``tcp_user_timeout`` (a host that vanished: unacknowledged data fails the connection),
and a short pool checkout timeout. A server whose processes are stopped (SIGSTOP, a VM
paused) keeps its TCP connections open and acknowledged, so none of these can fire on the
client: that case is handled by keeping every database call off the collection loop
(``storage/writer.py``) and bounding how long a read may wait (``Store`` read deadline).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from gpuwarden.errors import StoreError

#: Page size of a new SQLite database (one that exists keeps its own; see module doc).
SQLITE_PAGE_SIZE = 1024
#: Bytes the ``-wal`` file is cut back to when SQLite restarts it after a checkpoint
#: (``journal_size_limit``; without it the file keeps its largest size for good).
SQLITE_WAL_KEEP_BYTES = 64 * 1024


def sqlite_engine(url_str: str, database: str | None, busy_timeout_ms: int) -> Engine:
    memory = not database or database == ":memory:"
    if database and not memory and not database.startswith("file:"):
        parent = Path(database).expanduser().resolve().parent
        if not parent.is_dir():
            raise StoreError(f"directory {parent} for the SQLite store does not exist")
    kwargs: dict[str, Any] = {}
    if memory:
        kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
    engine = create_engine(url_str, **kwargs)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see _on_begin)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        cur.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")  # a new database only
        cur.execute("PRAGMA journal_mode = WAL")
        cur.execute("PRAGMA synchronous = NORMAL")
        cur.execute(f"PRAGMA journal_size_limit = {SQLITE_WAL_KEEP_BYTES}")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("gw_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def checkpoint_wal(engine: Engine) -> tuple[int, int] | None:
    """Copy a SQLite store's ``-wal`` file into the database (a PASSIVE checkpoint).

    Returns (frames in the WAL, frames copied), or None when there is no WAL to
    checkpoint (PostgreSQL, an in-memory database). PASSIVE never waits: frames a
    reader still needs stay in the WAL for the next checkpoint. Once every frame is
    copied, the next write transaction starts the WAL over from its beginning and cuts
    the file back to :data:`SQLITE_WAL_KEEP_BYTES` (``journal_size_limit``), which
    bounds the ``-wal`` file to what is written between two checkpoints.
    """
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    # The DB-API connection, outside any transaction (SQLAlchemy's would BEGIN first,
    # and a checkpoint inside a transaction cannot copy the frames it reads through).
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        try:
            cur.execute("PRAGMA wal_checkpoint(PASSIVE)")
            row = cur.fetchone()
            assert row is not None  # the pragma always answers one row
            _busy, frames, copied = (int(v) for v in row)
        finally:
            cur.close()
    finally:
        raw.close()
    return frames, copied


#: libpq connection parameters (a URL's own query parameters win): deadlines a live
#: server or the kernel can enforce. The statement timeout bounds a slow query, not a
#: frozen server (see the module doc).
PG_CONNECT_ARGS: dict[str, Any] = {
    "connect_timeout": 2,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,  # ms
    "application_name": "gpuwarden",
}
PG_STATEMENT_TIMEOUT_MS = 10_000
PG_IDLE_IN_TRANSACTION_TIMEOUT_MS = 60_000
POOL_TIMEOUT_S = 2.0


def postgres_engine(url: Any, busy_timeout_ms: int) -> Engine:
    connect_args = {k: v for k, v in PG_CONNECT_ARGS.items() if k not in url.query}
    engine = create_engine(url, pool_pre_ping=True, connect_args=connect_args,
                           pool_timeout=POOL_TIMEOUT_S)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Fail a write stuck behind a lock like SQLite's busy_timeout, and a statement
        # the server is slow to finish, instead of waiting on them: the cycle stays in
        # the pending buffer and is written on the next try.
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET lock_timeout = {int(busy_timeout_ms)}")
            cur.execute(f"SET statement_timeout = {PG_STATEMENT_TIMEOUT_MS}")
            cur.execute("SET idle_in_transaction_session_timeout = "
                        f"{PG_IDLE_IN_TRANSACTION_TIMEOUT_MS}")
        dbapi_conn.commit()

    return engine


def open_engine(url: str, *, busy_timeout_ms: int = 300) -> Engine:
    """The configured engine of a SQLAlchemy URL (nothing is connected yet).

    ``sqlite:///PATH`` or ``postgresql+psycopg://...`` (``postgresql://`` is taken to
    mean psycopg). Raises :class:`StoreError` for a URL that cannot be used, with a
    message naming the problem.
    """
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"invalid storage URL {url!r}: {exc}") from exc
    backend = parsed.get_backend_name()
    try:
        if backend == "sqlite":
            return sqlite_engine(url, parsed.database, busy_timeout_ms)
        if backend == "postgresql":
            if parsed.drivername in ("postgresql", "postgres"):
                parsed = parsed.set(drivername="postgresql+psycopg")
            elif parsed.get_driver_name() != "psycopg":
                raise StoreError(
                    f"PostgreSQL driver {parsed.get_driver_name()!r} is not supported; "
                    "use postgresql+psycopg://"
                )
            return postgres_engine(parsed, busy_timeout_ms)
        raise StoreError(
            f"unsupported storage URL scheme {parsed.drivername!r}; "
            "use sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        )
    except (NoSuchModuleError, ArgumentError) as exc:
        raise StoreError(
            f"unusable storage URL {parsed.render_as_string(hide_password=True)}: {exc}"
        ) from exc


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction; on SQLite ``BEGIN IMMEDIATE`` (see ``sqlite_engine``'s
    ``_on_begin``) so that busy_timeout applies."""
    with engine.connect() as conn:
        conn.execution_options(gw_write=True)
        with conn.begin():
            yield conn


def dialect_insert(dialect: str, table: Any) -> Any:
    """An ``INSERT`` with ``on_conflict_do_*`` for the dialect (``engine.dialect.name``).

    Imported on use: SQLAlchemy's PostgreSQL dialect package costs ~2 MiB of memory, which
    a daemon on SQLite (the default) should not carry.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)
