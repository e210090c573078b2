"""Alert state that survives a restart: the store's ``alerts`` table.

Why: without it a daemon restart (upgrade, OOM kill, SIGKILL by systemd) forgets
every firing alert, so the incident is either re-fired (a second page for the same
problem) or never resolved (receivers keep a ghost). Prometheus solves the same
problem with the ``ALERTS_FOR_STATE`` series; here the rows of the ``alerts`` table,
one per instance keyed by fingerprint, play that part.

What is written, when: after an evaluation, the instances the engine created or
transitioned (``RuleEngine.take_changes``) are upserted and dropped ones deleted, in
one transaction; every ``heartbeat`` seconds all live instances are rewritten too, so
``value``/``annotations``/``updated_at`` stay roughly current for anyone reading the
table. A failed write keeps the changes queued (merged, newest wins) and retries on
the next cycle; the failure is logged once until a write succeeds again. In the daemon
the two halves run on different threads: :meth:`AlertStatePersister.collect` on the
collection loop (memory only) and :meth:`AlertStatePersister.flush` on the store's
writer thread, so a database that hangs never holds up rule evaluation. The upsert
is ``INSERT .. ON CONFLICT (fingerprint) DO UPDATE``, which SQLite and PostgreSQL
spell the same way through SQLAlchemy Core.

What is read, when: once at start (retried each cycle until it works), this node's
instances (``labels.node``; the table may be shared by a fleet on PostgreSQL).
Pending instances not refreshed for ``outage_tolerance`` (default 1 h, as Prometheus'
``--rules.alert.for-outage-tolerance``) are not restored: after such a gap the ``for``
clock must start again. ``keep_firing_since`` has no column and is not restored: an
alert restored inside its keep-firing window keeps firing up to one more
``keep_firing_for``, erring on the side of not resolving early.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, Table, delete, select
from sqlalchemy.exc import SQLAlchemyError

from gpuwarden.alerts.alert import Alert, AlertState
from gpuwarden.storage import schema
from gpuwarden.storage.engine import dialect_insert

if TYPE_CHECKING:
    from gpuwarden.alerts.engine import RuleEngine

log = logging.getLogger(__name__)

OUTAGE_TOLERANCE = 3600.0
HEARTBEAT = 60.0
_DB_ERRORS = (SQLAlchemyError, OSError, TimeoutError)
_COLUMNS = ("rule", "labels", "annotations", "state", "value", "active_at", "fired_at",
            "resolved_at", "updated_at")


def _row(alert: Alert, now: float) -> dict[str, object]:
    return {
        "fingerprint": alert.fingerprint,
        "rule": alert.name,
        "labels": json.dumps(dict(alert.labels), sort_keys=True, separators=(",", ":")),
        "annotations": json.dumps(alert.annotations, sort_keys=True, separators=(",", ":")),
        "state": str(alert.state),
        "value": alert.value if alert.value == alert.value else None,  # NaN -> NULL
        "active_at": alert.active_at,
        "fired_at": alert.fired_at,
        "resolved_at": alert.resolved_at,
        "updated_at": now,
    }


class AlertStateStore:
    """Reads and writes one node's alert instances in the ``alerts`` table (or, with
    ``node=None``, every instance of ``table``: the fleet's, ``gpuwarden/fleet/``)."""

    def __init__(self, engine: Engine, node: str | None, table: Table = schema.alerts) -> None:
        self.engine = engine
        self.node = node
        self.table = table

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        # ``gw_write`` makes the store's SQLite engine BEGIN IMMEDIATE, so the
        # busy_timeout applies instead of an instant SQLITE_BUSY on lock upgrade.
        with self.engine.connect() as conn:
            conn.execution_options(gw_write=True)
            with conn.begin():
                self._fence(conn)
                yield conn

    def _fence(self, conn: Connection) -> None:
        """Raise to refuse a write inside its transaction (the fleet leader's check)."""

    def load(self) -> list[tuple[Alert, float]]:
        """This node's instances with their ``updated_at``; raises on a DB error."""
        t = self.table
        out: list[tuple[Alert, float]] = []
        with self.engine.connect() as conn:
            for r in conn.execute(select(t).order_by(t.c.fingerprint)):
                labels = json.loads(r.labels)
                if self.node is not None and labels.get("node") != self.node:
                    continue
                try:
                    state = AlertState(r.state)
                except ValueError:
                    continue
                value = r.value if r.value is not None else float("nan")
                alert = Alert(
                    name=r.rule, labels=tuple(sorted(labels.items())),
                    annotations=dict(json.loads(r.annotations)), state=state, value=value,
                    active_at=r.active_at if r.active_at is not None else r.updated_at,
                    fired_at=r.fired_at, resolved_at=r.resolved_at,
                    fingerprint=r.fingerprint,
                )
                out.append((alert, float(r.updated_at)))
        return out

    def save(self, upserts: list[Alert], deletes: list[str], now: float) -> None:
        """Upsert and delete in one transaction; raises on a DB error."""
        if not upserts and not deletes:
            return
        t = self.table
        with self._write() as conn:
            if deletes:
                for k in range(0, len(deletes), 500):
                    conn.execute(delete(t).where(t.c.fingerprint.in_(deletes[k:k + 500])))
            if upserts:
                ins = dialect_insert(self.engine.dialect.name, t)
                stmt = ins.on_conflict_do_update(
                    index_elements=[t.c.fingerprint],
                    set_={c: ins.excluded[c] for c in _COLUMNS},
                )
                conn.execute(stmt, [_row(a, now) for a in upserts])


