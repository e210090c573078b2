"""The audit trail of alert actions and the dead-letter table.

Why a table and not a log file: "what did gpuwarden do to vllm-0 last night, and why
did it not page me?" must be answerable after a restart and from another machine when
the store is PostgreSQL. Every decision is a row: sent, failed (one per failed
attempt), suppressed (cooldown, budget, inhibition, with the reason), dry_run,
disabled, dead_letter, escalated, replayed, no_action. Rows are only ever appended.

Nothing secret goes in: targets are rule + labels, endpoints are logged as origins,
request headers by name only, and dead letters hold the alert data, never the signed
request (signatures, keys and tokens are added at send time).

The trail is also the dispatcher's memory across restarts: cooldowns, hourly budgets
and "which actions saw this firing" are rebuilt from recent rows (``detail`` holds the
status and delivery id as JSON).

Delivery must not wait on the database. The dispatcher's log is ``background=True``:
``record``, ``add_dead_letter`` and ``mark_replayed`` only append to a bounded queue
(``queue_size`` rows, 10,000 by default, a few MB) that one writer thread drains in
order, up to 500 rows per transaction. A PostgreSQL that hangs (processes stopped: the
TCP connection open, no answer) then stalls only that thread; alerts keep being sent.
A transient failure (connection lost, timeout, locked SQLite) keeps the batch and
retries it with backoff (0.5 s doubling to 30 s), with a warning at most once a minute,
so rows reach the table in the order they were made once the database answers; a
permanent one (a constraint, a bad statement) drops the rows it concerns, with an
error. Rows that do not fit in a full queue are dropped: counted (``dropped_total``,
``errors_total``) and logged at most once a minute. The command line's log
(``gpuwarden audit``, ``actions replay``) writes synchronously (retried once, then
logged and counted).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import (
    DisconnectionError,
    InterfaceError,
    OperationalError,
    SQLAlchemyError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeout

from gpuwarden.storage import schema
from gpuwarden.storage.engine import write_transaction as write_tx

log = logging.getLogger(__name__)

# Errors that say "not now" (connection lost or refused, statement timeout, locked
# SQLite, pool exhausted): the rows are kept and retried. Anything else is about the
# rows themselves and retrying cannot help.
_TRANSIENT = (OperationalError, InterfaceError, DisconnectionError, PoolTimeout)


def target_text(labels: Mapping[str, str]) -> str:
    """``Rule{label="value", ...}``: the rule plus the labels that make the target."""
    name = labels.get("alertname", "")
    rest = ", ".join(f'{k}="{v}"' for k, v in sorted(labels.items()) if k != "alertname")
    return f"{name}{{{rest}}}"


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    ts: float
    action: str
    target: str | None
    fingerprint: str | None
    result: str
    http_status: int | None
    attempt: int | None
    reason: str | None
    detail: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "action": self.action, "target": self.target,
                "fingerprint": self.fingerprint, "result": self.result,
                "http_status": self.http_status, "attempt": self.attempt,
                "reason": self.reason, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: int
    ts: float
    action: str
    fingerprint: str | None
    payload: str
    last_error: str | None
    attempts: int
    replayed_at: float | None


@dataclass(frozen=True, slots=True)
class _Job:
    """A queued row (``write``, run inside the batch's transaction) or a ``call``."""

    write: Callable[[Connection], object] | None
    call: Callable[[], object] | None


def _call(fn: Callable[[], object]) -> None:
    try:
        fn()
    except Exception as exc:  # a read for a gauge: the next one will do
        log.debug("audit trail: deferred call failed: %s", type(exc).__name__)


class AuditLog:
    """Append-only audit rows and dead letters over the store's engine (thread-safe).

    With ``background=True`` writes are queued for a writer thread (see the module
    doc); :meth:`flush` waits for them and :meth:`close` stops the thread.
    """

    BATCH = 500

    def __init__(self, engine: Engine, *, clock: Callable[[], float] = time.time,
                 background: bool = False, queue_size: int = 10_000) -> None:
        self.engine = engine
        self.clock = clock
        self.errors_total = 0
        self.dropped_total = 0
        self._lock = threading.Lock()
        self._last_error_log = 0.0
        self._last_drop_log = 0.0
        self._queue: deque[_Job] = deque()
        self._queue_size = queue_size
        self._cv = threading.Condition()
        self._busy = False
        self._closed = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="gpuwarden-audit",
                                            daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------------- writes
    def record(
        self,
        *,
        action: str,
        result: str,
        labels: Mapping[str, str] | None = None,
        fingerprint: str | None = None,
        http_status: int | None = None,
        attempt: int | None = None,
        reason: str | None = None,
        detail: Mapping[str, Any] | None = None,
        ts: float | None = None,
    ) -> None:
        row = {
            "ts": self.clock() if ts is None else ts,
            "action": action,
            "target": target_text(labels) if labels is not None else None,
            "fingerprint": fingerprint,
            "result": result,
            "http_status": http_status,
            "attempt": attempt,
            "reason": reason,
            "detail": json.dumps(dict(detail), sort_keys=True) if detail else None,
        }
        self._submit(lambda conn: conn.execute(insert(schema.audit).values(**row)))

    def add_dead_letter(self, *, action: str, fingerprint: str | None, payload: str,
                        last_error: str | None, attempts: int) -> int | None:
        """Keep a delivery for replay; its id when written synchronously, else None."""
        values = {"ts": self.clock(), "action": action, "fingerprint": fingerprint,
                  "payload": payload, "last_error": last_error, "attempts": attempts}
        ids: list[int] = []

        def do(conn: Connection) -> None:
            res = conn.execute(insert(schema.dead_letters).values(**values))
            pk = res.inserted_primary_key
            if pk is not None:
                ids.append(int(pk[0]))

        self._submit(do)
        return ids[0] if ids else None

    def mark_replayed(self, letter_id: int, *, attempts: int, ok: bool,
                      last_error: str | None) -> None:
        dl = schema.dead_letters
        values: dict[str, Any] = {"attempts": dl.c.attempts + attempts,
                                  "last_error": last_error}
        if ok:
            values["replayed_at"] = self.clock()
        self._submit(lambda conn: conn.execute(
            update(dl).where(dl.c.id == letter_id).values(**values)))

    def call_later(self, fn: Callable[[], object]) -> bool:
        """Run ``fn`` on the writer thread after the rows queued before it (e.g. a read
        whose answer may come late); at once without a writer. Errors are logged."""
        if self._thread is None:
            _call(fn)
            return True
        return self._enqueue(_Job(None, fn))

    @property
    def queued(self) -> int:
        with self._cv:
            return len(self._queue)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued row is written (or given up); False on timeout."""
        end = time.monotonic() + timeout
        with self._cv:
            while self._queue or self._busy:
                left = end - time.monotonic()
                if left <= 0 or self._thread is None:
                    return not self._queue and not self._busy
                self._cv.wait(left)
        return True

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued within ``timeout``, then stop the writer thread."""
        if self._thread is None:
            return
        self.flush(timeout)
        with self._cv:
            self._closed = True
            self._stop.set()
            left = len(self._queue)
            self._cv.notify_all()
        if left:
            log.error("audit trail: %d rows not written at shutdown (database not answering)",
                      left)
        self._thread.join(0.5)

    def _submit(self, fn: Callable[[Connection], object]) -> None:
        if self._thread is None:
            self._write(fn)
        else:
            self._enqueue(_Job(fn, None))

    def _enqueue(self, job: _Job) -> bool:
        with self._cv:
            if not self._closed and len(self._queue) < self._queue_size:
                self._queue.append(job)
                self._cv.notify_all()
                return True
            self.dropped_total += 1
            dropped = self.dropped_total
            now = time.monotonic()
            loud = now - self._last_drop_log >= 60
            if loud:
                self._last_drop_log = now
        if loud:
            log.error("audit trail queue full (%d rows, database slow or down): dropped a "
                      "row (%d so far)", self._queue_size, dropped)
        return False

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._closed:
                    # No timeout: _enqueue and close notify, and an idle daemon must not
                    # pay for a wake-up every second (a timed wake costs ~0.1 ms of CPU).
                    self._cv.wait()
                if not self._queue:
                    return
                batch: list[_Job] = []
                for job in self._queue:
                    if job.call is not None:
                        batch = batch or [job]
                        break
                    batch.append(job)
                    if len(batch) >= self.BATCH:
                        break
                self._busy = True
            try:
                if batch[0].call is not None:
                    _call(batch[0].call)
                else:
                    self._write_batch([j.write for j in batch if j.write is not None])
            except Exception:  # convention 9: the writer thread never dies
                log.exception("audit writer failed on a batch; carrying on")
            finally:
                with self._cv:
                    for _ in batch:
                        if self._queue:
                            self._queue.popleft()
                    self._busy = False
                    self._cv.notify_all()

    def _write_batch(self, fns: list[Callable[[Connection], object]]) -> None:
        """One transaction for the batch; transient errors retried until it works or the
        log is closed, a permanent one splits the batch so only the bad row is lost."""
        delay = 0.5
        while True:
            try:
                with write_tx(self.engine) as conn:
                    for fn in fns:
                        fn(conn)
                return
            except _TRANSIENT as exc:
                self._failed(exc, len(fns), retrying=True)
                if self._stop.wait(delay):  # not the queue's condition: new rows must
                    return                  # not turn the backoff into a busy retry
                delay = min(30.0, delay * 2)
            except SQLAlchemyError as exc:
                if len(fns) == 1:
                    self._failed(exc, 1, retrying=False)
                    return
                for fn in fns:
                    self._write_batch([fn])
                return

    def _failed(self, exc: BaseException, rows: int, *, retrying: bool) -> None:
        with self._lock:
            if not retrying:
                self.errors_total += rows
            now = time.monotonic()
            loud = now - self._last_error_log >= 60
            if loud:
                self._last_error_log = now
        if not loud:
            return
        # Kept rows are a wait (a SQLite busy with the store's chunk cut, a database
        # restarting), logged like the store's own kept samples; lost rows are an error.
        if retrying:
            log.warning("audit/dead-letter write failed (%s): %d rows kept, retrying",
                        type(exc).__name__, rows)
        else:
            log.error("audit/dead-letter write failed (%s): %d rows lost so far",
                      type(exc).__name__, self.errors_total)

    def _write(self, fn: Callable[[Connection], object]) -> bool:
        for attempt in (1, 2):
            try:
                with write_tx(self.engine) as conn:
                    fn(conn)
                return True
            except SQLAlchemyError as exc:
                if attempt == 1:
                    time.sleep(0.05)
                    continue
                self._failed(exc, 1, retrying=False)
        return False

    # ----------------------------------------------------------------------- reads
    def query(self, *, since: float = 0.0, action: str | None = None,
              result: str | None = None, fingerprint: str | None = None,
              limit: int = 10_000) -> list[AuditRow]:
        a = schema.audit
        q = select(a).where(a.c.ts >= since)
        if action:
            q = q.where(a.c.action == action)
        if result:
            q = q.where(a.c.result == result)
        if fingerprint:
            q = q.where(a.c.fingerprint == fingerprint)
        q = q.order_by(a.c.ts, a.c.id).limit(limit)
        with self.engine.connect() as conn:
            rows = conn.execute(q).all()
        return [AuditRow(id=int(r.id), ts=float(r.ts), action=r.action, target=r.target,
                         fingerprint=r.fingerprint, result=r.result,
                         http_status=r.http_status, attempt=r.attempt, reason=r.reason,
                         detail=json.loads(r.detail) if r.detail else {}) for r in rows]

    def dead_letters(self, ids: Sequence[int] | None = None, *,
                     pending_only: bool = True) -> list[DeadLetter]:
        dl = schema.dead_letters
        q = select(dl)
        if ids is not None:
            q = q.where(dl.c.id.in_(list(ids)))
        elif pending_only:
            q = q.where(dl.c.replayed_at.is_(None))
        with self.engine.connect() as conn:
            rows = conn.execute(q.order_by(dl.c.id)).all()
        return [DeadLetter(id=int(r.id), ts=float(r.ts), action=r.action,
                           fingerprint=r.fingerprint, payload=r.payload,
                           last_error=r.last_error, attempts=int(r.attempts or 0),
                           replayed_at=r.replayed_at) for r in rows]

    def count_dead_letters(self) -> int:
        dl = schema.dead_letters
        with self.engine.connect() as conn:
            n = conn.scalar(select(func.count()).select_from(dl)
                            .where(dl.c.replayed_at.is_(None)))
        return int(n or 0)
