"""The head log: one row per cycle by database series id, read back per node in order."""

from __future__ import annotations

import numpy as np

from gpuwarden.storage import schema
from gpuwarden.storage.engine import open_engine, write_transaction
from gpuwarden.storage.head import split_cycle
from gpuwarden.storage.head_log import delete_rows, read_cycles, write_cycles


def test_cycles_written_read_back_per_node_and_deleted() -> None:
    engine = open_engine("sqlite://")
    try:
        schema.create_tables(engine)
        last = np.empty(0, np.int64)
        cycles = []
        for k in range(3):
            entry, last = split_cycle(np.array([2, 0], dtype=np.int64),
                                      np.array([k, k + 1], dtype=np.int64),
                                      np.array([0.5, k], dtype=np.float64), last)
            cycles.append(entry)
        db_ids = np.array([10, -1, 12], dtype=np.int64)  # by local id
        with write_transaction(engine) as conn:
            mine = write_cycles(conn, "node-a", cycles, db_ids)
            theirs = write_cycles(conn, "node-b", cycles[:1], db_ids)
        assert mine == sorted(mine) and len(mine) == 3 and theirs[0] > mine[-1]
        with engine.connect() as conn:
            got = read_cycles(conn, "node-a")
        assert [row[0] for row in got] == mine
        log_id, ids, ts, vals = got[2]
        assert ids.tolist() == [10, 12]  # sorted by local id, as the head holds a cycle
        assert ts.tolist() == [3, 2] and vals.tolist() == [2.0, 0.5]
        with write_transaction(engine) as conn:
            delete_rows(conn, mine[:2])
        with engine.connect() as conn:
            assert [row[0] for row in read_cycles(conn, "node-a")] == [log_id]
            assert [row[0] for row in read_cycles(conn, "node-b")] == theirs
    finally:
        engine.dispose()
