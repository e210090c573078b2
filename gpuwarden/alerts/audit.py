"""The audit trail of alert actions, the dead-letter table, and ``gpuwarden audit``.

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

A write that fails (a locked SQLite, a PostgreSQL outage) is retried once, then logged
and counted: auditing must never stop delivery.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from gpuwarden.alerts.commands import AUDIT_RESULTS
from gpuwarden.storage import schema
from gpuwarden.storage.store import write_transaction as write_tx

log = logging.getLogger(__name__)

RESULTS = AUDIT_RESULTS


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


class AuditLog:
    """Append-only audit rows and dead letters over the store's engine (thread-safe)."""

    def __init__(self, engine: Engine, *, clock: Any = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self.errors_total = 0
        self._lock = threading.Lock()
        self._last_error_log = 0.0

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
        self._write(lambda conn: conn.execute(insert(schema.audit).values(**row)))

    def add_dead_letter(self, *, action: str, fingerprint: str | None, payload: str,
                        last_error: str | None, attempts: int) -> int | None:
        values = {"ts": self.clock(), "action": action, "fingerprint": fingerprint,
                  "payload": payload, "last_error": last_error, "attempts": attempts}
        ids: list[int] = []

        def do(conn: Connection) -> None:
            res = conn.execute(insert(schema.dead_letters).values(**values))
            pk = res.inserted_primary_key
            if pk is not None:
                ids.append(int(pk[0]))

        self._write(do)
        return ids[0] if ids else None

    def mark_replayed(self, letter_id: int, *, attempts: int, ok: bool,
                      last_error: str | None) -> None:
        dl = schema.dead_letters
        values: dict[str, Any] = {"attempts": dl.c.attempts + attempts,
                                  "last_error": last_error}
        if ok:
            values["replayed_at"] = self.clock()
        self._write(lambda conn: conn.execute(
            update(dl).where(dl.c.id == letter_id).values(**values)))

    def _write(self, fn: Any) -> bool:
        for attempt in (1, 2):
            try:
                with write_tx(self.engine) as conn:
                    fn(conn)
                return True
            except SQLAlchemyError as exc:
                if attempt == 1:
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.errors_total += 1
                    now = time.monotonic()
                    quiet = now - self._last_error_log < 60
                    if not quiet:
                        self._last_error_log = now
                if not quiet:
                    log.error("audit/dead-letter write failed (%d so far): %s",
                              self.errors_total, type(exc).__name__)
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


# --- CLI --------------------------------------------------------------------------------


def open_engine(url: str) -> Engine:
    """An engine for the configured store, set up like the daemon's, tables ensured.

    The CLI does not open a full :class:`Store` (that replays the head log); it only
    needs the audit tables, and SQLite's WAL lets it read while the daemon writes.
    """
    from sqlalchemy.engine import make_url

    from gpuwarden.errors import StoreError
    from gpuwarden.storage.engine import postgres_engine, sqlite_engine

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sqlite_engine(url, parsed.database, 2000)
    elif parsed.get_backend_name() == "postgresql":
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        engine = postgres_engine(parsed, 2000)
    else:
        raise StoreError(f"unsupported storage URL scheme {parsed.drivername!r}")
    try:
        with write_tx(engine) as conn:
            schema.audit.create(conn, checkfirst=True)
            schema.dead_letters.create(conn, checkfirst=True)
    except SQLAlchemyError as exc:
        engine.dispose()
        raise StoreError(f"cannot open store {parsed.render_as_string(hide_password=True)}: "
                         f"{type(exc).__name__}") from exc
    return engine


def _fmt_ts(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def cmd_audit(args: argparse.Namespace) -> int:
    from gpuwarden.config import load_config
    from gpuwarden.durations import parse_duration
    from gpuwarden.errors import ConfigError, StoreError

    try:
        config = load_config(args.config)
        since = time.time() - parse_duration(args.since)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"--since: {exc}", file=sys.stderr)
        return 2
    try:
        engine = open_engine(config.storage.url)
    except StoreError as exc:
        print(f"storage: {exc}", file=sys.stderr)
        return 2
    try:
        rows = AuditLog(engine).query(since=since, action=args.action, result=args.result,
                                      limit=args.limit)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2))
        return 0
    if not rows:
        print(f"no audit rows since {_fmt_ts(since)}")
        return 0
    for r in rows:
        status = f" http={r.http_status}" if r.http_status is not None else ""
        attempt = f" attempt={r.attempt}" if r.attempt is not None else ""
        reason = f"  ({r.reason})" if r.reason else ""
        print(f"{_fmt_ts(r.ts)}  {r.result:<11} {r.action:<20} {r.target or '-'}"
              f"{status}{attempt}{reason}")
    return 0
