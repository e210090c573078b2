"""The time-series store: an in-memory head, a head-log WAL table, compressed chunks.

Why this shape: a node writes ~2,400 series every second (~200 M samples a day). One
narrow row per sample costs ~29 bytes in SQLite and ~1 µs of Python per row; instead
each collection cycle becomes ONE head-log row (a packed blob) in one transaction, which
is the durability point, and the samples also go to an in-memory head. Once the head
has crossed an aligned time-window boundary (``chunk_span``, default 4 min) the cycles of
the finished windows are cut into one compressed chunk per series and window (see
``codec.py``), and the covered head-log rows are deleted in the same transaction. A
restart replays this node's head-log rows, so nothing acknowledged is lost.

Cut cycles stay in memory for ``memory_window`` (default 10 min) so that detector windows
are answered from memory without touching the database: as the compressed chunks the cut
just wrote (``head.Block``), not as raw columns (see ``head.py``).

Failure handling: ``append()`` puts a cycle in the head (so detectors keep working) and
in a bounded pending buffer without touching the database; ``persist()`` writes the
backlog, in order, and raises :class:`StoreUnavailable` when the database cannot be
written, keeping the backlog for the next try. The daemon calls ``append`` on its
collection loop and ``persist`` on a writer thread (``storage/writer.py``), so a database
that hangs without answering (a frozen PostgreSQL) never holds up collection. ``write()``
is both in one call, for tools and tests. Failures are counted by reason
(``write_errors``: ``timeout``, ``unavailable``, ``locked``, ``disk_full``, ``error``).

Locks: ``_write_lock`` serialises writers (the writer thread, ``flush()`` on SIGTERM);
``_pending_lock`` guards the pending buffer, shared by ``append`` and the writer;
``_lock`` guards the head and the series registry and is held only to copy references;
``_cut_lock`` makes "chunks committed + cycles marked cut" atomic for the queries that
read both the database and the head, so they see every sample exactly once.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, contextmanager
from typing import Any, TypeVar

import numpy as np
from sqlalchemy import (
    Connection,
    Engine,
    delete,
    func,
    insert,
    inspect,
    select,
)
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from gpuwarden.errors import StoreError, StoreUnavailable
from gpuwarden.model import Labels, Sample, SeriesData
from gpuwarden.storage import codec, schema
from gpuwarden.storage import retention as _retention
from gpuwarden.storage.codec import F64Array, I64Array
from gpuwarden.storage.head import (
    Block,
    Entry,
    Gathered,
    compact,
    cut_slices,
    newest,
    split_cycle,
)

log = logging.getLogger(__name__)

#: Chunks never span more than this, so a range query bounds its index scan by t_min.
MAX_CHUNK_SPAN_MS = 3_600_000
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
_DB_ERRORS = (DBAPIError, SQLAlchemyError, TimeoutError)
SeriesKey = tuple[str, Labels]
T = TypeVar("T")
#: Threads for reads with a deadline; one more than a stuck read needs.
_READ_THREADS = 2


def labels_json(labels: Labels) -> str:
    """The canonical JSON spelling of a label set stored in ``series.labels``."""
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def dialect_insert(dialect: str, table: Any) -> Any:
    """An ``INSERT`` with ``on_conflict_do_*`` for the dialect (``engine.dialect.name``).

    Imported on use: SQLAlchemy's PostgreSQL dialect package costs ~2 MiB of memory, which
    a daemon on SQLite (the default) should not carry.
    """
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        return pg_insert(table)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    return sqlite_insert(table)


def unique_ids(ids: I64Array) -> I64Array:
    """Sorted distinct ids. Not ``np.unique``: numpy 2 imports ``numpy.ma`` for it (~1.3
    MiB held for the process's life) to check for a masked array we never pass."""
    a = np.sort(ids)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if a.size else a


def _matches(labels: Labels, matchers: Mapping[str, str] | None) -> bool:
    if not matchers:
        return True
    have = dict(labels)
    return all(have.get(k) == v for k, v in matchers.items())



@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction; on SQLite ``BEGIN IMMEDIATE`` so busy_timeout applies.

    Every writer of the store's database (samples, alert state, audit trail, model
    history) opens its transactions here, so they all take the lock the same way.
    """
    with engine.connect() as conn:
        conn.execution_options(gw_write=True)
        with conn.begin():
            yield conn

class Store:
    """Durable, thread-safe sample store over SQLite or PostgreSQL (see module doc)."""

    def __init__(
        self,
        engine: Engine,
        *,
        node: str,
        chunk_span: float = 240.0,
        memory_window: float = 600.0,
        max_pending_cycles: int = 600,
        max_pending_samples: int = 2_000_000,
        zlib_level: int = 6,
        read_timeout: float | None = None,
    ) -> None:
        if not 0 < chunk_span * 1000 <= MAX_CHUNK_SPAN_MS:
            raise ValueError(f"chunk_span must be in (0, {MAX_CHUNK_SPAN_MS // 1000}] seconds")
        self.engine = engine
        self.node = node
        self._pg = engine.dialect.name == "postgresql"
        self._span_ms = round(chunk_span * 1000)
        self._memory_ms = round(memory_window * 1000)
        self._max_pending_cycles = max_pending_cycles
        self._max_pending_samples = max_pending_samples
        self._level = zlib_level
        self._lock = threading.Lock()
        self._write_lock = threading.RLock()
        self._pending_lock = threading.Lock()
        # Reads that need the database, with a deadline (read_timeout; None: wait).
        self.read_timeout = read_timeout
        self._reader: ThreadPoolExecutor | None = None
        self._reader_lock = threading.Lock()
        self._read_stuck = 0  # reads past their deadline that have not returned yet
        self.read_timeouts_total = 0
        self._in_flight: set[int] = set()  # ids of pending entries a persist is writing
        self._cut_lock = threading.Lock()
        self._closed = False
        # Series registry: local ids index the head; db ids are assigned on persist.
        self._keys: list[SeriesKey] = []
        self._local: dict[SeriesKey, int] = {}
        self._by_signal: dict[str, list[int]] = {}
        self._db_ids = np.full(1024, -1, dtype=np.int64)
        self._local_of_db: dict[int, int] = {}
        # Head: uncut entries in write order, then blocks of cut chunks in cut order;
        # pending: the tail of the entries not yet in the head log.
        self._entries: deque[Entry] = deque()
        self._blocks: deque[Block] = deque()
        self._pending: deque[Entry] = deque()
        self._last_ids: I64Array = np.empty(0, np.int64)
        self._newest_ms = _I64_MIN
        self._cover_ms = _I64_MIN  # every sample at or after this is in memory
        self.samples_written_total = 0
        self.write_errors: Counter[str] = Counter()  # by reason, see write_error_reason
        self.dropped_samples_total = 0
        self.chunks_written_total = 0
        self.last_write_seconds = 0.0
        try:
            self._setup_schema()
            self._replay()
        except StoreError:
            engine.dispose()
            raise
        except _DB_ERRORS as exc:
            engine.dispose()
            url = engine.url.render_as_string(hide_password=True)
            raise StoreError(f"cannot open store {url}: {_reason(exc)}") from exc

    # ------------------------------------------------------------------ setup
    def _setup_schema(self) -> None:
        with self.engine.connect() as conn:
            version = None
            if inspect(conn).has_table("schema_version"):
                version = conn.scalar(select(func.max(schema.schema_version.c.version)))
        if version is not None and version > schema.SCHEMA_VERSION:
            raise StoreError(
                f"database schema version {version} is newer than this gpuwarden supports "
                f"({schema.SCHEMA_VERSION}); upgrade gpuwarden or point it at another database"
            )
        with self._begin_write() as conn:
            schema.metadata.create_all(conn)
            if version is None:
                conn.execute(insert(schema.schema_version).values(version=schema.SCHEMA_VERSION))

    def _replay(self) -> None:
        """Load this node's head-log rows into the head; note where chunks end."""
        hl = schema.head_log
        with self.engine.connect() as conn:
            max_tmax = conn.scalar(select(func.max(schema.chunks.c.t_max)))
            rows = conn.execute(
                select(hl.c.id, hl.c.data).where(hl.c.writer == self.node).order_by(hl.c.id)
            ).all()
            decoded = [(int(r.id), *codec.decode_cycle(r.data)) for r in rows]
            unknown = {i for _, ids, _, _ in decoded for i in unique_ids(ids).tolist()}
            unknown -= self._local_of_db.keys()
            found: dict[int, SeriesKey] = {}
            s = schema.series
            wanted = sorted(unknown)
            for k in range(0, len(wanted), 500):
                q = select(s.c.id, s.c.signal, s.c.labels).where(s.c.id.in_(wanted[k : k + 500]))
                for r in conn.execute(q):
                    found[int(r.id)] = (r.signal, tuple(sorted(json.loads(r.labels).items())))
        if max_tmax is not None:
            self._cover_ms = int(max_tmax) + 1
        with self._lock:
            for db_id, key in found.items():
                lid = self._register(key)  # may grow (replace) _db_ids: index it after
                self._db_ids[lid] = db_id
                self._local_of_db[db_id] = self._local[key]
        local_of_db = self._local_of_db
        for log_id, ids, ts, vals in decoded:
            known = np.fromiter((i in local_of_db for i in ids.tolist()), bool, ids.size)
            if not known.all():  # a series row vanished: nothing to attach the samples to
                log.warning("head-log row %d references %d unknown series", log_id, (~known).sum())
            lids = np.array([self._local_of_db[int(i)] for i in ids[known]], dtype=np.int64)
            if not lids.size:
                continue
            entry = self._make_entry(lids, ts[known], vals[known])
            entry.log_id = log_id
            with self._lock:
                self._entries.append(entry)
                self._newest_ms = max(self._newest_ms, entry.t_max)
        if decoded:
            log.info("replayed %d head-log cycles of node %s", len(decoded), self.node)

    # ------------------------------------------------------------ read deadline
    def _db_read(self, read: Callable[[], T]) -> T:
        """Run a database read, waiting at most ``read_timeout`` for it.

        Only a database that stopped answering (frozen processes: see engine.py) makes
        this matter. A read past its deadline is left to finish on its thread; until it
        has, further reads fail at once instead of piling up threads and connections,
        so the caller (rules, derived signals on the collection loop) carries on from
        the head.
        """
        if self.read_timeout is None:
            return read()
        with self._reader_lock:
            if self._read_stuck:
                raise StoreUnavailable("store not answering: an earlier read is still waiting")
            if self._reader is None:
                self._reader = ThreadPoolExecutor(_READ_THREADS,
                                                  thread_name_prefix="gpuwarden-store-read")
            future = self._reader.submit(read)
        try:
            return future.result(timeout=self.read_timeout)
        except FutureTimeout:
            with self._reader_lock:
                self._read_stuck += 1
                self.read_timeouts_total += 1
            future.add_done_callback(self._read_returned)
            raise StoreUnavailable(
                f"store did not answer a read within {self.read_timeout:g}s") from None

    def _read_returned(self, _future: Future[Any]) -> None:
        with self._reader_lock:
            self._read_stuck -= 1

    # --------------------------------------------------------------- registry
    def _register(self, key: SeriesKey) -> int:
        """Local id of a series key (caller holds ``_lock``)."""
        lid = self._local.get(key)
        if lid is not None:
            return lid
        canon = (key[0], tuple(sorted(key[1])))
        lid = self._local.get(canon)
        if lid is None:
            lid = len(self._keys)
            self._keys.append(canon)
            self._local[canon] = lid
            self._by_signal.setdefault(canon[0], []).append(lid)
            if lid >= self._db_ids.size:
                grown = np.full(self._db_ids.size * 2, -1, dtype=np.int64)
                grown[: self._db_ids.size] = self._db_ids
                self._db_ids = grown
        self._local[key] = lid
        return lid

    def _make_entry(self, lids: I64Array, ts: I64Array, vals: F64Array) -> Entry:
        entry, self._last_ids = split_cycle(lids, ts, vals, self._last_ids)
        return entry

    # ------------------------------------------------------------------ write
    def _begin_write(self) -> AbstractContextManager[Connection]:
        return write_transaction(self.engine)

    @property
    def write_errors_total(self) -> int:
        """Failed writes and cuts, all reasons together."""
        return sum(self.write_errors.values())

    def count_write_error(self, reason: str) -> None:
        """Count a failed write under ``reason`` (the writer counts ``timeout`` itself)."""
        self.write_errors[reason] += 1

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
            except _DB_ERRORS as exc:
                self.write_errors[write_error_reason(exc)] += 1
                self.last_write_seconds = time.perf_counter() - started
                raise StoreUnavailable(
                    f"store not writable, {self.pending_samples} samples pending: {_reason(exc)}"
                ) from exc
            try:
                self._cut(force=False)
            except _DB_ERRORS as exc:  # the samples are durable in the head log already
                self.write_errors[write_error_reason(exc)] += 1
                log.warning("chunk cut failed, will retry: %s", _reason(exc))
            self._evict()
        self.last_write_seconds = time.perf_counter() - started
        return written

    def _append(self, samples: Sequence[Sample]) -> None:
        get = self._local.get
        lid_list = [get((s.signal, s.labels), -1) for s in samples]
        if -1 in lid_list:
            with self._lock:
                lid_list = [self._register((s.signal, s.labels)) for s in samples]
        ts = np.array([s.ts for s in samples], dtype=np.float64)
        if not np.isfinite(ts).all():
            raise ValueError("sample timestamps must be finite")
        vals = np.array([s.value for s in samples], dtype=np.float64)
        ts_ms = np.rint(ts * 1000.0).astype(np.int64)
        entry = self._make_entry(np.array(lid_list, dtype=np.int64), ts_ms, vals)
        with self._lock:
            self._entries.append(entry)
            self._newest_ms = max(self._newest_ms, entry.t_max)
        dropped: list[Entry] = []
        with self._pending_lock:
            self._pending.append(entry)
            pending = sum(e.count for e in self._pending)
            # The oldest cycle goes first, unless a persist is writing it right now (it
            # will be in the database in a moment: dropping it would count it twice).
            while len(self._pending) > 1 and (
                len(self._pending) > self._max_pending_cycles
                or pending > self._max_pending_samples
            ) and id(self._pending[0]) not in self._in_flight:
                old = self._pending.popleft()
                pending -= old.count
                dropped.append(old)
        for old in dropped:
            self.dropped_samples_total += old.count
            with self._lock:
                self._entries.remove(old)
        if dropped:
            log.warning("pending buffer full: dropped %d cycles of %d samples", len(dropped),
                        sum(e.count for e in dropped))

    @property
    def pending_samples(self) -> int:
        """Samples accepted by ``append()`` but not yet in the database."""
        with self._pending_lock:
            return sum(e.count for e in self._pending)

    def flush_pending(self) -> int:
        """Write the pending backlog now; raise :class:`StoreUnavailable` if impossible."""
        with self._write_lock:
            try:
                return self._persist_pending()
            except _DB_ERRORS as exc:
                self.write_errors[write_error_reason(exc)] += 1
                raise StoreUnavailable(f"store not writable: {_reason(exc)}") from exc

    def _persist_pending(self) -> int:
        with self._pending_lock:
            batch = list(self._pending)
            self._in_flight = {id(e) for e in batch}
        try:
            return self._persist_batch(batch) if batch else 0
        finally:
            with self._pending_lock:
                self._in_flight = set()

    def _persist_batch(self, batch: list[Entry]) -> int:
        log_ids: list[int] = []
        new_ids: dict[int, int] = {}
        with self._begin_write() as conn:
            missing = np.empty(0, np.int64)
            if any((self._db_ids[p.ids] < 0).any() for e in batch for p in e.parts):
                lids_all = unique_ids(np.concatenate([p.ids for e in batch for p in e.parts]))
                missing = lids_all[self._db_ids[lids_all] < 0]
            mapping = self._db_ids
            if missing.size:
                new_ids = self._create_series(conn, missing.tolist())
                mapping = self._db_ids.copy()
                for lid, db_id in new_ids.items():
                    mapping[lid] = db_id
            for e in batch:
                ids, ts, vals = e.columns()
                blob = codec.encode_cycle(mapping[ids], ts, vals)
                row = {"writer": self.node, "t_min": e.t_min, "t_max": e.t_max}
                res = conn.execute(insert(schema.head_log).values(count=e.count, data=blob, **row))
                pk = res.inserted_primary_key
                assert pk is not None
                log_ids.append(int(pk[0]))
        with self._lock:
            for lid, db_id in new_ids.items():
                self._db_ids[lid] = db_id
                self._local_of_db[db_id] = lid
        for e, log_id in zip(batch, log_ids, strict=True):
            e.log_id = log_id
        with self._pending_lock:  # append() only adds at the right meanwhile
            for _ in batch:
                self._pending.popleft()
        written = sum(e.count for e in batch)
        self.samples_written_total += written
        return written

    def _create_series(self, conn: Connection, lids: list[int]) -> dict[int, int]:
        """Get-or-create series rows (other nodes may insert the same ones concurrently)."""
        s = schema.series
        keys = {lid: (self._keys[lid][0], labels_json(self._keys[lid][1])) for lid in lids}
        ins = dialect_insert(self.engine.dialect.name, s)
        rows = [{"signal": sig, "labels": lab} for sig, lab in keys.values()]
        conn.execute(ins.on_conflict_do_nothing(index_elements=["signal", "labels"]), rows)
        found: dict[tuple[str, str], int] = {}
        signals = sorted({sig for sig, _ in keys.values()})
        for k in range(0, len(signals), 500):
            q = select(s.c.id, s.c.signal, s.c.labels).where(s.c.signal.in_(signals[k : k + 500]))
            found.update({(r.signal, r.labels): int(r.id) for r in conn.execute(q)})
        return {lid: found[key] for lid, key in keys.items()}

    # -------------------------------------------------------------------- cut
    def flush(self) -> None:
        """Persist the backlog and cut the whole head into chunks (e.g. on SIGTERM)."""
        with self._write_lock:
            try:
                self._persist_pending()
                self._cut(force=True)
            except _DB_ERRORS as exc:
                self.write_errors[write_error_reason(exc)] += 1
                raise StoreUnavailable(f"store flush failed: {_reason(exc)}") from exc
            self._evict()

    def _cut(self, *, force: bool) -> None:
        with self._lock:
            boundary = self._newest_ms // self._span_ms * self._span_ms
            chosen = [
                e
                for e in self._entries
                if e.log_id is not None and (force or e.t_max < boundary)
            ]
        if not chosen:
            return
        level = self._level
        rows: list[tuple[int, int, int, int, bytes]] = []
        chunk_lids: list[I64Array] = []
        chunk_tmin: list[I64Array] = []
        chunk_tmax: list[I64Array] = []
        for lids, ts, vals in cut_slices(chosen, self._span_ms):
            win = ts // self._span_ms
            cuts = np.flatnonzero((lids[1:] != lids[:-1]) | (win[1:] != win[:-1])) + 1
            starts = np.concatenate(([0], cuts))
            ends = np.concatenate((cuts, [lids.size]))
            chunk_lids.append(lids[starts])
            chunk_tmin.append(ts[starts])
            chunk_tmax.append(ts[ends - 1])
            db_ids = self._db_ids[lids[starts]].tolist()
            for a, b, sid in zip(starts.tolist(), ends.tolist(), db_ids, strict=True):
                t = ts[a:b]
                rows.append(
                    (sid, int(t[0]), int(t[-1]), b - a, codec.encode_chunk(t, vals[a:b], level))
                )
        t_min, t_max = np.concatenate(chunk_tmin), np.concatenate(chunk_tmax)
        block = Block(np.concatenate(chunk_lids), t_min, t_max, [r[4] for r in rows],
                      int(t_min.min()), int(t_max.max()))
        log_ids = sorted({e.log_id for e in chosen if e.log_id is not None})
        hl = schema.head_log
        with self._cut_lock:
            with self._begin_write() as conn:
                self._insert_chunks(conn, rows)
                for k in range(0, len(log_ids), 500):
                    conn.execute(delete(hl).where(hl.c.id.in_(log_ids[k : k + 500])))
            cut = {id(e) for e in chosen}
            with self._lock:  # one swap: a query sees each sample in exactly one place
                self._entries = deque(e for e in self._entries if id(e) not in cut)
                self._blocks.append(block)
        self.chunks_written_total += len(rows)

    def _insert_chunks(
        self, conn: Connection, rows: list[tuple[int, int, int, int, bytes]]
    ) -> None:
        if self._pg:  # binary COPY: ~2.7x executemany on PostgreSQL
            raw: Any = conn.connection.dbapi_connection
            sql = "COPY chunks (series_id, t_min, t_max, count, data) FROM STDIN (FORMAT BINARY)"
            with raw.cursor() as cur, cur.copy(sql) as copy:
                copy.set_types(["int8", "int8", "int8", "int4", "bytea"])
                for row in rows:
                    copy.write_row(row)
        else:
            conn.exec_driver_sql(
                "INSERT INTO chunks (series_id, t_min, t_max, count, data) VALUES (?, ?, ?, ?, ?)",
                rows,
            )

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

        Matchers are exact label equalities. A window that the in-memory head covers
        is answered without touching the database; otherwise chunks are read and
        merged with the head. Series without samples in the range are left out.
        """
        lo = _I64_MIN if start == -math.inf else math.floor(start * 1000) - 1
        hi = _I64_MAX if end == math.inf else math.ceil(end * 1000) + 1
        with self._lock:
            local = [
                lid
                for lid in self._by_signal.get(signal, ())
                if _matches(self._keys[lid][1], matchers)
            ]
            in_memory = bool(local) and lo >= self._cover_ms
            if in_memory:
                snap = list(self._entries)
                blocks = list(self._blocks)
                keys = [self._keys[lid][1] for lid in local]
        if in_memory:
            got = Gathered()
            got.add_blocks(blocks, local, lo, hi)
            got.add_head(snap, local, lo, hi)
            return got.to_series(signal, keys, start, end)

        def read_db() -> tuple[Any, ...]:
            with self._cut_lock:
                db_series, chunk_rows = self._read_chunks(signal, matchers, lo, hi)
                with self._lock:
                    snap = list(self._entries)
                    by_labels = {self._keys[lid][1]: lid for lid in local}
                    for db_id, labels in db_series:
                        lid = self._local_of_db.get(db_id)
                        by_labels.setdefault(labels, -1 if lid is None else lid)
            return db_series, chunk_rows, snap, by_labels

        try:
            db_series, chunk_rows, snap, by_labels = self._db_read(read_db)
        except _DB_ERRORS as exc:
            raise StoreUnavailable(f"store not readable: {_reason(exc)}") from exc
        keys = sorted(by_labels)
        position = {labels: i for i, labels in enumerate(keys)}
        target_of_db = {db_id: position[labels] for db_id, labels in db_series}
        lids = [by_labels[k] for k in keys]
        got = Gathered()
        got.add_chunks(chunk_rows, target_of_db)
        got.add_head(snap, lids, lo, hi)
        return got.to_series(signal, keys, start, end)

    def _read_chunks(
        self, signal: str, matchers: Mapping[str, str] | None, lo: int, hi: int
    ) -> tuple[list[tuple[int, Labels]], list[tuple[int, bytes]]]:
        s, c = schema.series, schema.chunks
        with self.engine.connect() as conn:
            db_series = []
            for r in conn.execute(select(s.c.id, s.c.labels).where(s.c.signal == signal)):
                labels = tuple(sorted(json.loads(r.labels).items()))
                if _matches(labels, matchers):
                    db_series.append((int(r.id), labels))
            ids = [i for i, _ in db_series]
            rows: list[tuple[int, bytes]] = []
            lo_tmin = max(lo - MAX_CHUNK_SPAN_MS, _I64_MIN)
            for k in range(0, len(ids), 500):
                q = (
                    select(c.c.series_id, c.c.data)
                    .where(c.c.series_id.in_(ids[k : k + 500]))
                    .where(c.c.t_min >= lo_tmin, c.c.t_min <= hi, c.c.t_max >= lo)
                    .order_by(c.c.series_id, c.c.t_min)
                )
                rows.extend((int(r.series_id), bytes(r.data)) for r in conn.execute(q))
        return db_series, rows

    def latest(self, signal: str, matchers: Mapping[str, str] | None = None) -> list[Sample]:
        """The newest sample of each matching series held in the in-memory head.

        Only the head is consulted (no database round trip per scrape): a series this
        node has not written within the memory window is stale and left out.
        """
        with self._lock:
            local = sorted(
                lid
                for lid in self._by_signal.get(signal, ())
                if _matches(self._keys[lid][1], matchers)
            )
            keys = {lid: self._keys[lid][1] for lid in local}
            entries = list(self._entries)
            blocks = list(self._blocks)
        got = newest(entries[::-1], blocks[::-1], local)
        return [
            Sample(signal, keys[lid], got[lid][1], got[lid][0] / 1000.0)
            for lid in sorted(got, key=lambda lid: keys[lid])
        ]

    def series(self, signal: str | None = None) -> list[tuple[str, Labels]]:
        """Every known (signal, labels), from the database and this node's head."""
        s = schema.series
        q = select(s.c.signal, s.c.labels)
        if signal is not None:
            q = q.where(s.c.signal == signal)
        def read_db() -> set[SeriesKey]:
            with self.engine.connect() as conn:
                return {
                    (r.signal, tuple(sorted(json.loads(r.labels).items()))) for r in conn.execute(q)
                }

        try:
            found = self._db_read(read_db)
        except _DB_ERRORS as exc:
            raise StoreUnavailable(f"store not readable: {_reason(exc)}") from exc
        with self._lock:
            found.update(k for k in self._keys if signal is None or k[0] == signal)
        return sorted(found)

    # -------------------------------------------------------------- lifecycle
    def apply_retention(
        self, now: float, retention_seconds: float, *, batch_size: int = 1000
    ) -> int:
        """Delete chunks and rollups older than the retention, in short batches."""
        try:
            return _retention.apply_retention(
                self._begin_write, now, retention_seconds, batch_size=batch_size
            )
        except _DB_ERRORS as exc:
            raise StoreUnavailable(f"retention failed: {_reason(exc)}") from exc

    def close(self) -> None:
        """Persist what is pending (best effort) and release connections; idempotent."""
        if self._closed:
            return
        with self._write_lock:
            try:
                self._persist_pending()
            except _DB_ERRORS as exc:
                log.warning(
                    "closing with %d samples not persisted: %s", self.pending_samples, _reason(exc)
                )
            self._closed = True
            self.engine.dispose()
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_error_reason(exc: BaseException) -> str:
    """The ``reason`` label a failed write is counted under.

    ``timeout``: the database did not answer in time (PostgreSQL statement or lock
    timeout, SQLite busy past busy_timeout counts as ``locked``); ``unavailable``: no
    connection; ``disk_full``; ``error``: anything else (a bug or a schema problem).
    """
    text = str(getattr(exc, "orig", None) or exc).lower()
    if isinstance(exc, TimeoutError) or "timeout" in text or "timed out" in text or (
            "canceling statement" in text):
        return "timeout"
    if "database is locked" in text or "database is busy" in text:
        return "locked"
    if "disk is full" in text or "no space left" in text or "disk full" in text:
        return "disk_full"
    if "connect" in text or "server closed" in text or "terminating connection" in text or (
            "shutting down" in text or "starting up" in text):
        return "unavailable"
    return "error"


def _reason(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    return (
        str(orig if orig is not None else exc).strip().splitlines()[0]
        if str(exc)
        else type(exc).__name__
    )
