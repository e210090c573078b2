"""head_log.write_cycles with its insert built once writes the rows, and returns the ids,
that an insert built per row (``insert().values()``, as before) does, on both backends."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sqlalchemy import Connection, create_engine, insert, select

from gpuwarden.storage import codec, schema
from gpuwarden.storage.codec import I64Array
from gpuwarden.storage.engine import write_transaction
from gpuwarden.storage.head import Entry, split_cycle
from gpuwarden.storage.head_log import read_cycles, write_cycles
from tests.storage.conftest import Backend, backend

__all__ = ["backend"]


def reference_write_cycles(conn: Connection, node: str, cycles: Sequence[Entry],
                           db_ids: I64Array) -> list[int]:
    hl = schema.head_log
    log_ids = []
    for e in cycles:
        ids, ts, vals = e.columns()
        blob = codec.encode_cycle(db_ids[ids], ts, vals)
        row = {"writer": node, "t_min": e.t_min, "t_max": e.t_max}
        res = conn.execute(insert(hl).values(count=e.count, data=blob, **row))
        assert res.inserted_primary_key is not None
        log_ids.append(int(res.inserted_primary_key[0]))
    return log_ids


def test_rows_and_ids_are_those_of_a_per_row_insert(backend: Backend) -> None:
    engine = create_engine(backend.url)
    try:
        schema.create_tables(engine)
        last = np.empty(0, np.int64)
        cycles = []
        for k in range(4):
            lids = np.array([2, 0, 2][: 2 + k % 2], dtype=np.int64)  # a part split in two
            entry, last = split_cycle(lids, np.arange(lids.size, dtype=np.int64) + 1000 * k,
                                      np.linspace(0.5, k, lids.size), last)
            cycles.append(entry)
        db_ids = np.array([10, -1, 12], dtype=np.int64)
        with write_transaction(engine) as conn:
            new = write_cycles(conn, "node-a", cycles, db_ids)
            old = reference_write_cycles(conn, "node-b", cycles, db_ids)
            again = write_cycles(conn, "node-a", cycles[:1], db_ids)
        hl = schema.head_log
        with engine.connect() as conn:
            rows = {r.id: r for r in conn.execute(select(hl))}
            assert [r[0] for r in read_cycles(conn, "node-a")] == [*new, *again]
        assert len(set(new + old + again)) == 9
        for n, o in zip(new, old, strict=True):
            assert rows[n].writer == "node-a" and rows[o].writer == "node-b"
            assert (rows[n].t_min, rows[n].t_max, rows[n].count, bytes(rows[n].data)) == (
                rows[o].t_min, rows[o].t_max, rows[o].count, bytes(rows[o].data))
    finally:
        engine.dispose()
