"""The read path's database side: the chunks of the matching series over a time range.

The store answers a window its in-memory head covers without the database; only an
older window comes here, and the store merges what is read with its head (``Store.query``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import Connection, select

from gpuwarden.model import Labels, labels_match
from gpuwarden.storage import schema
from gpuwarden.storage.chunk_cut import MAX_CHUNK_SPAN_MS
from gpuwarden.storage.series_registry import stored_series

_I64_MIN = -(2**63)


def matching_series(
    conn: Connection, signal: str, matchers: Mapping[str, str] | None
) -> list[tuple[int, Labels]]:
    """Database id and labels of every stored series of ``signal`` whose labels match."""
    return [(db_id, labels) for db_id, (_, labels) in stored_series(conn, signal)
            if labels_match(labels, matchers)]


def read_chunks(
    conn: Connection, db_ids: Sequence[int], lo: int, hi: int
) -> list[tuple[int, bytes]]:
    """(series id, blob) of every chunk of these series overlapping ``[lo, hi]`` (ms),
    ordered by series and time."""
    c = schema.chunks
    rows: list[tuple[int, bytes]] = []
    lo_tmin = max(lo - MAX_CHUNK_SPAN_MS, _I64_MIN)
    n = schema.IN_BATCH
    for k in range(0, len(db_ids), n):
        q = (
            select(c.c.series_id, c.c.data)
            .where(c.c.series_id.in_(db_ids[k : k + n]))
            .where(c.c.t_min >= lo_tmin, c.c.t_min <= hi, c.c.t_max >= lo)
            .order_by(c.c.series_id, c.c.t_min)
        )
        rows.extend((int(r.series_id), bytes(r.data)) for r in conn.execute(q))
    return rows
