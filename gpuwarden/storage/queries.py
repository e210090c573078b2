"""The read path: what the head answers, and the chunks of the matching series over a
time range when it cannot.

The store answers a window its in-memory head covers without the database; only an
older window (or another node's signal with no series in the head) comes here, and the
store merges what is read with its head (``Store.query``). Several signals read together
(``Store.query_many``: the rules' inputs, the derived signals') walk the head once
(:func:`from_head`) and the database in one read (:func:`read_database`): per signal,
the walk, the sort and a thread hop to the read deadline cost more than the samples.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import Connection, select

from gpuwarden.errors import StoreUnavailable
from gpuwarden.model import Labels, SeriesData, labels_match
from gpuwarden.storage import schema
from gpuwarden.storage.chunk_cut import MAX_CHUNK_SPAN_MS
from gpuwarden.storage.db_errors import db_error_text
from gpuwarden.storage.head import Block, Entry, Gathered, Wanted
from gpuwarden.storage.series_registry import SeriesRegistry, labels_from_json

_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
#: What the database gave for one request: its matching series (id, labels), their chunks.
DbRows = tuple[list[tuple[int, Labels]], list[tuple[int, bytes]]]


def ms_bounds(start: float, end: float) -> tuple[int, int]:
    """``[start, end]`` (Unix seconds, infinite for unbounded) in ms, a millisecond wider
    on each side (samples are searched in whole ms)."""
    lo = _I64_MIN if start == -math.inf else math.floor(start * 1000) - 1
    hi = _I64_MAX if end == math.inf else math.ceil(end * 1000) + 1
    return lo, hi


@dataclass(frozen=True, slots=True)
class Request:
    """One signal of a read: ``start <= ts <= end`` (Unix seconds) of the series whose
    local ids are ``local`` (labels ``keys``, same order) as the store's registry has them."""

    signal: str
    start: float
    end: float
    local: list[int]
    keys: list[Labels]

    @property
    def lo(self) -> int:
        return ms_bounds(self.start, self.end)[0]

    @property
    def hi(self) -> int:
        return ms_bounds(self.start, self.end)[1]

    @property
    def wanted(self) -> Wanted:
        return Wanted(self.signal, self.keys, self.start, self.end)


def plan(
    registry: SeriesRegistry,
    ranges: Mapping[str, tuple[float, float]],
    matchers: Mapping[str, str] | None,
    cover_ms: int,
    node: str,
) -> tuple[list[Request], list[Request]]:
    """The requests for ``signal: (start, end)`` that the head answers alone, and the others.

    The head holds every sample of ``node`` (the store's own) from ``cover_ms`` on (see
    ``Store._cover_ms``): a window from there on is answered from memory when the head
    has series of the signal, and, for a read of the node's own series
    (:func:`own_node`), also when it has none: the database has none there either
    (the rules read signals nobody writes, GPU signals without a GPU source, every
    cycle). A read naming another node goes to the database unless the head has its
    series."""
    own = matchers is None or matchers.get("node", node) == node
    memory: list[Request] = []
    database: list[Request] = []
    for signal, (start, end) in ranges.items():
        local = registry.matching(signal, matchers)
        r = Request(signal, start, end, local, [registry.keys[i][1] for i in local])
        (memory if (local or own) and r.lo >= cover_ms else database).append(r)
    return memory, database


