"""The head log: the write-ahead log of the in-memory head, one row per cycle.

Why one row per collection cycle: a row per sample costs ~29 bytes in SQLite and ~1 µs
of Python; a cycle packed into one blob (``codec.encode_cycle``, by database series id)
and inserted in one transaction is the store's durability point. Rows are tagged with
the writing node, so each store replays only its own after a restart, and deleted in
the transaction that inserts the chunks covering them (``Store`` cut).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, delete, insert, select

from gpuwarden.storage import codec, schema
from gpuwarden.storage.codec import F64Array, I64Array
from gpuwarden.storage.head import Entry

#: A head-log row read back: its id, then database series ids, ms timestamps and values.
LoggedCycle = tuple[int, I64Array, I64Array, F64Array]


#: The row insert, built once: every cycle runs it, and building it per row (``values()``
#: and its coercions, a fresh cache key) cost as much as the insert itself on SQLite.
_INSERT_ROW = insert(schema.head_log)


def write_cycles(
    conn: Connection, node: str, cycles: Sequence[Entry], db_ids: I64Array
) -> list[int]:
    """Insert one row per cycle (``db_ids``: database id by local id); the rows' ids."""
    log_ids: list[int] = []
    for e in cycles:
        ids, ts, vals = e.columns()
        blob = codec.encode_cycle(db_ids[ids], ts, vals)
        res = conn.execute(_INSERT_ROW, {"writer": node, "t_min": e.t_min, "t_max": e.t_max,
                                         "count": e.count, "data": blob})
        pk = res.inserted_primary_key
        assert pk is not None
        log_ids.append(int(pk[0]))
    return log_ids


def read_cycles(conn: Connection, node: str) -> list[LoggedCycle]:
    """This node's rows, oldest first, decoded."""
    hl = schema.head_log
    rows = conn.execute(
        select(hl.c.id, hl.c.data).where(hl.c.writer == node).order_by(hl.c.id)
    ).all()
    return [(int(r.id), *codec.decode_cycle(r.data)) for r in rows]


def delete_rows(conn: Connection, log_ids: Sequence[int]) -> None:
    """Delete rows by id (the cycles a cut has just written as chunks)."""
    hl = schema.head_log
    for k in range(0, len(log_ids), schema.IN_BATCH):
        conn.execute(delete(hl).where(hl.c.id.in_(log_ids[k : k + schema.IN_BATCH])))
