"""The dispatcher: alert events in, guarded deliveries out, never in the collection cycle.

Why this shape:

* ``submit()`` is what the rule engine calls every cycle. It only appends to a bounded
  queue (when full, the oldest event is dropped, counted and logged), so a receiver
  that hangs for minutes cannot delay collection by a millisecond.
* One *router* thread owns all decisions: firing/resolved state per fingerprint,
  inhibition, cooldown and hourly budget per (action, target), grouping, escalation
  timers and Alertmanager resends. Decisions are cheap and need no locks.
* One *worker* thread per action makes the calls, with retries and backoff, so a slow
  PagerDuty never holds up a Slack message, and a 429 with ``Retry-After`` only parks
  the endpoint that asked for it.

This module is the machinery around them: the event queue, the router's timers and
loop, the life cycle, and what the workers report back. The decisions are in
``routing.py`` (what to send, grouping, resends, escalation) and ``guards.py``
(inhibition, cooldown, hourly budget, who saw a firing); every outcome is counted and
audited by ``ledger.py``; the workers are ``receivers/worker.py``.

Guard rails (as Alertmanager and PagerDuty users expect them): ``cooldown`` and
``max_per_hour`` bound how often an action is *called* for one target (rule + labels =
fingerprint); a firing inside them is audited ``suppressed`` with the reason. Resolved
notices go to every action that was called for the firing. ``dry_run`` audits what
would be sent. Timeouts, connection errors, 429 and 5xx (exec: non-zero exit) are
retried with jittered exponential backoff (0.5 s doubling to 60 s, ``Retry-After``
honoured) for the action's ``retry_for`` (default 15 min; the schedule is in
``receivers/base.py``); other 4xx fail at once; 410 Gone disables the action until
restart. Per action and alert, notices are delivered in order and a resolved notice
supersedes a firing still waiting to be delivered. Anything not delivered lands in
``dead_letters`` for ``gpuwarden actions replay``, which sends only what is still
current.

Delivery never waits on the database: audit rows and dead letters go through the
audit log's bounded queue to its writer thread (``alerts/audit.py``), and the
periodic dead-letter count runs on that thread too. At start the guard rails are
restored from the trail on a thread of its own; the router waits for it at most
``restore_timeout`` (10 s), then starts without them.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gpuwarden.address import DEFAULT_LISTEN
from gpuwarden.alerts.action import ActionConfig
from gpuwarden.alerts.alert import AlertEvent
from gpuwarden.alerts.audit import AuditLog, AuditRow
from gpuwarden.alerts.guards import DEFAULT_INHIBIT, GuardRails, InhibitRule
from gpuwarden.alerts.ledger import Ledger
from gpuwarden.alerts.outcomes import ACTIONS, action_zero_set
from gpuwarden.alerts.payload import external_url
from gpuwarden.alerts.receivers.alertmanager import RESOLVED_RESEND_SECONDS
from gpuwarden.alerts.receivers.base import Delivery, ReceiverContext, RetryPolicy
from gpuwarden.alerts.receivers.registry import build_receiver
from gpuwarden.alerts.receivers.worker import DeliveryWorker
from gpuwarden.alerts.routing import Router, Timer
from gpuwarden.durations import format_duration
from gpuwarden.model import SelfMetric

if TYPE_CHECKING:
    import requests
    from sqlalchemy import Engine

    from gpuwarden.alerts.served_models import ServedModels

log = logging.getLogger(__name__)

#: Longest the router sleeps with nothing due. Timers are on the wall clock and the sleep
#: on the monotonic one: a wall clock stepped forward (NTP) makes a timer due early, seen
#: at most this late. (The dead-letter count's timer wakes it every 60 s anyway.)
MAX_SLEEP_S = 60.0


class Dispatcher:
    """Alert events -> guarded, audited, retried deliveries (see the module doc).

    Built from plain values (the daemon passes its config's ``actions``, ``node``,
    ``listen`` and ``interval``, and its store's engine, None without a store).
    ``submit`` is safe to call from any thread; ``start`` and ``stop`` from one.
    """

    def __init__(
        self,
        actions: Sequence[ActionConfig],
        *,
        engine: Engine | None,
        session: requests.Session | Callable[[], requests.Session],
        node: str,
        listen: str = DEFAULT_LISTEN,
        clock: Callable[[], float] = time.time,
        interval: float = 1.0,
        retry: RetryPolicy | None = None,
        queue_size: int = 10_000,
        am_resend: float = 60.0,
        am_resolved_resend: float = RESOLVED_RESEND_SECONDS,
        served_models: ServedModels | None = None,
        inhibit: Sequence[InhibitRule] = DEFAULT_INHIBIT,
        poll: float | None = None,
        wait: Callable[[threading.Condition, float], object] | None = None,
        audit_queue: int = 10_000,
        restore_timeout: float = 10.0,
    ) -> None:
        self.actions = {a.name: a for a in actions}
        self._clock = clock
        self.retry = retry or RetryPolicy()
        # With the wall clock the router sleeps until the next event, timer or stop
        # (no wake-up when idle: each costs ~0.1 ms of CPU). Another clock may be moved
        # by hand (the tests' FakeTime), which wakes nobody: then the router looks at it
        # every ``poll`` seconds (0.1 unless given).
        self._poll = poll if poll is not None or clock is time.time else 0.1
        self._wait = wait
        self._restore_timeout = restore_timeout
        self.audit = AuditLog(engine, clock=clock, background=True,
                              queue_size=audit_queue) if engine is not None else None
        self.ledger = Ledger(self.audit, expected=action_zero_set(actions))
        self.external_url = external_url(listen, node)
        self.ctx = ReceiverContext(session=session, node=node, external_url=self.external_url,
                                   interval=interval, am_resend=am_resend, clock=clock)
        self._workers = {a.name: DeliveryWorker(self, a, build_receiver(a, self.ctx))
                         for a in actions}
        # Shared between threads (under _cv).
        self._cv = threading.Condition()
        self._events: deque[tuple[AlertEvent, tuple[str, ...] | None]] = deque()
        self._queue_size = queue_size
        self._timers: list[Timer] = []
        self._seq = itertools.count()
        self._disabled: set[str] = set()
        self.dropped_total = 0
        self._stopping = False
        self._deadline: float | None = None
        self.workers_exit = threading.Event()
        self._busy = False
        self._router_thread: threading.Thread | None = None
        self._last_drop_log = 0.0
        # The decisions, made on the router thread only.
        self.router = Router(self.actions, self._workers, guards=GuardRails(inhibit),
                             ledger=self.ledger, clock=self.clock, schedule=self._schedule,
                             is_disabled=self.is_disabled,
                             generator_url=self.external_url + "/api/v1/alerts",
                             am_resend=am_resend, am_resolved_resend=am_resolved_resend,
                             served_models=served_models)

    def clock(self) -> float:
        return self._clock()

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        if self._router_thread is not None:
            return
        # The trail is read on a thread of its own: a database that hangs must not hold
        # up start() (the daemon's start-up) nor, beyond restore_timeout, the router.
        trail: list[tuple[list[AuditRow], int]] = []
        reader = threading.Thread(target=self._read_trail, args=(trail,), daemon=True,
                                  name="gpuwarden-alerts-restore")
        reader.start()
        for w in self._workers.values():
            w.thread.start()
        self._router_thread = threading.Thread(target=self._route_loop, args=(reader, trail),
                                         name="gpuwarden-alerts", daemon=True)
        self._router_thread.start()
        self._schedule(self.clock() + 60.0, "dlcount", None)

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout`` (one try each); dead-letter the rest."""
        if self._router_thread is None:
            return
        end = time.monotonic() + timeout
        with self._cv:
            self._stopping = True
            self._deadline = end
            self._cv.notify_all()
        for w in self._workers.values():  # cut retry backoffs short
            with w.cv:
                w.cv.notify_all()
        self._router_thread.join(max(0.0, end - time.monotonic()))
        self.workers_exit.set()
        for w in self._workers.values():
            with w.cv:
                w.cv.notify_all()
            w.thread.join(max(0.1, end - time.monotonic()))
        if self.audit is not None:  # what the workers just recorded, while time is left
            self.audit.close(max(0.5, end - time.monotonic()))

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Block until every submitted event is decided and delivered (tests, shutdown)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self._cv:
                due = bool(self._timers) and self._timers[0][0] <= self.clock()
                quiet = (not self._events and not self._busy and not self.router.grouping()
                         and not due)
            if quiet and all(not w.queue and not w.busy for w in self._workers.values()):
                return self.audit is None or self.audit.flush(max(0.0, end - time.monotonic()))
            time.sleep(0.01)
        return False

    def past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def is_stopping(self) -> bool:
        return self._stopping

    def wait(self, cv: threading.Condition, seconds: float) -> None:
        """A worker's backoff: ``cv`` is the worker's, held; ``put`` and ``stop`` notify
        it. Tests inject a wait that moves a fake clock instead of sleeping."""
        if self._wait is not None:
            self._wait(cv, seconds)
        else:
            cv.wait(max(0.0, seconds))

    # ---------------------------------------------------------------------- submit
    def submit(self, events: Sequence[AlertEvent],
               rule_actions: Mapping[str, Sequence[str]] | None = None) -> None:
        """Hand over one cycle's events; never blocks on delivery.

        Action names come from ``rule_actions[rule]`` when given, else ``alert.actions``.
        """
        dropped = 0
        with self._cv:
            for ev in events:
                names = tuple(rule_actions[ev.alert.name]) if (
                    rule_actions is not None and ev.alert.name in rule_actions) else None
                if len(self._events) >= self._queue_size:
                    self._events.popleft()
                    dropped += 1
                self._events.append((ev, names))
            self.dropped_total += dropped
            self._cv.notify_all()
        if dropped and time.monotonic() - self._last_drop_log > 10:
            self._last_drop_log = time.monotonic()
            log.error("alert delivery queue full (%d): dropped %d oldest events (%d in all)",
                      self._queue_size, dropped, self.dropped_total)

    __call__ = submit  # daemon.on_alert_events.append(dispatcher)

    # ---------------------------------------------------------------------- router
    def _schedule(self, due: float, kind: str, payload: Any) -> None:
        with self._cv:
            heapq.heappush(self._timers, (due, next(self._seq), kind, payload))
            self._cv.notify_all()

    def _sleep_for(self, now: float) -> float:
        """How long the router may sleep (under ``_cv``, nothing due): until the next
        timer, at most ``poll`` when polling, at most :data:`MAX_SLEEP_S` anyway."""
        sleep = MAX_SLEEP_S if self._poll is None else self._poll
        if self._timers:
            # Not under 5 ms: a wait cut short by float rounding must not spin.
            sleep = min(sleep, max(0.005, self._timers[0][0] - now))
        return sleep

    def _route_loop(self, reader: threading.Thread,
                    trail: list[tuple[list[AuditRow], int]]) -> None:
        reader.join(self._restore_timeout)
        if trail:
            self._restore(*trail[0])
        elif reader.is_alive():
            log.warning("the audit trail did not answer within %s: cooldowns, budgets and "
                        "who saw a firing start empty", format_duration(self._restore_timeout))
        while True:
            with self._cv:
                while True:
                    now = self.clock()
                    due = bool(self._timers) and self._timers[0][0] <= now
                    if self._events or due or self._stopping:
                        break
                    self._cv.wait(self._sleep_for(now))
                events = list(self._events)
                self._events.clear()
                timers = []
                while self._timers and (self._timers[0][0] <= now or self._stopping):
                    timers.append(heapq.heappop(self._timers))
                stopping = self._stopping
                self._busy = True
            try:
                self.router.handle(events, timers, stopping)
            except Exception:  # convention 9: never let the router die
                log.exception("alert router failed on a batch; carrying on")
            finally:
                with self._cv:
                    self._busy = False
            if stopping:
                with self._cv:
                    if not self._events:
                        return

    # ------------------------------------------- what the delivery workers report
    def count(self, action: str, result: str, n: int = 1) -> None:
        self.ledger.count(action, result, n)

    def record_delivery(self, action: str, d: Delivery, result: str, *,
                        http_status: int | None = None, attempt: int | None = None,
                        reason: str | None = None,
                        detail: Mapping[str, Any] | None = None) -> None:
        self.ledger.delivery(action, d, result, http_status=http_status, attempt=attempt,
                             reason=reason, detail=detail)

    def dead_letter(self, action: ActionConfig, d: Delivery, attempts: int,
                    error: str | None, *, http_status: int | None = None) -> None:
        self.ledger.dead_letter(action, d, attempts, error, http_status=http_status)

    def disable(self, action: ActionConfig, error: str | None) -> None:
        with self._cv:
            if action.name in self._disabled:
                return
            self._disabled.add(action.name)
        log.error("ACTION %s DISABLED: its endpoint %s answered %s; no further calls until "
                  "gpuwarden restarts (fix or remove the action)", action.name,
                  self._workers[action.name].receiver.endpoint(), error or "410 Gone")

    def delivered(self, action: ActionConfig, d: Delivery) -> None:
        """A worker's success: the router schedules verification (escalation)."""
        self._schedule(self.clock(), "sent", (action, d))

    def is_disabled(self, name: str) -> bool:
        with self._cv:
            return name in self._disabled

    # ------------------------------------------------------- the trail at start
    def _read_trail(self, out: list[tuple[list[AuditRow], int]]) -> None:
        """The last day's audit rows and the dead-letter count, appended to ``out``."""
        got = self.ledger.read_trail(since=self.clock() - 86400.0)
        if got is not None:
            out.append(got)

    def _restore(self, rows: list[AuditRow], dead_letters: int) -> None:
        """Rebuild the guard rails from the last day's audit (router thread, before the
        first event is routed)."""
        self.ledger.restored(dead_letters)
        self.router.guards.restore(rows, self.clock(), self.actions)

    def metrics(self) -> tuple[SelfMetric, ...]:
        """``gpuwarden_actions_total{action,result}``, queue length, dead letters, drops."""
        with self._cv:
            queued = len(self._events) + self.router.grouped()
            dropped = self.dropped_total
        counts = self.ledger.counts()
        dead = self.ledger.pending_dead_letters()
        audit_dropped = 0 if self.audit is None else self.audit.dropped_total
        audit_queued = 0 if self.audit is None else self.audit.queued
        queued += sum(len(w.queue) for w in self._workers.values())
        return (
            SelfMetric(ACTIONS.name, "counter", ACTIONS.help,
                       tuple(({"action": a, "result": r}, float(n)) for (a, r), n in counts)),
            SelfMetric("delivery_queue_length", "gauge",
                       "Alert events and deliveries waiting to be handled",
                       (({}, float(queued)),)),
            SelfMetric("dead_letters", "gauge",
                       "Deliveries that failed for good and were not replayed yet",
                       (({}, float(dead)),)),
            SelfMetric("delivery_events_dropped", "counter",
                       "Alert events dropped because the delivery queue was full",
                       (({}, float(dropped)),)),
            SelfMetric("audit_queue_length", "gauge",
                       "Audit rows and dead letters waiting to be written to the store",
                       (({}, float(audit_queued)),)),
            SelfMetric("audit_rows_dropped", "counter",
                       "Audit rows and dead letters dropped because the store did not take "
                       "them in time (queue full)", (({}, float(audit_dropped)),)),
        )