def from_head(
    entries: Sequence[Entry], blocks: Sequence[Block], requests: Sequence[Request]
) -> list[list[SeriesData]]:
    """Per request, its series from the head alone: one walk over the head for all the
    requests of one time range (a minute's window never decodes the chunks an older
    range reaches), each request cut to its own range, as a read of it alone is."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, r in enumerate(requests):
        if r.local:  # a request without series in the head has nothing to gather
            groups.setdefault((r.lo, r.hi), []).append(k)
    out: list[list[SeriesData]] = [[] for _ in requests]
    for (lo, hi), members in groups.items():
        got = Gathered()
        lids = [lid for k in members for lid in requests[k].local]
        got.add_blocks(blocks, lids, lo, hi)
        got.add_head(entries, lids, lo, hi)
        for k, series in zip(members, got.split([requests[k].wanted for k in members]),
                             strict=True):
            out[k] = series
    return out


def own_node(matchers: Mapping[str, str] | None, node: str) -> dict[str, str]:
    """``matchers`` limited to ``node``'s series, unless they name a node themselves.

    A store shared by a fleet (PostgreSQL) holds every node's series; a node reads its
    own, as its head holds only its own: its rules must not alert on another node's
    samples (each node would page for the whole fleet). The fleet's reads are
    ``fleet/source.py``'s.
    """
    own = dict(matchers or {})
    own.setdefault("node", node)
    return own


def read_database(
    conn: Connection, requests: Sequence[Request], matchers: Mapping[str, str] | None
) -> list[DbRows]:
    """Per request, the stored series of its signal that match and their chunks."""
    found = series_of(conn, list(dict.fromkeys(r.signal for r in requests)), matchers)
    return [(found[r.signal], read_chunks(conn, [i for i, _ in found[r.signal]], r.lo, r.hi))
            for r in requests]


def local_by_labels(
    request: Request, db_series: Sequence[tuple[int, Labels]], local_of_db: Mapping[int, int]
) -> dict[Labels, int]:
    """Label set -> local id (-1: not in the head) of the request's series in the head and
    of those the database holds (``db_series``)."""
    by_labels = dict(zip(request.keys, request.local, strict=True))
    for db_id, labels in db_series:
        lid = local_of_db.get(db_id)
        by_labels.setdefault(labels, -1 if lid is None else lid)
    return by_labels


def unreadable(exc: BaseException) -> StoreUnavailable:
    """The error a read that raised ``exc`` reports (a driver's error named, as text)."""
    if isinstance(exc, StoreUnavailable):
        return exc
    err = StoreUnavailable(f"store not readable: {db_error_text(exc)}")
    err.__cause__ = exc
    return err


def with_database(
    request: Request, rows: DbRows, entries: Sequence[Entry], by_labels: Mapping[Labels, int]
) -> list[SeriesData]:
    """A request's series from the database's chunks and the head's uncut ``entries``
    (taken once the chunks were read): ``by_labels`` maps each label set to its local
    id (-1: not in the head)."""
    db_series, chunk_rows = rows
    keys = sorted(by_labels)
    position = {labels: i for i, labels in enumerate(keys)}
    target_of_db = {db_id: position[labels] for db_id, labels in db_series}
    got = Gathered()
    got.add_chunks(chunk_rows, target_of_db, request.lo, request.hi)
    got.add_head(entries, [by_labels[k] for k in keys], request.lo, request.hi)
    return got.to_series(request.signal, keys, request.start, request.end)


def matching_series(
    conn: Connection, signal: str, matchers: Mapping[str, str] | None
) -> list[tuple[int, Labels]]:
    """Database id and labels of every stored series of ``signal`` whose labels match."""
    return series_of(conn, [signal], matchers)[signal]


def series_of(
    conn: Connection, signals: Sequence[str], matchers: Mapping[str, str] | None
) -> dict[str, list[tuple[int, Labels]]]:
    """Per signal, :func:`matching_series`, in one query per ``IN_BATCH`` signals."""
    s = schema.series
    out: dict[str, list[tuple[int, Labels]]] = {signal: [] for signal in signals}
    n = schema.IN_BATCH
    for k in range(0, len(signals), n):
        q = select(s.c.id, s.c.signal, s.c.labels).where(s.c.signal.in_(signals[k : k + n]))
        for r in conn.execute(q):
            labels = labels_from_json(r.labels)
            if labels_match(labels, matchers):
                out[r.signal].append((int(r.id), labels))
    return out


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
