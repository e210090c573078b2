"""The time-series store: an in-memory head, a head-log WAL table, compressed chunks.

Why this shape: a node writes ~2,400 series every second (~200 M samples a day). One
narrow row per sample costs ~29 bytes in SQLite and ~1 µs of Python per row; instead
each collection cycle becomes ONE head-log row (a packed blob) in one transaction, which
is the durability point, and the samples also go to an in-memory head. Once the head
has crossed an aligned time-window boundary (``chunk_span``, default 4 min) the cycles of
the finished windows are cut into one compressed chunk per series and window (see
``chunk_cut.py``), and the covered head-log rows are deleted in the same transaction. A
restart replays this node's head-log rows, so nothing acknowledged is lost.

Cut cycles stay in memory for ``memory_window`` (default 10 min) so that detector windows
are answered from memory without touching the database: as the compressed chunks the cut
just wrote (``head.Block``), not as raw columns (see ``head.py``). A window that reaches
into a block decodes its chunks, whole, on every read. ``cut_delay`` keeps the cycles of
that many seconds before a boundary uncut until the boundary is that far behind: the
daemon sets it to its minute-long rule and window-signal windows, which would otherwise
decode every series' newest chunk, every evaluation, for the minute after each cut.

Failure handling: ``append()`` puts a cycle in the head (so detectors keep working) and
in a bounded pending buffer (``pending.py``) without touching the database;
``persist()`` writes the backlog, in order, and raises :class:`StoreUnavailable` when the
database cannot be written, keeping the backlog for the next try. The daemon calls
``append`` on its collection loop and ``persist`` on a writer thread
(``storage/writer.py``), so a database that hangs without answering (a frozen
PostgreSQL) never holds up collection; reads that need the database wait at most
``read_timeout`` (``read_deadline.py``). ``write()`` is both in one call, for tools and
tests. Failures are counted by reason (``write_errors``, see ``db_errors.py``).

This module is the one place that holds the locks and the head's state; the parts it
calls are pure or touch only the database: ``series_registry`` (series ids),
``head_log`` (the WAL rows), ``chunk_cut`` (cycles to chunks), ``chunk_table`` (the
chunks table's layout: partitions, idempotent inserts, retention), ``queries`` (reads).

Locks: ``_write_lock`` serialises writers (the writer thread, ``flush()`` on SIGTERM);
the pending buffer has its own, shared by ``append`` and the writer; ``_lock`` guards
the head and the series registry and is held only to copy references; ``_cut_lock``
makes "chunks committed + cycles marked cut" atomic for the queries that read both the
database and the head, so they see every sample exactly once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from operator import attrgetter
from typing import Any

import numpy as np
from sqlalchemy import Engine, func, select

from gpuwarden.errors import StoreError, StoreUnavailable
from gpuwarden.model import Labels, Sample, SeriesData
from gpuwarden.storage import head_log, schema
from gpuwarden.storage.chunk_cut import MAX_CHUNK_SPAN_MS, encode_cut
from gpuwarden.storage.chunk_table import ChunkTable
from gpuwarden.storage.codec import F64Array, I64Array
from gpuwarden.storage.db_errors import DB_ERRORS, db_error_text, write_error_reason
from gpuwarden.storage.engine import open_engine, write_transaction
from gpuwarden.storage.head import Block, Entry, compact, newest, split_cycle
from gpuwarden.storage.held_windows import HeadMark, HeldWindows
from gpuwarden.storage.pending import PendingBuffer
from gpuwarden.storage.queries import (
    DbRows,
    from_head,
    local_by_labels,
    own_node,
    plan,
    read_database,
    unreadable,
    with_database,
)
from gpuwarden.storage.read_deadline import ReadDeadline
from gpuwarden.storage.series_registry import (
    SeriesKey,
    SeriesRegistry,
    create_series,
    load_series,
    stored_series,
    unique_ids,
)

log = logging.getLogger(__name__)

_I64_MIN = -(2**63)
_SIGNAL, _LABELS = attrgetter("signal"), attrgetter("labels")
_TS, _VALUE = attrgetter("ts"), attrgetter("value")
#: What a read of the database hands back from its thread (see ``Store._query``).
_DbRead = tuple[list[DbRows], list[Entry], list[dict[Labels, int]]]


class Store:
    """Durable, thread-safe sample store over SQLite or PostgreSQL (see module doc)."""

    def __init__(
        self,
        engine: Engine,
        *,
        node: str,
        chunk_span: float = 240.0,
        memory_window: float = 600.0,
        cut_delay: float = 0.0,
        max_pending_cycles: int = 600,
        max_pending_samples: int = 2_000_000,
        zlib_level: int = 6,
        read_timeout: float | None = None,
    ) -> None:
        if not 0 < chunk_span * 1000 <= MAX_CHUNK_SPAN_MS:
            raise ValueError(f"chunk_span must be in (0, {MAX_CHUNK_SPAN_MS // 1000}] seconds")
        if not 0 <= cut_delay < math.inf:
            raise ValueError("cut_delay must be a finite number of seconds >= 0")
        self.engine = engine
        self.node = node
        self._span_ms = round(chunk_span * 1000)
        self._memory_ms = round(memory_window * 1000)
        self._cut_delay_ms = round(cut_delay * 1000)
        self._level = zlib_level
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._cut_lock = threading.Lock()
        self._reads = ReadDeadline(read_timeout)
        self._closed = False
        self._series = SeriesRegistry()
        # Head: uncut entries in write order, then blocks of cut chunks in cut order;
        # pending: the tail of the entries not yet in the head log.
        self._entries: deque[Entry] = deque()
        self._blocks: deque[Block] = deque()
        self._pending = PendingBuffer(max_cycles=max_pending_cycles,
                                      max_samples=max_pending_samples)
        self._last_ids: I64Array = np.empty(0, np.int64)
        # The last appended cycle's (signals, labels) and their local ids: a scrape's
        # mapping plan yields the same sequence every cycle (see ``_local_ids``).
        self._last_keys: tuple[list[str], list[Labels], I64Array] | None = None
        self._newest_ms = _I64_MIN
        # Cycles appended to the head and dropped from it (a full pending buffer), ever:
        # where a held window read goes on from (``held_windows.HeadMark``).
        self._appended_total = 0
        self._dropped_cycles_total = 0
        # Every sample of this node at or after this is in memory: the replay loads every
        # uncut head-log row of the node, this store is the node's only writer (the
        # daemon's instance lock) and a block leaves memory only with its samples below
        # the new cover (``_evict``). So a read of this node's own series over a covered
        # window needs no database, even for a signal the head has no series of
        # (``queries.plan``). A store opened beside the running daemon (a CLI tool, which
        # writes nothing) answers such a window as of its opening, for every signal.
        self._cover_ms = _I64_MIN
        self.samples_written_total = 0
        self.write_errors: Counter[str] = Counter()  # by reason, see write_error_reason
        self.dropped_samples_total = 0
        self.chunks_written_total = 0
        self.last_write_seconds = 0.0
        try:
            schema.create_tables(engine)
            self.chunk_table = ChunkTable(engine)  # its layout: see chunk_table.py
            self._replay()
        except StoreError:
            engine.dispose()
            raise
        except DB_ERRORS as exc:
            engine.dispose()
            url = engine.url.render_as_string(hide_password=True)
            raise StoreError(f"cannot open store {url}: {db_error_text(exc)}") from exc

    @property
    def read_timeout(self) -> float | None:
        """Seconds a read that needs the database waits (None: as long as it takes)."""
        return self._reads.timeout

    @read_timeout.setter
    def read_timeout(self, seconds: float | None) -> None:
        self._reads.timeout = seconds

    @property
    def read_timeouts_total(self) -> int:
        """Reads the database did not answer within ``read_timeout``."""
        return self._reads.timeouts_total

    # ---------------------------------------------------------------- the head
    def _replay(self) -> None:
        """Load this node's head-log rows into the head; note where chunks end."""
        registry = self._series
        with self.engine.connect() as conn:
            max_tmax = conn.scalar(select(func.max(schema.chunks.c.t_max)))
            logged = head_log.read_cycles(conn, self.node)
            unknown = {i for _, ids, _, _ in logged for i in unique_ids(ids).tolist()}
            found = load_series(conn, sorted(unknown - registry.local_of_db.keys()))
        if max_tmax is not None:
            self._cover_ms = int(max_tmax) + 1
        with self._lock:
            registry.register_stored(found)
        local_of_db = registry.local_of_db
        for log_id, ids, ts, vals in logged:
            known = np.fromiter((i in local_of_db for i in ids.tolist()), bool, ids.size)
            if not known.all():  # a series row vanished: nothing to attach the samples to
                log.warning("head-log row %d references %d unknown series", log_id, (~known).sum())
            lids = np.array([local_of_db[int(i)] for i in ids[known]], dtype=np.int64)
            if not lids.size:
                continue
            entry = self._make_entry(lids, ts[known], vals[known])
            entry.log_id = log_id
            self._add_to_head(entry)
        if logged:
            log.info("replayed %d head-log cycles of node %s", len(logged), self.node)

    def _make_entry(self, lids: I64Array, ts: I64Array, vals: F64Array) -> Entry:
        entry, self._last_ids = split_cycle(lids, ts, vals, self._last_ids)
        return entry

    def _add_to_head(self, entry: Entry) -> None:
        with self._lock:
            self._entries.append(entry)
            self._newest_ms = max(self._newest_ms, entry.t_max)
            self._appended_total += 1

    # ------------------------------------------------------------------ write
    @property
    def write_errors_total(self) -> int:
        """Failed writes and cuts, all reasons together."""
        return sum(self.write_errors.values())

    def count_write_error(self, reason: str) -> None:
        """Count a failed write under ``reason`` (the writer counts ``timeout`` itself)."""
        self.write_errors[reason] += 1

    def _failed_write(self, exc: BaseException) -> str:
        """Count a failed database write by its reason; its text for a message."""
        self.write_errors[write_error_reason(exc)] += 1
        return db_error_text(exc)

    def write(self, samples: Sequence[Sample]) -> int:
        """Persist one collection cycle; return how many samples reached the database.

        ``append`` then ``persist``, in the calling thread. The count includes a backlog
        written ahead of this cycle. Raises :class:`StoreUnavailable` when the database
        cannot be written; the cycle is then held in the pending buffer (and already
        queryable from the head).
        """
        self.append(samples)
        return self.persist()

    def append(self, samples: Sequence[Sample]) -> None:
        """Put one cycle in the head and the pending buffer; never touches the database.

        Thread-safe against a concurrent :meth:`persist` on another thread.
        """
        if self._closed:
            raise StoreError("store is closed")
        if samples:
            self._append(samples)

    def persist(self) -> int:
        """Write the pending backlog in order, then cut finished windows into chunks.

        Returns the samples written. Raises :class:`StoreUnavailable` (the backlog is
        kept) when the database cannot be written. May block as long as the database
        does: the daemon calls it on its writer thread only.
        """
        started = time.perf_counter()
        with self._write_lock:
            try:
                written = self._persist_pending()
            except DB_ERRORS as exc:
                text = self._failed_write(exc)
                self.last_write_seconds = time.perf_counter() - started
                raise StoreUnavailable(
                    f"store not writable, {self.pending_samples} samples pending: {text}"
                ) from exc
            try:
                self._cut(force=False)
            except DB_ERRORS as exc:  # the samples are durable in the head log already
                log.warning("chunk cut failed, will retry: %s", self._failed_write(exc))
            self._evict()
        self.last_write_seconds = time.perf_counter() - started
        return written

    def _append(self, samples: Sequence[Sample]) -> None:
        # Each field as one list, read in C. Not ``zip(*samples)``: its thousands of live
        # iterators are garbage-collected objects, enough to start a few collections of
        # the daemon's whole heap every cycle.
        signals = list(map(_SIGNAL, samples))
        labels = list(map(_LABELS, samples))
        lids = self._local_ids(signals, labels)
        ts = np.array(list(map(_TS, samples)), dtype=np.float64)
        if not np.isfinite(ts).all():
            raise ValueError("sample timestamps must be finite")
        vals = np.array(list(map(_VALUE, samples)), dtype=np.float64)
        ts_ms = np.rint(ts * 1000.0).astype(np.int64)
        entry = self._make_entry(lids, ts_ms, vals)
        self._add_to_head(entry)
        dropped = self._pending.add(entry)
        for old in dropped:
            self.dropped_samples_total += old.count
            with self._lock:
                self._entries.remove(old)
                self._dropped_cycles_total += 1
        if dropped:
            log.warning("pending buffer full: dropped %d cycles of %d samples", len(dropped),
                        sum(e.count for e in dropped))

    def _local_ids(self, signals: list[str], labels: list[Labels]) -> I64Array:
        """The local id of each (signal, labels), registering new series.

        A cycle with the same (signal, labels) sequence as the last one has its ids: a
        series' local id never changes, and comparing the sequences costs a pointer
        comparison per sample where the label tuples are the same objects as last
        cycle's (a scrape's mapping plan reuses them), an equality test where they are
        not, against a tuple build, a hash and a dict lookup per sample.
        """
        last = self._last_keys
        if last is not None and last[1] == labels and last[0] == signals:
            return last[2]
        get = self._series.local.get
        lid_list = [get(k, -1) for k in zip(signals, labels, strict=True)]
        if -1 in lid_list:
            with self._lock:
                register = self._series.register
                lid_list = [register(k) for k in zip(signals, labels, strict=True)]
        lids = np.array(lid_list, dtype=np.int64)
        lids.flags.writeable = False  # shared by the cycles of this sequence
        self._last_keys = (signals, labels, lids)
        return lids

    @property
    def pending_samples(self) -> int:
        """Samples accepted by ``append()`` but not yet in the database."""
        return self._pending.samples

    def flush_pending(self) -> int:
        """Write the pending backlog now; raise :class:`StoreUnavailable` if impossible."""
        with self._write_lock:
            try:
                return self._persist_pending()
            except DB_ERRORS as exc:
                raise StoreUnavailable(f"store not writable: {self._failed_write(exc)}") from exc

    def _persist_pending(self) -> int:
        batch = self._pending.start_writing()
        try:
            return self._persist_batch(batch) if batch else 0
        finally:
            self._pending.done_writing()

    def _persist_batch(self, batch: list[Entry]) -> int:
        registry = self._series
        new_ids: dict[int, int] = {}
        with write_transaction(self.engine) as conn:
            missing = registry.unassigned([p.ids for e in batch for p in e.parts])
            db_ids = registry.db_ids
            if missing:
                new_ids = create_series(conn, {lid: registry.keys[lid] for lid in missing})
                db_ids = db_ids.copy()
                for lid, db_id in new_ids.items():
                    db_ids[lid] = db_id
            log_ids = head_log.write_cycles(conn, self.node, batch, db_ids)
        with self._lock:
            registry.assign(new_ids)
        for e, log_id in zip(batch, log_ids, strict=True):
            e.log_id = log_id
        self._pending.written(len(batch))
        written = sum(e.count for e in batch)
        self.samples_written_total += written
        return written

    # -------------------------------------------------------------------- cut
    def flush(self) -> None:
        """Persist the backlog and cut the whole head into chunks (e.g. on SIGTERM)."""
        with self._write_lock:
            try:
                self._persist_pending()
                self._cut(force=True)
            except DB_ERRORS as exc:
                raise StoreUnavailable(f"store flush failed: {self._failed_write(exc)}") from exc
            self._evict()

    def _cut(self, *, force: bool) -> None:
        with self._lock:
            boundary = ((self._newest_ms - self._cut_delay_ms) // self._span_ms
                        * self._span_ms)
            chosen = [
                e
                for e in self._entries
                if e.log_id is not None and (force or e.t_max < boundary)
            ]
        if not chosen:
            return
        rows, block = encode_cut(chosen, self._span_ms, self._level, self._series.db_ids)
        log_ids = sorted({e.log_id for e in chosen if e.log_id is not None})
        self.chunk_table.prepare(self.engine, rows)  # partitions ahead, own transaction
        with self._cut_lock:
            with write_transaction(self.engine) as conn:
                self.chunk_table.insert(conn, rows)  # a retried cut inserts nothing twice
                head_log.delete_rows(conn, log_ids)
            cut = {id(e) for e in chosen}
            with self._lock:  # one swap: a query sees each sample in exactly one place
                self._entries = deque(e for e in self._entries if id(e) not in cut)
                self._blocks.append(block)
        self.chunks_written_total += len(rows)

    def _evict(self) -> None:
        """Forget cut blocks that ended before the memory window; page new cycles.

        Paging (``head.compact``) is done here, on the writer, so that ``append`` stays a
        few numpy calls and a query gathers the uncut cycles a page at a time.
        """
        tail: list[Entry] = []
        reach = _I64_MIN
        with self._lock:
            limit = self._newest_ms - self._memory_ms
            while self._blocks and self._blocks[0].hi < limit:
                old = self._blocks.popleft()
                self._cover_ms = max(self._cover_ms, old.hi + 1)
            for e in reversed(self._entries):
                if e.page is not None:
                    reach = e.page.reach
                    break
                tail.append(e)
        tail.reverse()
        compact(tail, reach, self._span_ms)

    # ------------------------------------------------------------------ query
    def query(
        self,
        signal: str,
        matchers: Mapping[str, str] | None = None,
        start: float = -math.inf,
        end: float = math.inf,
    ) -> list[SeriesData]:
        """Samples of ``signal`` with ``start <= ts <= end`` (Unix seconds), per series.

        Matchers are exact label equalities; a node reads its own series unless they name
        another (``queries.own_node``). A window the in-memory head covers is answered
        without the database; otherwise chunks are read and merged with the head."""
        got, failed = self._query({signal: (start, end)}, matchers)
        if failed:
            raise failed[signal]
        return got[signal]

    def query_many(
        self, ranges: Mapping[str, tuple[float, float]]
    ) -> tuple[dict[str, list[SeriesData]], dict[str, StoreUnavailable]]:
        """``query(signal, None, start, end)`` of each ``signal: (start, end)``, read together
        (``queries.py``); a failed read's signals map to its error in the second dict."""
        return self._query(ranges, None)

    def query_held(
        self, ranges: Mapping[str, tuple[float, float]], held: HeldWindows
    ) -> tuple[dict[str, list[SeriesData]], dict[str, StoreUnavailable]]:
        """``query_many(ranges)``, the windows the head answers going on from what ``held``
        holds of the last read of each (``held_windows.py``); ``held`` is one reader's."""
        return self._query(ranges, None, held)

    def _query(
        self, ranges: Mapping[str, tuple[float, float]], matchers: Mapping[str, str] | None,
        held: HeldWindows | None = None,
    ) -> tuple[dict[str, list[SeriesData]], dict[str, StoreUnavailable]]:
        registry = self._series
        with self._lock:
            memory, database = plan(registry, ranges, matchers, self._cover_ms, self.node)
            snap, blocks = (list(self._entries), list(self._blocks)) if memory else ([], [])
            mark = None if held is None else HeadMark(
                snap[-1] if snap else None, self._appended_total, self._dropped_cycles_total,
                self._newest_ms)
        if held is None or mark is None:
            from_memory = from_head(snap, blocks, memory)
        else:
            from_memory = held.read(snap, blocks, memory, mark)
            held.drop(r.signal for r in database)  # not held: the database answers them
        got = dict(zip([r.signal for r in memory], from_memory, strict=True))
        if not database:
            return got, {}

        def read_db() -> _DbRead:
            with self._cut_lock:
                with self.engine.connect() as conn:
                    rows = read_database(conn, database, own_node(matchers, self.node))
                with self._lock:  # the uncut cycles as of the chunks read: each sample once
                    return rows, list(self._entries), [
                        local_by_labels(r, db_series, registry.local_of_db)
                        for r, (db_series, _) in zip(database, rows, strict=True)]

        try:
            rows, head, mapped = self._reads.run(read_db)
        except (StoreUnavailable, *DB_ERRORS) as exc:
            return got, {r.signal: unreadable(exc) for r in database}
        for r, r_rows, by_labels in zip(database, rows, mapped, strict=True):
            got[r.signal] = with_database(r, r_rows, head, by_labels)
        return got, {}

    def latest(self, signal: str, matchers: Mapping[str, str] | None = None) -> list[Sample]:
        """The newest sample of each matching series held in the in-memory head.

        Only the head is consulted (no database round trip per scrape): a series this
        node has not written within the memory window is stale and left out.
        """
        with self._lock:
            local = sorted(self._series.matching(signal, matchers))
            keys = {lid: self._series.keys[lid][1] for lid in local}
            entries = list(self._entries)
            blocks = list(self._blocks)
        got = newest(entries[::-1], blocks[::-1], local)
        return [
            Sample(signal, keys[lid], got[lid][1], got[lid][0] / 1000.0)
            for lid in sorted(got, key=lambda lid: keys[lid])
        ]

    def series(self, signal: str | None = None) -> list[tuple[str, Labels]]:
        """Every known (signal, labels), from the database and this node's head."""
        def read_db() -> set[SeriesKey]:
            with self.engine.connect() as conn:
                return {key for _, key in stored_series(conn, signal)}

        try:
            found = self._reads.run(read_db)
        except DB_ERRORS as exc:
            raise StoreUnavailable(f"store not readable: {db_error_text(exc)}") from exc
        with self._lock:
            found.update(k for k in self._series.keys if signal is None or k[0] == signal)
        return sorted(found)

    # -------------------------------------------------------------- lifecycle
    def apply_retention(
        self, now: float, retention_seconds: float, *, batch_size: int = 1000
    ) -> int:
        """Expire chunks and rollups older than the retention (``chunk_table.py``)."""
        try:
            return self.chunk_table.apply_retention(self.engine, now, retention_seconds,
                                                    batch_size=batch_size)
        except DB_ERRORS as exc:
            raise StoreUnavailable(f"retention failed: {db_error_text(exc)}") from exc

    def close(self) -> None:
        """Persist what is pending (best effort) and release connections; idempotent."""
        if self._closed:
            return
        with self._write_lock:
            try:
                self._persist_pending()
            except DB_ERRORS as exc:
                log.warning("closing with %d samples not persisted: %s", self.pending_samples,
                            db_error_text(exc))
            self._closed = True
            self.engine.dispose()
        self._reads.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_store(url: str, *, node: str, busy_timeout_ms: int = 300, **options: Any) -> Store:
    """Open (creating tables if needed) the store at a SQLAlchemy URL.

    ``sqlite:///PATH`` or ``postgresql+psycopg://...`` (see ``engine.open_engine``).
    Raises :class:`StoreError` for a URL that cannot be used, with a message naming the
    problem. ``options`` go to :class:`Store`.
    """
    engine = open_engine(url, busy_timeout_ms=busy_timeout_ms)
    try:
        return Store(engine, node=node, **options)
    except (TypeError, ValueError):  # a bad option: nothing opened stays open
        engine.dispose()
        raise
