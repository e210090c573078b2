"""A cut: one chunk per series and aligned window, the same bytes for the database and
for the head's block."""

from __future__ import annotations

import numpy as np

from gpuwarden.storage import codec
from gpuwarden.storage.chunk_cut import encode_cut
from gpuwarden.storage.head import split_cycle

SPAN = 10_000  # ms


def test_chunks_per_series_and_window_hold_every_sample_once() -> None:
    last = np.empty(0, np.int64)
    cycles = []
    for k in range(25):  # 25 s: windows [0, 10), [10, 20), [20, 25) s
        lids = np.array([1, 0], dtype=np.int64)
        ts = np.full(2, k * 1000, dtype=np.int64)
        entry, last = split_cycle(lids, ts, np.array([k, -k], dtype=np.float64), last)
        cycles.append(entry)
    db_ids = np.array([70, 71], dtype=np.int64)
    rows, block = encode_cut(cycles, SPAN, 6, db_ids)
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (70, 0, 9000, 10), (70, 10_000, 19_000, 10), (70, 20_000, 24_000, 5),
        (71, 0, 9000, 10), (71, 10_000, 19_000, 10), (71, 20_000, 24_000, 5),
    ]
    assert block.lids.tolist() == [0, 0, 0, 1, 1, 1]
    assert block.blobs == [r[4] for r in rows]
    assert (block.lo, block.hi) == (0, 24_000)
    ts, vals = codec.decode_chunk(rows[4][4])
    assert ts.tolist() == list(range(10_000, 20_000, 1000))
    assert vals.tolist() == [float(k) for k in range(10, 20)]