class AlertStatePersister:
    """Keeps a :class:`RuleEngine`'s instances in the store; survives store outages."""

    def __init__(
        self,
        state_store: AlertStateStore,
        *,
        heartbeat: float = HEARTBEAT,
        outage_tolerance: float = OUTAGE_TOLERANCE,
    ) -> None:
        self.state_store = state_store
        self.heartbeat = heartbeat
        self.outage_tolerance = outage_tolerance
        self.restored = False
        self.errors_total = 0
        self._upserts: dict[str, Alert] = {}
        self._deletes: set[str] = set()
        self._last_heartbeat: float | None = None
        self._now = 0.0
        self._failing = False
        self._lock = threading.Lock()  # collect() and flush() run on different threads

    def restore(self, engine: RuleEngine, now: float) -> bool:
        """Load this node's instances into ``engine`` once; False (retry later) on error."""
        if self.restored:
            return True
        try:
            rows = self.state_store.load()
        except _DB_ERRORS as exc:
            self._failed("cannot load alert state (will retry next cycle)", exc)
            return False
        keep: list[Alert] = []
        for alert, updated_at in rows:
            if alert.state is AlertState.PENDING and now - updated_at > self.outage_tolerance:
                self._deletes.add(alert.fingerprint)
                continue
            keep.append(alert)
        adopted = engine.restore(keep)
        self.restored = True
        if adopted:
            firing = sum(a.state is AlertState.FIRING for a in keep)
            log.info("restored %d alert instances (%d firing) from the store", adopted, firing)
        return True

    def sync(self, engine: RuleEngine, now: float) -> bool:
        """Write what changed since the last successful write; False if it failed."""
        if not self.restored:
            self.restore(engine, now)
        self.collect(engine, now)
        return self.flush()

    def collect(self, engine: RuleEngine, now: float) -> None:
        """Take the engine's changes into the write queue (memory only, cheap)."""
        changed, dropped = engine.take_changes()
        heartbeat = self._last_heartbeat is None or now - self._last_heartbeat >= self.heartbeat
        live = engine.alerts() if heartbeat else []
        with self._lock:
            for alert in changed:
                self._upserts[alert.fingerprint] = alert
                self._deletes.discard(alert.fingerprint)
            for fp in dropped:
                self._upserts.pop(fp, None)
                self._deletes.add(fp)
            for alert in live:
                self._upserts.setdefault(alert.fingerprint, alert)
            if heartbeat:  # a failed write keeps these queued: no need to redo it sooner
                self._last_heartbeat = now
            self._now = now

    def flush(self) -> bool:
        """Write the queued changes in one transaction; on failure keep them (newer
        changes queued meanwhile win) and return False. May block as long as the
        database does: the daemon calls it on the store's writer thread."""
        with self._lock:
            if not self._upserts and not self._deletes:
                return True
            upserts, deletes, now = self._upserts, self._deletes, self._now
            self._upserts, self._deletes = {}, set()
        try:
            self.state_store.save([a for _, a in sorted(upserts.items())], sorted(deletes), now)
        except _DB_ERRORS as exc:
            with self._lock:
                for fp, alert in upserts.items():
                    if fp not in self._upserts and fp not in self._deletes:
                        self._upserts[fp] = alert
                for fp in deletes:
                    if fp not in self._upserts:
                        self._deletes.add(fp)
            self._failed("cannot write alert state (kept in memory, retried next cycle)", exc)
            return False
        if self._failing:
            self._failing = False
            log.info("alert state written to the store again")
        return True

    @property
    def pending_writes(self) -> int:
        with self._lock:
            return len(self._upserts) + len(self._deletes)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.errors_total += 1
        if not self._failing:
            self._failing = True
            log.warning("%s: %s", what, str(exc).strip().splitlines()[0] if str(exc) else exc)
