"""The in-memory head: recent cycles as columnar numpy parts, cut ones as chunks.

Why columnar per cycle rather than a list per series: ``write()`` then costs a handful
of numpy calls per cycle instead of 2,400 Python appends, and a cut is one sort over
all cycles. A query finds its series in each cycle with one ``searchsorted`` over the
cycle's sorted id array; consecutive cycles with the same series set share one id
array, so that lookup is done once per run of cycles.

Why cut cycles become :class:`Block` s of compressed chunks: a raw sample costs 16 bytes
(int64 timestamp, float64 value) plus per-cycle array overhead, and the memory window
(10 min) holds ~600 cycles, so raw cut cycles were most of the head's memory. The cut
has just compressed the same samples into one chunk per series and window for the
database (~1-3 bytes a sample); keeping those bytes answers the memory window's older
part at a tenth of the memory, for one ``decode_chunk`` per series and window a query
reaches into (the window signals are minute-long, so most queries never do).

Everything here is pure (no locks, no I/O): the store takes snapshots of the entry
and block lists under its lock and hands them to these functions outside it.

Memory bound (:func:`memory_bound`, measured by :func:`head_bytes`): with ``S`` series
written every ``interval``, a cut at every aligned ``chunk_span`` boundary and blocks
kept for ``memory_window``, the head holds at most

- uncut entries: the cycles since the last boundary cut, ``(chunk_span + cut_delay) /
  interval + 1`` of them (``Store``'s ``cut_delay`` keeps the newest ones uncut a while
  longer), at ``S x 16`` bytes (int64 timestamp + float64 value; the id array is shared
  by cycles with the same series set) plus ``ENTRY_OVERHEAD`` bytes of objects each; a
  worst case: paged cycles keep their timestamps, and the values of series that did
  not change, by group (:class:`Page`), usually 8 bytes a sample or more less;
- blocks: ``memory_window + chunk_span`` of cut samples (a block is evicted once its
  newest sample is older than the window), ``S x (memory_window + chunk_span) /
  interval`` samples at the chunks' compressed size (``CHUNK_SAMPLE_BYTES``: 1-3 bytes a
  sample measured on node data, see the storage benchmark) plus ``CHUNK_OVERHEAD``
  bytes per chunk.

At the defaults (240 s span, 600 s window, no delay) and 1 s cycles of 2,400 series that
is 17.8 MiB (9.0 uncut + 8.8 of blocks); at 100 ms cycles of the 920 series of 8 GPUs
and 4 vLLM servers, 65.4 MiB (35.5 uncut). The daemon's 60 s cut delay makes them 20.0
and 74.2 MiB. Cycles not yet in the database (a store outage) stay uncut on top of
this, up to the store's ``max_pending_samples`` x 16 bytes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from gpuwarden.model import Labels, SeriesData
from gpuwarden.storage import codec
from gpuwarden.storage.codec import F64Array, I64Array

I32Array = npt.NDArray[np.int32]

#: Bytes of Python objects per uncut entry besides its sample arrays: the Entry, its
#: parts list, one Part and two numpy array headers (measured ~520 with tracemalloc).
ENTRY_OVERHEAD = 768
#: Compressed bytes per sample of a chunk that the bound assumes (node data: 1-3; a
#: series of random float64 noise costs up to ~9, the codec's XOR mode at full width).
CHUNK_SAMPLE_BYTES = 4.0
#: Bytes per chunk besides its payload: the bytes object and its header, its slots in
#: the block's id and time arrays and blob list.
CHUNK_OVERHEAD = 96


@dataclass(slots=True)
class Part:
    """Samples of one cycle with unique local series ids, sorted by id.

    ``ts`` and ``vals`` are None once the part's entry is paged: the page keeps them by
    group (:class:`Page`), and :func:`part_ts` and :func:`part_vals` derive them.
    """

    ids: I64Array
    ts: I64Array | None
    vals: F64Array | None


@dataclass(slots=True, eq=False)
class Entry:
    """One ``write()`` call not yet cut; one head-log row once persisted (``log_id``)."""

    parts: list[Part]
    t_min: int
    t_max: int
    count: int
    log_id: int | None = None
    page: Page | None = None  # set by compact(): its one part is row ``row`` of this page
    row: int = 0

    def columns(self) -> tuple[I64Array, I64Array, F64Array]:
        if len(self.parts) == 1:
            p = self.parts[0]
            return p.ids, part_ts(self, p), part_vals(self, p)
        return (
            np.concatenate([p.ids for p in self.parts]),
            np.concatenate([part_ts(self, p) for p in self.parts]),
            np.concatenate([part_vals(self, p) for p in self.parts]),
        )


def part_ts(entry: Entry, part: Part, sel: slice | I64Array | None = None) -> I64Array:
    """The timestamps of ``part`` (one of ``entry``'s), or of its samples ``sel``.

    Safe while :func:`compact` pages the entry on another thread: it sets the entry's
    ``page`` and ``row`` before it drops ``part.ts``, so a part found without its
    timestamps always has a page to take them from.
    """
    ts = part.ts
    if ts is None:
        return _page(entry).ts.row(entry.row, sel)
    return ts if sel is None else ts[sel]


def part_vals(entry: Entry, part: Part, sel: slice | I64Array | None = None) -> F64Array:
    """The values of ``part``, or of its samples ``sel`` (as :func:`part_ts`)."""
    vals = part.vals
    if vals is None:
        return _page(entry).vals.row(entry.row, sel)
    return vals if sel is None else vals[sel]


def _page(entry: Entry) -> Page:
    """The page of an entry whose part has dropped its samples (:func:`compact`)."""
    pg = entry.page
    assert pg is not None
    return pg


@dataclass(slots=True, eq=False)
class Block:
    """The chunks of one cut, as written to the database, by local series id.

    ``lids`` is ascending (a series cut over several windows has several chunks);
    chunk ``j`` holds ``blobs[j]`` with timestamps in ``[t_min[j], t_max[j]]``.
    """

    lids: I64Array
    t_min: I64Array
    t_max: I64Array
    blobs: list[bytes]
    lo: int
    hi: int


@dataclass(slots=True, eq=False, weakref_slot=True)
class Page:
    """Consecutive uncut cycles of one series set, as (cycle x series) matrices kept by
    distinct column.

    Its ``rows`` entries (consecutive, in write order) each hold one part whose samples
    are a row here, so a query gathers a page's samples with one fancy index instead of
    one per cycle. Both matrices are :class:`Grouped`: series whose timestamps are the
    same in every row of the page (those of one scrape: a server's series all carry its
    scrape's time) share a column of ``ts``; series whose values are bit for bit the
    same in every row share a column of ``vals`` (a counter that did not move, the
    buckets of a model with no traffic, a histogram's empty low buckets). A node's few
    sources make a few timestamp groups, so a page's timestamps cost ~4 bytes a series
    instead of 8 a sample; values cost 8 bytes a sample for series that changed, 4 bytes
    a series for those that did not (up to half of the 25 MiB of uncut cycles a 280
    KB-payload node holds just before a cut, 6,744 series). Where no two series share
    anything, each keeps its own column (no saving, no loss).

    Entries are only ever appended after and removed from the store's list, so finding
    row 0 ``rows - 1`` places before the last row means the whole page is still there.
    The page does not point back at its entries: no reference cycle, so a cut page is
    freed at once rather than at the cyclic collector's next full pass.
    ``reach`` is the newest ``t_max`` of this page and every entry older than it when
    the page was made: a query going backwards stops at a page whose reach is before
    its range.
    """

    ids: I64Array
    ts: Grouped[np.int64]
    vals: Grouped[np.float64]
    rows: int
    t_min: int
    t_max: int
    reach: int


_Item = TypeVar("_Item", np.int64, np.float64)


@dataclass(frozen=True, slots=True)
class Grouped(Generic[_Item]):
    """A (cycle x series) matrix kept by distinct column: series ``j``'s column is
    ``distinct[:, group[j]]`` (:func:`column_groups`)."""

    distinct: npt.NDArray[_Item]
    group: I32Array

    def columns(self, idx: I64Array) -> npt.NDArray[_Item]:
        """The (cycle x series) matrix of the series at positions ``idx``."""
        return self.distinct[:, self.group[idx]]

    def row(self, r: int, sel: slice | I64Array | None = None) -> npt.NDArray[_Item]:
        """Row ``r`` of every series, or of the series at positions ``sel``."""
        row: npt.NDArray[_Item] = self.distinct[r]
        return row[self.group if sel is None else self.group[sel]]

    @property
    def nbytes(self) -> int:
        return int(self.distinct.nbytes + self.group.nbytes)


def column_groups(matrix: I64Array) -> tuple[I64Array, I32Array]:
    """(distinct, group) of a (cycle x series) matrix: ``distinct[:, group]`` is
    ``matrix``, and series share a column of ``distinct`` when they are equal in every
    row (see :class:`Page`; float values are compared as their int64 bit patterns, so
    -0.0 and 0.0, and NaNs of other payloads, stay apart)."""
    n = matrix.shape[1]
    if n == 0:
        return matrix, np.empty(0, np.int32)
    # Rows are few (a page's) and series many: sort the columns by every row.
    order = np.lexsort(matrix[::-1])
    srt = matrix[:, order]
    new = np.empty(n, bool)
    new[0] = True
    np.any(srt[:, 1:] != srt[:, :-1], axis=0, out=new[1:])
    group = np.empty(n, np.int32)
    group[order] = np.cumsum(new) - 1
    return np.ascontiguousarray(srt[:, new]), group


#: Rows a page is made of (fewer where a chunk window or the series set ends first),
#: at most; :func:`page_rows` takes fewer for cycles of many series.
PAGE_ROWS = 64
#: Rows a page is made of, at least.
MIN_PAGE_ROWS = 16
#: Bytes of cycles not yet paged (16 bytes a sample) that a page's rows may hold:
#: 64-row pages let the tail of a 280 KB-payload node (6,744 series) reach 6.8 MiB
#: before each paging, 16-row ones 1.6 MiB. Small nodes keep 64-row pages, so that a
#: minute-long query at a 100 ms interval walks 10 pages rather than 40.
PAGE_TAIL_BYTES = 1 << 20


def page_rows(series: int) -> int:
    """Rows of a page of cycles of ``series`` series: as many as hold at most
    :data:`PAGE_TAIL_BYTES`, within [:data:`MIN_PAGE_ROWS`, :data:`PAGE_ROWS`]."""
    return max(MIN_PAGE_ROWS, min(PAGE_ROWS, PAGE_TAIL_BYTES // (16 * max(series, 1))))


def split_cycle(
    lids: I64Array, ts: I64Array, vals: F64Array, last_ids: I64Array
) -> tuple[Entry, I64Array]:
    """Sort a cycle by series, splitting it where a series occurs more than once.

    Returns the entry and the id array to share with the next cycle.
    """
    order = np.argsort(lids, kind="stable")
    lids, ts, vals = lids[order], ts[order], vals[order]
    n = int(lids.size)
    same = lids[1:] == lids[:-1]
    if n > 1 and same.any():
        first = np.concatenate(([True], ~same))
        starts = np.flatnonzero(first)
        rank = np.arange(n) - starts[np.cumsum(first) - 1]
        parts = []
        for r in range(int(rank.max()) + 1):
            m = rank == r
            parts.append(Part(lids[m], ts[m], vals[m]))
    else:
        if np.array_equal(lids, last_ids):
            lids = last_ids
        last_ids = lids
        parts = [Part(lids, ts, vals)]
    return Entry(parts, int(ts.min()), int(ts.max()), n), last_ids


def cut_slices(
    entries: Sequence[Entry], span_ms: int, max_samples: int = 32_768
) -> Iterator[tuple[I64Array, I64Array, F64Array]]:
    """The samples of ``entries`` ordered by (series, window of ``span_ms``, time).

    Yielded in slices of whole series, ascending by series: a cut of the usual 240
    cycles x 2,400 series would otherwise hold ~10 sample-sized arrays at once (~45 MB;
    freed, but malloc keeps the heap it grew for them). In the usual case every cycle
    holds the same series set (one shared id array), so a slice is a (cycle x series)
    matrix whose transpose is already in that order when time only moves forward.
    """
    first = entries[0].parts[0].ids
    if not all(len(e.parts) == 1 and e.parts[0].ids is first for e in entries):
        cols = [e.columns() for e in entries]
        lids = np.concatenate([c[0] for c in cols])
        ts = np.concatenate([c[1] for c in cols])
        vals = np.concatenate([c[2] for c in cols])
        order = np.lexsort((ts, ts // span_ms, lids))
        yield lids[order], ts[order], vals[order]
        return
    n = len(entries)
    step = max(1, max_samples // n)
    for a in range(0, int(first.size), step):
        b = min(a + step, int(first.size))
        ts2 = np.stack([part_ts(e, e.parts[0], slice(a, b)) for e in entries])
        vals2 = np.stack([part_vals(e, e.parts[0], slice(a, b)) for e in entries])
        lids = np.repeat(first[a:b], n)
        if n < 2 or bool((ts2[1:] >= ts2[:-1]).all()):
            yield lids, ts2.T.reshape(-1), vals2.T.reshape(-1)
        else:  # a clock stepped back: sort this slice's series properly
            ts, vals = ts2.T.reshape(-1), vals2.T.reshape(-1)
            order = np.lexsort((ts, ts // span_ms, lids))
            yield lids[order], ts[order], vals[order]


def compact(tail: Sequence[Entry], reach: int, span_ms: int, rows: int | None = None) -> int:
    """Make pages of the unpaged entries ``tail`` (oldest first, newest last).

    ``reach``: the newest ``t_max`` of every entry older than ``tail``. A run of
    single-part entries sharing one id array and one chunk window (so that one cut takes
    all of it) becomes a page once it has ``rows`` entries (by default
    :func:`page_rows` of its series count) or is followed by an entry that ends it; the
    open run at the end is left for a later call. The parts' arrays are replaced by
    equal rows of the page: readers holding either see the same values. Returns the
    number of entries paged.
    """
    paged = 0
    run: list[Entry] = []

    def close() -> None:
        nonlocal paged, reach
        if len(run) > 1:
            ts = Grouped(*column_groups(np.stack([part_ts(e, e.parts[0]) for e in run])))
            bits, group = column_groups(
                np.stack([part_vals(e, e.parts[0]) for e in run]).view(np.int64))
            vals = Grouped(bits.view(np.float64), group)
            t_max = max(e.t_max for e in run)
            reach = max(reach, t_max)
            page = Page(run[0].parts[0].ids, ts, vals, len(run),
                        min(e.t_min for e in run), t_max, reach)
            for k, e in enumerate(run):
                part = e.parts[0]
                # Row and page first, samples dropped last: compact() runs on the store's
                # writer thread while queries read entries on others; whoever sees
                # ``page`` must see its ``row``, and a part without samples its page
                # (``part_ts``, ``part_vals``).
                e.row = k
                e.page = page
                part.ts = part.vals = None
            paged += len(run)
        else:
            reach = max([reach, *(e.t_max for e in run)])
        run.clear()

    for e in tail:
        if run and (len(e.parts) != 1 or e.parts[0].ids is not run[0].parts[0].ids
                    or e.t_max // span_ms != run[0].t_max // span_ms):
            close()
        if len(e.parts) != 1:
            reach = max(reach, e.t_max)
            continue
        run.append(e)
        if len(run) == (rows or page_rows(int(run[0].parts[0].ids.size))):
            close()
    return paged


def _locate(ids: I64Array, want: I64Array) -> tuple[I64Array, I64Array]:
    """(positions in ``want`` found in ``ids``, their indices in ``ids``)."""
    if ids.size == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    pos = np.minimum(np.searchsorted(ids, want), ids.size - 1)
    hit = np.flatnonzero(ids[pos] == want)
    return hit, pos[hit]


def _chunk_ranges(block: Block, want: I64Array) -> list[tuple[int, int, int]]:
    """(position in ``want``, first, end) of the chunk range of each wanted id present."""
    left = np.searchsorted(block.lids, want, "left")
    right = np.searchsorted(block.lids, want, "right")
    hit = np.flatnonzero(right > left)
    return list(zip(hit.tolist(), left[hit].tolist(), right[hit].tolist(), strict=True))


def _wanted(lids: Sequence[int]) -> tuple[I64Array, I64Array]:
    """(target indices, local ids) of the ids present (>= 0), ascending by id."""
    lid_arr = np.array(lids, dtype=np.int64)
    order = np.argsort(lid_arr, kind="stable")
    order = order[lid_arr[order] >= 0]
    return order, lid_arr[order]


_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
#: Millisecond timestamps of smaller magnitude keep their order, ties included, as
#: seconds (``ms / 1000.0``): the quotients are below 2**42, where float64 values are
#: less than half a millisecond apart, and the int64 -> float64 conversion is exact.
_SECONDS_EXACT_MS = 2**42 * 1000


def series_order(tgt: I64Array, ms: I64Array) -> I64Array:
    """``np.lexsort((ms / 1000.0, tgt))``: by target, then time, ties in gathered order.

    Where the timestamps' order is that of ``secs`` (``_SECONDS_EXACT_MS``) and
    (target, ms) packs into one int64, a stable sort of that one key gives the same
    permutation (the order by (target, time, position) is unique) at a fraction of the
    cost: numpy's stable sort of integers is a timsort, linear on the gathered runs of
    chunks and pages, where lexsort sorts twice, the second time on floats.
    """
    if not tgt.size:
        return np.empty(0, np.intp)
    lo, hi = int(ms.min()), int(ms.max())
    width = hi - lo + 1
    if lo > -_SECONDS_EXACT_MS and hi < _SECONDS_EXACT_MS and (
            (int(tgt.max()) + 1) * width < 2**63 and int(tgt.min()) >= 0):
        key = ms - lo
        key += tgt * width
        return np.argsort(key, kind="stable")
    return np.lexsort((ms / 1000.0, tgt))


def by_target_if_in_time(
    tgt: I64Array, ms: I64Array
) -> tuple[npt.NDArray[np.intp], I64Array, I64Array] | None:
    """(permutation, tgt, ms sorted by it) of a stable sort by target alone where it
    leaves every target's timestamps strictly increasing, else None.

    Then the samples come out in :func:`series_order`'s order (no two share a target
    and a millisecond, so gathered order decides nothing), in linear time: the
    targets fit in 16 bits, which numpy sorts stably by radix, where a (target, time)
    key of 64 bits takes a comparison sort. Samples gathered oldest first are usually
    in time order per target: a page's rows, then the next page.
    """
    if not tgt.size:
        return np.empty(0, np.intp), tgt, ms
    if not (int(tgt.min()) >= 0 and int(tgt.max()) < 2**16
            and int(ms.min()) > -_SECONDS_EXACT_MS and int(ms.max()) < _SECONDS_EXACT_MS):
        return None
    srt = np.argsort(tgt.astype(np.uint16), kind="stable")
    t, m = tgt[srt], ms[srt]
    if not ((m[1:] > m[:-1]) | (t[1:] != t[:-1])).all():
        return None
    return srt, t, m


def _in_ranges(wanted: Sequence[Wanted], tgt: I64Array, ms: I64Array, vals: F64Array
               ) -> tuple[I64Array, I64Array, F64Array]:
    """The samples inside their target's ``Wanted`` range (seconds, both ends)."""
    # Seconds grow with ms: when the oldest and newest samples are inside every
    # range, all are, and the filter below would keep everything.
    if ms.size and ms.min() / 1000.0 >= max(w.start for w in wanted) and (
            ms.max() / 1000.0 <= min(w.end for w in wanted)):
        return tgt, ms, vals
    secs = ms / 1000.0
    if len(wanted) == 1:
        keep = (secs >= wanted[0].start) & (secs <= wanted[0].end)
    else:
        counts = [len(w.keys) for w in wanted]
        starts = np.repeat([w.start for w in wanted], counts)
        ends = np.repeat([w.end for w in wanted], counts)
        keep = (secs >= starts[tgt]) & (secs <= ends[tgt])
    return tgt[keep], ms[keep], vals[keep]


def _trims_exactly(lo: int, hi: int) -> bool:
    """Whether dropping the samples outside ``[lo, hi]`` (a request's ``ms_bounds``) drops
    none that its seconds filter (``Gathered.split``) keeps: the bounds are a millisecond
    wider than the range on each side, more than the rounding of seconds of this size."""
    return all(v in (_I64_MIN, _I64_MAX) or abs(v) < _SECONDS_EXACT_MS for v in (lo, hi))


@dataclass(slots=True)
class Gathered:
    """Samples collected for a query: target index, int64 ms timestamp, value."""

    targets: list[I64Array] = field(default_factory=list)
    ts: list[I64Array] = field(default_factory=list)
    vals: list[F64Array] = field(default_factory=list)
    visited: int = 0  # entries and pages add_head stepped through
    #: (first, end) of the pieces each add_head gathered, newest first; every other
    #: piece (chunks, oldest first) is older than the head's.
    head_runs: list[tuple[int, int]] = field(default_factory=list)

    def _add_blobs(self, targets: Sequence[int], blobs: Sequence[bytes], lo: int,
                   hi: int) -> None:
        """Add decoded chunks, less their samples outside ``[lo, hi]`` where that drops
        nothing :meth:`split` keeps: a chunk spans minutes, a window often less."""
        if not blobs:
            return
        decoded = codec.decode_chunks(blobs)
        counts = [t.size for t, _ in decoded]
        tgt = np.repeat(np.array(targets, dtype=np.int64), counts)
        ts = np.concatenate([t for t, _ in decoded])
        vals = np.concatenate([v for _, v in decoded])
        if ts.size and _trims_exactly(lo, hi) and (ts.min() < lo or ts.max() > hi):
            inside = (ts >= lo) & (ts <= hi)
            tgt, ts, vals = tgt[inside], ts[inside], vals[inside]
        self.targets.append(tgt)
        self.ts.append(ts)
        self.vals.append(vals)

    def add_chunks(
        self, rows: Sequence[tuple[int, bytes]], target_of_db: Mapping[int, int],
        lo: int = _I64_MIN, hi: int = _I64_MAX,
    ) -> None:
        """Add the chunks read from the database, by target (their samples in
        ``[lo, hi]`` ms, the request's bounds, are the ones that count)."""
        self._add_blobs([target_of_db[db_id] for db_id, _ in rows], [b for _, b in rows],
                        lo, hi)

    def add_blocks(self, blocks: Sequence[Block], lids: Sequence[int], lo: int, hi: int) -> None:
        """Add the cut samples of the targets' local ids (-1: not in the head)."""
        order, want = _wanted(lids)
        if not want.size:
            return
        targets: list[int] = []
        blobs: list[bytes] = []
        for b in blocks:
            if b.hi < lo or b.lo > hi:
                continue
            t_min, t_max = b.t_min, b.t_max
            for k, first, end in _chunk_ranges(b, want):
                for j in range(first, end):
                    if t_max[j] >= lo and t_min[j] <= hi:
                        targets.append(int(order[k]))
                        blobs.append(b.blobs[j])
        self._add_blobs(targets, blobs, lo, hi)

    def add_head(self, entries: Sequence[Entry], lids: Sequence[int], lo: int, hi: int) -> None:
        """Add the uncut samples of the targets' local ids (-1: not in the head).

        ``entries`` in write order. Walked newest first, a page at a time where whole,
        stopping at the first page whose ``reach`` is before ``lo``: the work is that of
        the range asked for, not of every uncut cycle (``visited`` counts the steps).
        """
        order, want = _wanted(lids)
        if not want.size:
            return
        first = len(self.ts)
        prev_ids: I64Array | None = None
        hit = idx = np.empty(0, np.int64)
        j = len(entries) - 1
        while j >= 0:
            e = entries[j]
            self.visited += 1
            pg = e.page
            if pg is not None and pg.reach < lo:
                break  # this entry and every older one end before the range
            if pg is not None and e.row == pg.rows - 1 and j >= e.row and (
                    entries[j - e.row].page is pg and entries[j - e.row].row == 0):
                j -= pg.rows
                if pg.t_max < lo or pg.t_min > hi:
                    continue
                if pg.ids is not prev_ids:
                    prev_ids = pg.ids
                    hit, idx = _locate(pg.ids, want)
                if hit.size:
                    self.targets.append(np.tile(order[hit], pg.rows))
                    self.ts.append(pg.ts.columns(idx).reshape(-1))
                    self.vals.append(pg.vals.columns(idx).reshape(-1))
                continue
            j -= 1
            if e.t_max < lo or e.t_min > hi:
                continue
            for p in e.parts:
                if p.ids is not prev_ids:
                    prev_ids = p.ids
                    hit, idx = _locate(p.ids, want)
                if hit.size:
                    self.targets.append(order[hit])
                    self.ts.append(part_ts(e, p, idx))
                    self.vals.append(part_vals(e, p, idx))
        if len(self.ts) > first:
            self.head_runs.append((first, len(self.ts)))

    def _oldest_first(self) -> list[int]:
        """The pieces' indices, oldest samples first: each add_head's run reversed."""
        order = list(range(len(self.ts)))
        for first, end in self.head_runs:
            order[first:end] = reversed(order[first:end])
        return order

    def _concatenated(self, pieces: Sequence[int]) -> tuple[I64Array, I64Array, F64Array]:
        if len(pieces) == 1:
            k = pieces[0]
            return self.targets[k], self.ts[k], self.vals[k]
        return (np.concatenate([self.targets[k] for k in pieces]),
                np.concatenate([self.ts[k] for k in pieces]),
                np.concatenate([self.vals[k] for k in pieces]))

    def to_series(
        self, signal: str, keys: Sequence[Labels], start: float, end: float
    ) -> list[SeriesData]:
        """One SeriesData per target with samples in [start, end], sorted by time."""
        return self.split([Wanted(signal, keys, start, end)])[0]

    def ordered(self, wanted: Sequence[Wanted]) -> tuple[I64Array, F64Array, F64Array]:
        """The samples :meth:`split` splits: (target, seconds, value) of those inside their
        target's range, by target, then time, ties in gathered order."""
        if not self.ts:
            return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, np.float64)
        # Gathered oldest first, each series' samples are usually in time order already:
        # then a linear sort by target alone orders them (:func:`by_target_if_in_time`).
        tgt, ms, vals = _in_ranges(wanted, *self._concatenated(self._oldest_first()))
        fast = by_target_if_in_time(tgt, ms)
        if fast is not None:
            srt, tgt, ms = fast
        else:  # ties or disorder: the general sort, ties in gathered order
            tgt, ms, vals = _in_ranges(wanted, *self._concatenated(range(len(self.ts))))
            srt = series_order(tgt, ms)
            tgt, ms = tgt[srt], ms[srt]
        return tgt, ms / 1000.0, vals[srt]

    def split(self, wanted: Sequence[Wanted]) -> list[list[SeriesData]]:
        """Per :class:`Wanted`, one SeriesData per key with samples in its [start, end],
        sorted by time: what :meth:`to_series` gives for each, from one gathering.

        The targets are numbered on from one ``Wanted`` to the next (the first's keys are
        targets ``0..len(keys)-1``, and so on). Several signals gathered together cost
        one concatenation and one sort instead of one each (``Store.query_many``).
        """
        out: list[list[SeriesData]] = [[] for _ in wanted]
        tgt, secs, vals = self.ordered(wanted)
        if not tgt.size:
            return out
        heads = np.concatenate(([0], np.flatnonzero(tgt[1:] != tgt[:-1]) + 1))
        firsts = np.cumsum([0, *(len(w.keys) for w in wanted)])
        which = np.searchsorted(firsts, tgt[heads], "right") - 1
        index = tgt[heads] - firsts[which]
        tails = [*heads[1:].tolist(), int(tgt.size)]
        for a, b, k, i in zip(heads.tolist(), tails, which.tolist(), index.tolist(),
                              strict=True):
            w = wanted[k]
            out[k].append(SeriesData(w.signal, w.keys[i], secs[a:b], vals[a:b]))
        return out


@dataclass(frozen=True, slots=True)
class Wanted:
    """One signal's share of a :class:`Gathered`: its series' labels (one per target, in
    target order) and the time range its samples are kept from (Unix seconds)."""

    signal: str
    keys: Sequence[Labels]
    start: float
    end: float


def newest(
    entries_newest_first: Sequence[Entry],
    blocks_newest_first: Sequence[Block],
    lids: Sequence[int],
) -> dict[int, tuple[int, float]]:
    """Local id -> (ts ms, value) of the most recently written sample of each id."""
    want = np.array(sorted(lids), dtype=np.int64)
    found = np.zeros(want.size, dtype=bool)
    out: dict[int, tuple[int, float]] = {}
    for e in entries_newest_first:
        for p in reversed(e.parts):
            if found.all():
                return out
            hit, idx = _locate(p.ids, want)
            fresh = ~found[hit]
            ts = part_ts(e, p, idx[fresh]).tolist()
            vals = part_vals(e, p, idx[fresh]).tolist()
            for j, t, v in zip(hit[fresh].tolist(), ts, vals, strict=True):
                out[int(want[j])] = (t, v)
            found[hit] = True
    # Series not written since the last cut (a server gone quiet): its last chunk.
    for b in blocks_newest_first:
        if found.all():
            break
        missing = np.flatnonzero(~found)
        for k, first, end in _chunk_ranges(b, want[missing]):
            j = first + int(np.argmax(b.t_max[first:end]))
            t, v = codec.decode_chunk(b.blobs[j])
            out[int(want[missing[k]])] = (int(t[-1]), float(v[-1]))
            found[missing[k]] = True
    return out


def memory_bound(
    series: int,
    interval: float,
    chunk_span: float,
    memory_window: float,
    *,
    cut_delay: float = 0.0,
    chunk_sample_bytes: float = CHUNK_SAMPLE_BYTES,
) -> int:
    """The most bytes the head holds for ``series`` series written every ``interval``
    seconds (see the module doc), the pending backlog of a store outage aside."""
    uncut_cycles = math.ceil((chunk_span + cut_delay) / interval) + 1
    cut_cycles = math.ceil((memory_window + chunk_span) / interval) + 1
    chunks = series * (math.ceil((memory_window + chunk_span) / chunk_span) + 1)
    return math.ceil(
        uncut_cycles * (series * 16 + ENTRY_OVERHEAD)
        + cut_cycles * series * chunk_sample_bytes
        + chunks * CHUNK_OVERHEAD
    )


def head_bytes(entries: Iterable[Entry], blocks: Iterable[Block]) -> tuple[int, int]:
    """(bytes of uncut entries, bytes of blocks) as :func:`memory_bound` counts them.

    Sample arrays by their ``nbytes`` (an id array shared by several cycles once), plus
    the per-entry and per-chunk object overheads of the bound.
    """
    seen: set[int] = set()
    uncut = 0
    for e in entries:
        uncut += ENTRY_OVERHEAD
        pg = e.page
        if pg is not None and id(pg) not in seen:
            seen.add(id(pg))
            uncut += pg.ts.nbytes + pg.vals.nbytes
        for p in e.parts:
            uncut += (p.ts.nbytes if p.ts is not None else 0) + (
                p.vals.nbytes if p.vals is not None else 0)
            if id(p.ids) not in seen:
                seen.add(id(p.ids))
                uncut += p.ids.nbytes
    cut = 0
    for b in blocks:
        cut += sum(len(blob) for blob in b.blobs) + len(b.blobs) * CHUNK_OVERHEAD
    return uncut, cut
