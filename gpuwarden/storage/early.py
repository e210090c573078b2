"""The first cycle, stored before SQLAlchemy is even imported (SQLite stores only).

Why: ``import sqlalchemy`` alone takes 0.3-0.45 s (its package imports nearly all of
it), most of the 0.5 s budget from start to the first stored sample. So on a
SQLite store the daemon collects its first cycle, writes it here with the standard
library's ``sqlite3`` straight into the same database, in the store's own format, and
only then opens the :class:`~gpuwarden.storage.store.Store`. The store's replay of this
node's head log loads the row into the head exactly as after a restart: the cycle is in
the head once and in the database once, and the store goes on from there.

What keeps the two writers in step:

* the schema: :data:`SQLITE_DDL` is ``schema.sqlite_ddl()`` rendered in advance (a test
  keeps them equal, and :data:`SCHEMA_VERSION` equal to ``schema.SCHEMA_VERSION``);
  the schema_version row is written as ``schema.create_tables`` writes it;
* the connection: the pragmas of ``storage/engine.py`` (WAL, ``synchronous=NORMAL``,
  the same busy timeout, the page size of a new database) and a ``BEGIN IMMEDIATE``
  write transaction;
* the rows: ``series`` got-or-created as ``series_registry.create_series`` does, keyed by the
  canonical :func:`~gpuwarden.model.labels_json`; one ``head_log`` row whose blob
  :func:`encode_cycle` makes byte-identical to ``codec.encode_cycle`` (tested with
  hypothesis) without numpy, which costs another 0.1-0.2 s to import.

Nothing here may cost the first cycle or stop the daemon: a URL that is not a plain
file path, a database of a newer schema, a lock held past the busy timeout, any error
at all, and :func:`store_first_cycle` returns None (one log line) and writes nothing;
the daemon then hands the cycle to ``Store.write`` as it does every other cycle, and
the store reports the newer schema or the lock as it always has.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import struct
import zlib
from collections.abc import Sequence
from itertools import pairwise
from urllib.parse import unquote

from gpuwarden.errors import NewerSchema
from gpuwarden.model import Sample, labels_json

log = logging.getLogger(__name__)

#: ``schema.SCHEMA_VERSION`` (a test keeps them equal).
SCHEMA_VERSION = 1

#: ``schema.sqlite_ddl()``, rendered in advance (a test keeps them equal).
SQLITE_DDL: tuple[str, ...] = (
    (
        "CREATE TABLE IF NOT EXISTS alerts (\n"
        "\tfingerprint VARCHAR(64) NOT NULL, \n"
        "\trule VARCHAR(200) NOT NULL, \n"
        "\tlabels TEXT NOT NULL, \n"
        "\tannotations TEXT NOT NULL, \n"
        "\tstate VARCHAR(16) NOT NULL, \n"
        "\tvalue FLOAT, \n"
        "\tactive_at FLOAT, \n"
        "\tfired_at FLOAT, \n"
        "\tresolved_at FLOAT, \n"
        "\tupdated_at FLOAT NOT NULL, \n"
        "\tPRIMARY KEY (fingerprint)\n"
        ")"
    ),
    "CREATE INDEX IF NOT EXISTS ix_alerts_state ON alerts (state)",
    (
        "CREATE TABLE IF NOT EXISTS audit (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tts FLOAT NOT NULL, \n"
        "\taction VARCHAR(200) NOT NULL, \n"
        "\ttarget TEXT, \n"
        "\tfingerprint VARCHAR(64), \n"
        "\tresult VARCHAR(32) NOT NULL, \n"
        "\thttp_status INTEGER, \n"
        "\tattempt INTEGER, \n"
        "\treason TEXT, \n"
        "\tdetail TEXT, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
    "CREATE INDEX IF NOT EXISTS ix_audit_fingerprint ON audit (fingerprint)",
    "CREATE INDEX IF NOT EXISTS ix_audit_ts ON audit (ts)",
    (
        "CREATE TABLE IF NOT EXISTS chunks (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tseries_id BIGINT NOT NULL, \n"
        "\tt_min BIGINT NOT NULL, \n"
        "\tt_max BIGINT NOT NULL, \n"
        "\tcount INTEGER NOT NULL, \n"
        "\tdata BLOB NOT NULL, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
    "CREATE INDEX IF NOT EXISTS ix_chunks_series_tmin ON chunks (series_id, t_min)",
    "CREATE INDEX IF NOT EXISTS ix_chunks_tmax ON chunks (t_max)",
    (
        "CREATE TABLE IF NOT EXISTS dead_letters (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tts FLOAT NOT NULL, \n"
        "\taction VARCHAR(200) NOT NULL, \n"
        "\tfingerprint VARCHAR(64), \n"
        "\tpayload TEXT NOT NULL, \n"
        "\tlast_error TEXT, \n"
        "\tattempts INTEGER NOT NULL, \n"
        "\treplayed_at FLOAT, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
    "CREATE INDEX IF NOT EXISTS ix_dead_letters_ts ON dead_letters (ts)",
    (
        "CREATE TABLE IF NOT EXISTS fleet_alerts (\n"
        "\tfingerprint VARCHAR(64) NOT NULL, \n"
        "\trule VARCHAR(200) NOT NULL, \n"
        "\tlabels TEXT NOT NULL, \n"
        "\tannotations TEXT NOT NULL, \n"
        "\tstate VARCHAR(16) NOT NULL, \n"
        "\tvalue FLOAT, \n"
        "\tactive_at FLOAT, \n"
        "\tfired_at FLOAT, \n"
        "\tresolved_at FLOAT, \n"
        "\tupdated_at FLOAT NOT NULL, \n"
        "\tPRIMARY KEY (fingerprint)\n"
        ")"
    ),
    (
        "CREATE TABLE IF NOT EXISTS head_log (\n"
        "\tid INTEGER NOT NULL, \n"
        "\twriter VARCHAR(200) NOT NULL, \n"
        "\tt_min BIGINT NOT NULL, \n"
        "\tt_max BIGINT NOT NULL, \n"
        "\tcount INTEGER NOT NULL, \n"
        "\tdata BLOB NOT NULL, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
    (
        "CREATE TABLE IF NOT EXISTS model_history (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tnode VARCHAR(200) NOT NULL, \n"
        "\tserver VARCHAR(200) NOT NULL, \n"
        "\tmodel TEXT NOT NULL, \n"
        "\tfirst_seen FLOAT NOT NULL, \n"
        "\tlast_seen FLOAT NOT NULL, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
    (
        "CREATE INDEX IF NOT EXISTS ix_model_history_node_server "
        "ON model_history (node, server, first_seen)"
    ),
    (
        "CREATE TABLE IF NOT EXISTS nodes (\n"
        "\tnode VARCHAR(200) NOT NULL, \n"
        "\tversion VARCHAR(64) NOT NULL, \n"
        "\tinterval_s FLOAT NOT NULL, \n"
        "\tstarted_at FLOAT NOT NULL, \n"
        "\tlast_write_at FLOAT NOT NULL, \n"
        "\tstopped_at FLOAT, \n"
        "\tgpus INTEGER NOT NULL, \n"
        "\tservers INTEGER NOT NULL, \n"
        "\tPRIMARY KEY (node)\n"
        ")"
    ),
    (
        "CREATE TABLE IF NOT EXISTS rollups_1m (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tseries_id BIGINT NOT NULL, \n"
        "\tt BIGINT NOT NULL, \n"
        "\tcount INTEGER NOT NULL, \n"
        "\tsum FLOAT NOT NULL, \n"
        "\tmin FLOAT NOT NULL, \n"
        "\tmax FLOAT NOT NULL, \n"
        "\tlast FLOAT NOT NULL, \n"
        "\tPRIMARY KEY (id)\n"
        ")"
    ),
    "CREATE UNIQUE INDEX IF NOT EXISTS ix_rollups_1m_series_t ON rollups_1m (series_id, t)",
    "CREATE INDEX IF NOT EXISTS ix_rollups_1m_t ON rollups_1m (t)",
    (
        "CREATE TABLE IF NOT EXISTS schema_version (\n"
        "\tversion INTEGER NOT NULL, \n"
        "\tPRIMARY KEY (version)\n"
        ")"
    ),
    (
        "CREATE TABLE IF NOT EXISTS series (\n"
        "\tid INTEGER NOT NULL, \n"
        "\tsignal VARCHAR(200) NOT NULL, \n"
        "\tlabels TEXT NOT NULL, \n"
        "\tPRIMARY KEY (id), \n"
        "\tCONSTRAINT uq_series_signal_labels UNIQUE (signal, labels)\n"
        ")"
    ),
)

#: ``engine.SQLITE_PAGE_SIZE`` (a test keeps them equal).
SQLITE_PAGE_SIZE = 1024

#: ``codec.CYCLE_VERSION`` and its header layout.
CYCLE_VERSION = 1
_CYCLE_HEADER = struct.Struct("<BIBBqq")
_U64 = (1 << 64) - 1
_I64_OFFSET = 1 << 63
#: Prefixes of URLs that SQLAlchemy opens with pysqlite as a plain file.
_PREFIXES = ("sqlite:///", "sqlite+pysqlite:///")
#: ``schema.IN_BATCH`` (a test keeps them equal): SQLite's default limit on host
#: parameters is 999 (before 3.32).
IN_BATCH = 500


def sqlite_file(url: str) -> str | None:
    """The absolute path of the database file of a plain ``sqlite:///PATH`` URL.

    None for anything else (PostgreSQL, in-memory, query parameters, ``file:`` URIs):
    those take the store's path, which knows how SQLAlchemy treats them. Spelled the
    way SQLAlchemy reads the URL (percent-decoded, relative to the working directory).
    """
    prefix = next((p for p in _PREFIXES if url.startswith(p)), None)
    if prefix is None:
        return None
    rest = url[len(prefix) :]
    if not rest or "?" in rest or "#" in rest:
        return None
    path = unquote(rest)
    if path == ":memory:" or path.startswith("file:") or "\x00" in path:
        return None
    return os.path.abspath(path)


def store_first_cycle(
    url: str, node: str, samples: Sequence[Sample], *, busy_timeout_ms: int = 300
) -> int | None:
    """Write one cycle as the store would; the number of samples written, or None.

    None means nothing was written (not a plain SQLite file, no samples, or any
    problem): the caller must then give the samples to ``Store.write``.
    """
    path = sqlite_file(url)
    if path is None or not samples:
        return None
    try:
        return _write(path, node, samples, busy_timeout_ms)
    except Exception as exc:  # any failure: the store's own path writes the cycle
        log.info("first cycle not stored early (%s: %s); the store writes it",
                 type(exc).__name__, exc)
        return None


def _write(path: str, node: str, samples: Sequence[Sample], busy_timeout_ms: int) -> int:
    ts_ms = [_millis(s.ts) for s in samples]
    values = [float(s.value) for s in samples]
    keys = [(s.signal, labels_json(s.labels)) for s in samples]
    if not os.path.isdir(os.path.dirname(path)):
        raise FileNotFoundError(f"directory {os.path.dirname(path)} does not exist")
    conn = sqlite3.connect(path, timeout=busy_timeout_ms / 1000, isolation_level=None)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        conn.execute(f"PRAGMA page_size = {SQLITE_PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            _ensure_schema(conn)
            db_id = _series_ids(conn, keys)
            # Series order (stable: repeats of a series keep their order), as the
            # store's head sorts a cycle; the deltas of ids then stay small.
            order = sorted(range(len(samples)), key=lambda i: db_id[keys[i]])
            blob = encode_cycle(
                [db_id[keys[i]] for i in order], [ts_ms[i] for i in order],
                [values[i] for i in order],
            )
            conn.execute(
                "INSERT INTO head_log (writer, t_min, t_max, count, data) VALUES (?, ?, ?, ?, ?)",
                (node, min(ts_ms), max(ts_ms), len(samples), blob),
            )
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        conn.close()
    return len(samples)


def _millis(ts: float) -> int:
    """Unix seconds to int ms exactly as the store rounds them (``np.rint``: half-even)."""
    t = float(ts) * 1000.0
    if not math.isfinite(t):
        raise ValueError("sample timestamps must be finite")
    return round(t)


def _ensure_schema(conn: sqlite3.Connection) -> None:
    """Create what is missing and the version row, as ``schema.create_tables`` does."""
    version = None
    if conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
    ).fetchone():
        version = conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
    if version is not None and version > SCHEMA_VERSION:
        raise NewerSchema(f"database schema version {version} is newer than {SCHEMA_VERSION}")
    for statement in SQLITE_DDL:
        conn.execute(statement)
    if version is None:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))


SeriesKey = tuple[str, str]  # (signal, canonical labels JSON)


def _series_ids(conn: sqlite3.Connection, keys: list[SeriesKey]) -> dict[SeriesKey, int]:
    """Get-or-create series rows (other nodes may insert the same ones concurrently)."""
    wanted = dict.fromkeys(keys)
    conn.executemany(
        "INSERT INTO series (signal, labels) VALUES (?, ?) "
        "ON CONFLICT (signal, labels) DO NOTHING",
        list(wanted),
    )
    found: dict[SeriesKey, int] = {}
    signals = sorted({signal for signal, _ in wanted})
    for k in range(0, len(signals), IN_BATCH):
        batch = signals[k : k + IN_BATCH]
        marks = ", ".join("?" * len(batch))
        for row_id, signal, labels in conn.execute(
            f"SELECT id, signal, labels FROM series WHERE signal IN ({marks})", batch
        ):
            found[(signal, labels)] = int(row_id)
    return {key: found[key] for key in wanted}


def encode_cycle(
    ids: Sequence[int], ts_ms: Sequence[int], values: Sequence[float], level: int = 1
) -> bytes:
    """``codec.encode_cycle`` without numpy: byte-identical output for the same input.

    Same int64 arithmetic (deltas wrap around as numpy's do), zigzag, narrowest byte
    width, byte planes (``struct`` packs little-endian, and a plane is every 8th byte),
    zlib at the same level.
    """
    n = len(ids)
    if not n == len(ts_ms) == len(values):
        raise ValueError("ids, timestamps and values differ in length")
    if n == 0:
        return _CYCLE_HEADER.pack(CYCLE_VERSION, 0, 0, 0, 0, 0)
    id_d, ts_d = _zigzag_deltas(ids), _zigzag_deltas(ts_ms)
    iw, tw = _byte_width(id_d), _byte_width(ts_d)
    header = _CYCLE_HEADER.pack(CYCLE_VERSION, n, iw, tw, ids[0], ts_ms[0])
    body = (
        _planes(struct.pack(f"<{n - 1}Q", *id_d), iw)
        + _planes(struct.pack(f"<{n - 1}Q", *ts_d), tw)
        + _planes(struct.pack(f"<{n}d", *values), 8)
    )
    return header + zlib.compress(body, level)


def _zigzag_deltas(xs: Sequence[int]) -> list[int]:
    out = []
    for a, b in pairwise(xs):
        if not -_I64_OFFSET <= b < _I64_OFFSET:
            raise OverflowError(f"{b} does not fit in int64")
        d = ((b - a + _I64_OFFSET) & _U64) - _I64_OFFSET  # int64 wrap-around, as numpy
        out.append(((d << 1) ^ (d >> 63)) & _U64)
    return out


def _byte_width(u: list[int]) -> int:
    return (max(u).bit_length() + 7) // 8 if u else 0


def _planes(raw: bytes, width: int) -> bytes:
    """The ``width`` low byte planes of little-endian 8-byte words: ``codec.shuffle``."""
    return b"".join(raw[b::8] for b in range(width))
