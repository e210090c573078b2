"""One action's delivery thread: attempts, retries, ordering per alert, supersession.

A receiver (``base.py``) makes one attempt; the :class:`DeliveryWorker` decides when the
next one is due (the :class:`~gpuwarden.alerts.receivers.base.RetryPolicy` schedule) and
reports every attempt to its host, the dispatcher (``alerts/dispatch.py``), for the audit
trail and dead letters, so every receiver gets the same guard rails.

Ordering and supersession: per action and alert (fingerprint), notices leave in the
order they were made; a backoff holds up only the alerts of the delivery in backoff. A
notice for an alert whose firing is still waiting (queued, or in backoff) supersedes that
firing: the firing's entry is dropped and audited ``superseded``, and the backoff is cut
short. A resolved notice that supersedes a firing the receiver never got (no attempt
made, or every attempt failed before a connection existed: refused, unreachable) is
dropped as well, as Alertmanager sends a resolved only for a notified firing: the
receiver saw nothing, so there is nothing to resolve. If any attempt may have reached it
(an HTTP answer, a timeout, an attempt in flight), the resolved is sent, at once. A
firing that was already dead-lettered is not pending any more: its resolved is sent (a
lone resolved is harmless, a missing one leaves the receiver believing the alert fires).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from gpuwarden.alerts.payload import delivery_id
from gpuwarden.alerts.receivers.base import Delivery, Receiver, RetryPolicy

if TYPE_CHECKING:
    from gpuwarden.alerts.action import ActionConfig

log = logging.getLogger(__name__)


class WorkerHost(Protocol):
    """What a :class:`DeliveryWorker` reports to (the dispatcher)."""

    retry: RetryPolicy
    #: Set when the workers are to exit once their queue is empty; the host then
    #: notifies every worker's ``cv`` (an idle worker waits on it without a timeout).
    workers_exit: threading.Event

    def clock(self) -> float: ...
    def wait(self, cv: threading.Condition, seconds: float) -> None: ...
    def is_stopping(self) -> bool: ...
    def is_disabled(self, name: str) -> bool: ...
    def count(self, action: str, result: str, n: int = 1) -> None: ...
    def record_delivery(self, action: str, d: Delivery, result: str, *,
                        http_status: int | None = None, attempt: int | None = None,
                        reason: str | None = None,
                        detail: Mapping[str, Any] | None = None) -> None: ...
    def dead_letter(self, action: ActionConfig, d: Delivery, attempts: int,
                    error: str | None, *, http_status: int | None = None) -> None: ...
    def disable(self, action: ActionConfig, error: str | None) -> None: ...
    def delivered(self, action: ActionConfig, d: Delivery) -> None: ...
    def past_deadline(self) -> bool: ...


RESOLVED_FIRST = "resolved before it was delivered"
REPLACED = "replaced by a newer notice of the same alert before it was delivered"
NEVER_SEEN = ("the receiver never got the firing (it was not delivered before the alert "
              "resolved): nothing to resolve")


@dataclass(slots=True, eq=False)
class Pending:
    """A delivery waiting for its first or next attempt, with its retry state."""

    delivery: Delivery
    due: float = 0.0  # clock time of the next attempt (0: now)
    attempt: int = 0  # attempts made so far
    started: float | None = None  # clock time of the first attempt
    reached: bool = False  # some attempt may have reached the receiver
    sending: bool = False  # an attempt is in flight (its outcome is unknown)
    cut: dict[str, str] = field(default_factory=dict)  # fingerprint -> why superseded

    @property
    def keys(self) -> frozenset[str]:
        """Fingerprints whose order this delivery takes part in (resends: none)."""
        return frozenset() if self.delivery.resend else frozenset(self.delivery.fingerprints)


def without(d: Delivery, fingerprints: Collection[str]) -> tuple[Delivery | None, Delivery | None]:
    """``d`` split into (the alerts in ``fingerprints``, the rest); None for an empty
    part. The rest is a different body, so it gets its own delivery id."""
    cut = tuple(a for a in d.alerts if a["fingerprint"] in fingerprints)
    rest = tuple(a for a in d.alerts if a["fingerprint"] not in fingerprints)
    if not cut:
        return None, d
    if not rest:
        return d, None
    return (dataclasses.replace(d, alerts=cut),
            dataclasses.replace(d, alerts=rest, id=delivery_id(d.action, d.status, list(rest))))


class DeliveryWorker:
    """One action's delivery thread: attempts, retries on the policy's schedule, ordering
    per alert, supersession, and the final verdict (sent, dead letter, superseded).

    Everything waiting (new deliveries and those in backoff) is one list in arrival
    order. The next attempt goes to the first entry that is due and shares no
    fingerprint with an earlier entry: notices of one alert leave in the order they were
    made, while a backoff holds up only the alerts it concerns. A notice for an alert
    whose firing is still waiting supersedes that firing (see the module doc), and the
    backoff waits on the same condition that :meth:`put` signals, so the superseding
    notice goes out at once.

    Decisions about *whether* to deliver live in the dispatcher (its ``host``); this
    only drives the receiver and reports every attempt back through the host.
    """

    def __init__(self, host: WorkerHost, action: ActionConfig, receiver: Receiver) -> None:
        self.host = host
        self.action = action
        self.receiver = receiver
        self.pending: list[Pending] = []
        self.cv = threading.Condition()
        self.busy = False
        self.thread = threading.Thread(target=self.run, name=f"gpuwarden-action-{action.name}",
                                       daemon=True)
        self._last_resend_log = 0.0

    @property
    def queue(self) -> list[Pending]:  # what metrics and wait_idle look at
        return self.pending

    def put(self, delivery: Delivery) -> None:
        notes: list[tuple[Delivery, str]] = []
        with self.cv:
            d: Delivery | None = delivery
            if not delivery.resend:
                d = self._supersede(delivery, notes)
            if d is not None:
                self.pending.append(Pending(d))
            self.cv.notify_all()
        self._note(notes)

    def _supersede(self, new: Delivery, notes: list[tuple[Delivery, str]]) -> Delivery | None:
        """Drop the firings of ``new``'s alerts that are still waiting (under ``cv``);
        a resolved notice for a firing the receiver never got is dropped as well."""
        fps = set(new.fingerprints)
        reason = RESOLVED_FIRST if new.status == "resolved" else REPLACED
        unseen: set[str] = set()
        for p in list(self.pending):
            d = p.delivery
            if d.resend or d.status != "firing":
                continue
            hit = fps.intersection(d.fingerprints) - p.cut.keys()
            if not hit:
                continue
            if not (p.reached or p.sending):
                unseen |= hit
            if p.sending:  # the worker applies it when the attempt fails
                p.cut.update(dict.fromkeys(hit, reason))
                continue
            cut, rest = without(d, hit)
            if cut is not None:
                notes.append((cut, reason))
            if rest is None:
                self.pending.remove(p)
            else:
                p.delivery = rest
        if new.status == "resolved" and unseen:
            cut, rest = without(new, unseen)
            if cut is not None:
                notes.append((cut, NEVER_SEEN))
            return rest
        return new

    def _note(self, notes: list[tuple[Delivery, str]]) -> None:
        for d, reason in notes:
            self.host.record_delivery(self.action.name, d, "superseded", reason=reason)

    def run(self) -> None:
        while True:
            with self.cv:
                p = self._next()
                if p is None:
                    return
            try:
                self._work(p)
            except Exception:  # one catch-all per job (convention 9): log, count, carry on
                log.exception("action %s: delivery %s failed unexpectedly", self.action.name,
                              p.delivery.id)
                self.host.count(self.action.name, "failed")
                self._done(p)
            finally:
                with self.cv:
                    p.sending = False
                    self.busy = False
                    self.cv.notify_all()

    def _next(self) -> Pending | None:
        """The next entry to attempt (under ``cv``); None when the worker should exit."""
        while True:
            if not self.pending:
                if self.host.workers_exit.is_set():
                    return None
                # No timeout: put() notifies, and so does the host after setting
                # workers_exit; an idle worker costs nothing until then.
                self.cv.wait()
                continue
            now, stopping = self.host.clock(), self.host.is_stopping()
            taken: set[str] = set()
            soonest: float | None = None
            for p in self.pending:
                if not p.keys & taken:
                    if stopping or p.due <= now:
                        p.sending = True
                        self.busy = True
                        return p
                    soonest = p.due if soonest is None else min(soonest, p.due)
                taken |= p.keys
            if soonest is None:  # cannot happen: the first entry is never held up
                self.cv.wait(0.5)
            else:
                self.host.wait(self.cv, soonest - now)  # put() and stop() cut it short

    def _done(self, p: Pending) -> None:
        with self.cv:
            if p in self.pending:
                self.pending.remove(p)
            self.cv.notify_all()

    def _apply_cut(self, p: Pending) -> Delivery | None:
        """Drop what was superseded while an attempt was in flight; None when nothing is
        left (the entry is then done)."""
        notes: list[tuple[Delivery, str]] = []
        with self.cv:
            if p.cut:
                for fp, why in sorted(p.cut.items()):
                    cut, rest = without(p.delivery, (fp,))
                    if cut is not None:
                        notes.append((cut, why))
                    if rest is None:
                        break
                    p.delivery = rest
                else:
                    rest = p.delivery
                p.cut.clear()
                if rest is None:
                    self.pending.remove(p)
            d = p.delivery if p in self.pending else None
        self._note(notes)
        return d

    def _work(self, p: Pending) -> None:
        name, host = self.action.name, self.host
        d = self._apply_cut(p)
        if d is None:
            return
        if self.action.dry_run or host.is_disabled(name) or d.resend:
            self._done(p)
            self._once(d)
            return
        if p.attempt and host.is_stopping():
            self._done(p)
            host.dead_letter(self.action, d, p.attempt, "stopped while retrying")
            return
        if host.past_deadline():
            self._done(p)
            host.dead_letter(self.action, d, p.attempt, "not delivered before shutdown")
            return
        if p.started is None:
            p.started = host.clock()
        p.attempt += 1
        out = self.receiver.send(d)
        with self.cv:
            p.sending = False
            p.reached = p.reached or out.reached
            if out.ok:
                p.cut.clear()  # delivered whole: the superseding notice follows it
        if out.ok:
            self._done(p)
            host.record_delivery(name, d, "sent", http_status=out.http_status,
                                 attempt=p.attempt)
            host.delivered(self.action, d)
            return
        if out.disable:
            host.disable(self.action, out.error)
            host.record_delivery(name, d, "disabled", http_status=out.http_status,
                                 attempt=p.attempt,
                                 reason="HTTP 410 Gone: endpoint disabled until restart")
        delay = None
        if out.retryable and not host.is_stopping():
            delay = host.retry.next_delay(p.attempt, host.clock() - p.started,
                                          self.action.retry_for, out.retry_after)
        if not out.disable:
            reason = out.error or "failed"
            if delay is not None:
                reason += f"; retrying in {delay:.2f}s"
            host.record_delivery(name, d, "failed", http_status=out.http_status,
                                 attempt=p.attempt, reason=reason)
        left = self._apply_cut(p)
        if left is None:
            return
        if delay is None:
            self._done(p)
            host.dead_letter(self.action, left, p.attempt, out.error,
                             http_status=out.http_status)
            return
        with self.cv:
            p.due = host.clock() + delay

    def _once(self, d: Delivery) -> None:
        """Dry runs, disabled endpoints and Alertmanager refreshes: no retries."""
        name, host = self.action.name, self.host
        if self.action.dry_run:
            if not d.resend:
                host.record_delivery(name, d, "dry_run", detail=self.receiver.describe(d))
            return
        if host.is_disabled(name):
            if not d.resend:
                host.record_delivery(name, d, "disabled", reason="endpoint disabled after HTTP 410")
            return
        out = self.receiver.send(d)
        host.count(name, "resent" if out.ok else "resend_failed")
        if out.disable:
            host.disable(self.action, out.error)
        elif not out.ok and time.monotonic() - self._last_resend_log > 60:
            self._last_resend_log = time.monotonic()
            log.warning("action %s: Alertmanager resend failed: %s", name, out.error)
