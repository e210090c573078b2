"""What delivery did, counted and written down: the dispatcher's outcomes.

Every decision and every attempt of the dispatcher (``dispatch.py``) and its delivery
workers (``receivers/base.py``) ends here: counted by action and result for
``gpuwarden_actions_total``, and, with a store, appended to the audit trail, one row per
alert (``alerts/audit.py``); a delivery that failed for good is kept as a dead letter
for ``gpuwarden actions replay``. The audit log queues its writes for its own thread,
so nothing here waits on the database; the pending dead letters are re-counted on that
thread too (a replay from the command line lowers the count).

Called from the router and every worker thread: the counters sit under one lock.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from gpuwarden.alerts.action import ActionConfig
from gpuwarden.alerts.alert import Alert
from gpuwarden.alerts.audit import AuditLog, AuditRow
from gpuwarden.alerts.receivers.base import Delivery

log = logging.getLogger(__name__)


class Ledger:
    """Counts per (action, result), audit rows and dead letters (thread-safe)."""

    def __init__(self, audit: AuditLog | None,
                 expected: Iterable[tuple[str, str]] = ()) -> None:
        self.audit = audit
        self._lock = threading.Lock()
        # The (action, result) pairs known in advance count from 0 (``outcomes.py``).
        self._counts: Counter[tuple[str, str]] = Counter(dict.fromkeys(expected, 0))
        self._dead_letters = 0  # pending in the store (or written since start)

    def count(self, action: str, result: str, n: int = 1) -> None:
        with self._lock:
            self._counts[(action, result)] += n

    def counts(self) -> list[tuple[tuple[str, str], int]]:
        """``((action, result), n)`` sorted, for ``gpuwarden_actions_total``."""
        with self._lock:
            return sorted(self._counts.items())

    def alert(self, action: str, alert: Alert, result: str, *, reason: str | None = None,
              detail: Mapping[str, Any] | None = None) -> None:
        """A decision about a firing (suppressed, disabled, escalated, no action)."""
        self.count(action, result)
        if self.audit is not None:
            self.audit.record(action=action, result=result, labels=alert.label_map,
                              fingerprint=alert.fingerprint, reason=reason,
                              detail={"status": "firing", **(detail or {})})

    def delivery(self, action: str, d: Delivery, result: str, *,
                 http_status: int | None = None, attempt: int | None = None,
                 reason: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
        """An attempt or verdict on a delivery: one audit row per alert it carries."""
        self.count(action, result, len(d.alerts))
        if self.audit is None:
            return
        info = {"status": d.status, "delivery": d.id, "alerts": len(d.alerts), **(detail or {})}
        for entry in d.alerts:
            self.audit.record(action=action, result=result, labels=entry["labels"],
                              fingerprint=entry["fingerprint"], http_status=http_status,
                              attempt=attempt, reason=reason, detail=info)

    def dead_letter(self, action: ActionConfig, d: Delivery, attempts: int,
                    error: str | None, *, http_status: int | None = None) -> None:
        """A delivery that failed for good: audited, logged, kept for replay."""
        self.delivery(action.name, d, "dead_letter", attempt=attempts, reason=error)
        log.error("action %s: delivery of %s (%s) failed after %d attempts: %s; kept as a "
                  "dead letter (gpuwarden actions replay)", action.name, d.rule or "alerts",
                  d.status, attempts, error)
        if self.audit is not None:
            fp = d.alerts[0]["fingerprint"] if len(d.alerts) == 1 else None
            meta = {"http_status": http_status} if http_status is not None else None
            self.audit.add_dead_letter(action=action.name, fingerprint=fp,
                                       payload=d.to_json(meta), last_error=error,
                                       attempts=attempts)
        with self._lock:
            self._dead_letters += 1

    def recount_dead_letters(self) -> None:
        """Re-count pending dead letters on the audit writer's thread: a database that
        hangs must not hold up the caller (an error keeps the last count)."""
        audit = self.audit
        if audit is None:
            return

        def count() -> None:
            n = audit.count_dead_letters()
            with self._lock:
                self._dead_letters = n

        audit.call_later(count)

    def read_trail(self, since: float) -> tuple[list[AuditRow], int] | None:
        """The audit rows since ``since`` and the pending dead letters (None: no store,
        or the trail could not be read, which is logged)."""
        if self.audit is None:
            return None
        try:
            rows = self.audit.query(since=since, limit=200_000)
            return rows, self.audit.count_dead_letters()
        except Exception as exc:
            log.warning("cannot read the audit trail to restore guard rails: %s",
                        type(exc).__name__)
            return None

    def restored(self, dead_letters: int) -> None:
        """The dead-letter count as the trail had it at start."""
        with self._lock:
            self._dead_letters = dead_letters

    def pending_dead_letters(self) -> int:
        with self._lock:
            return self._dead_letters
