"""The read path's database side: matching series, and every chunk overlapping a range."""

from __future__ import annotations

import numpy as np

from gpuwarden.model import make_labels
from gpuwarden.storage import codec, schema
from gpuwarden.storage.chunk_cut import MAX_CHUNK_SPAN_MS, insert_chunks
from gpuwarden.storage.engine import open_engine, write_transaction
from gpuwarden.storage.queries import matching_series, read_chunks
from gpuwarden.storage.series_registry import create_series


def test_chunks_overlapping_the_range_of_the_matching_series() -> None:
    engine = open_engine("sqlite://")
    try:
        schema.create_tables(engine)
        gpu0, gpu1 = make_labels(gpu="0"), make_labels(gpu="1")
        with write_transaction(engine) as conn:
            ids = create_series(conn, {0: ("gpu_up", gpu0), 1: ("gpu_up", gpu1),
                                       2: ("gpu_temp", gpu0)})

            def chunk(series: int, t_min: int, t_max: int) -> tuple[int, int, int, int, bytes]:
                ts = np.array([t_min, t_max], dtype=np.int64)
                blob = codec.encode_chunk(ts, np.array([1.0, 2.0]))
                return (ids[series], t_min, t_max, 2, blob)

            late = 2000 + MAX_CHUNK_SPAN_MS
            insert_chunks(conn, [chunk(0, 0, 999), chunk(0, 1000, 1999),
                                 chunk(0, late, late + 999), chunk(1, 1500, 1600),
                                 chunk(2, 1000, 1999)])
        with engine.connect() as conn:
            assert matching_series(conn, "gpu_up", {"gpu": "0"}) == [(ids[0], gpu0)]
            series = matching_series(conn, "gpu_up", None)
            assert sorted(series) == sorted([(ids[0], gpu0), (ids[1], gpu1)])
            got = read_chunks(conn, [ids[0], ids[1]], 1200, 1400)
        # gpu 0's chunks before and after the range and gpu 1's (it starts after the
        # range ends) are left out
        assert [(sid, codec.decode_chunk(blob)[0].tolist()) for sid, blob in got] == [
            (ids[0], [1000, 1999])
        ]
    finally:
        engine.dispose()
