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

Guard rails (as Alertmanager and PagerDuty users expect them): ``cooldown`` and ``max_per_hour``
bound how often an action is *called* for one target (rule + labels = fingerprint); a
firing inside them is audited ``suppressed`` with the reason. Resolved notices go to
every action that was called for the firing. ``dry_run`` audits what would be sent.
Timeouts, connection errors, 429 and 5xx (exec: non-zero exit) are retried with
jittered exponential backoff (0.5 s doubling to 60 s, ``Retry-After`` honoured) for the
action's ``retry_for`` (default 15 min; the schedule is in ``receivers/__init__.py``);
other 4xx fail at once; 410 Gone disables the action until restart. Per action and
alert, notices are delivered in order and a resolved notice supersedes a firing still
waiting to be delivered (same module). Anything not delivered lands in
``dead_letters`` for ``gpuwarden actions replay``, which sends only what is still
current.

Delivery never waits on the database: audit rows and dead letters go through the
audit log's bounded queue to its writer thread (``alerts/audit.py``), and the
periodic dead-letter count runs on that thread too. At start the guard rails below are
restored from the trail on a thread of its own; the router waits for it at most
``restore_timeout`` (10 s), then starts without them.

Inhibition (kept deliberately small, see :data:`DEFAULT_INHIBIT`): a firing
``ServerDown`` mutes the KV-cache, TTFT and latency alerts of the same node+server (a
dead server explains them); a firing ``GPULost`` mutes ``GPUUtilizationSpread`` on its
node. Only new firings are muted; an alert already notified still gets its resolve.

Escalation: an action with ``verify`` and ``escalate_to`` that was called successfully
for a firing alert is checked ``verify`` later; if the same activation still fires, the
``escalate_to`` action is fired for it (guard rails apply) and the step is audited
``escalated`` (e.g. warm restart, then checkpoint rollback).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatch
from typing import TYPE_CHECKING, Any

from gpuwarden.address import DEFAULT_LISTEN, split_host_port
from gpuwarden.alerts.action import DEFAULT_ACTION_NAMES, ActionConfig
from gpuwarden.alerts.alert import Alert, AlertEvent, EventKind, rfc3339
from gpuwarden.alerts.audit import AuditLog, AuditRow
from gpuwarden.alerts.payload import AlertEntry, alert_entry, delivery_id
from gpuwarden.alerts.receivers.alertmanager import RESOLVED_RESEND_SECONDS
from gpuwarden.alerts.receivers.base import Delivery, ReceiverContext, RetryPolicy
from gpuwarden.alerts.receivers.registry import build_receiver
from gpuwarden.alerts.receivers.worker import DeliveryWorker
from gpuwarden.durations import format_duration
from gpuwarden.model import SelfMetric

if TYPE_CHECKING:
    import requests
    from sqlalchemy import Engine

    from gpuwarden.alerts.served_models import ModelHistory
    from gpuwarden.config import Config

log = logging.getLogger(__name__)

MAX_ESCALATIONS = 5  # per activation: a cycle A -> B -> A stops here
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class InhibitRule:
    """While a ``sources`` alert fires, new firings of ``targets`` (glob patterns on the
    rule name) with the same ``equal`` labels are suppressed."""

    sources: tuple[str, ...]
    targets: tuple[str, ...]
    equal: tuple[str, ...]


DEFAULT_INHIBIT = (
    InhibitRule(("ServerDown",), ("KV*", "TTFT*", "ITL*", "*Latency*"), ("node", "server")),
    InhibitRule(("GPULost",), ("GPUUtilizationSpread",), ("node",)),
)


@dataclass(slots=True)
class _Group:
    due: float
    entries: dict[str, AlertEntry] = field(default_factory=dict)


class Dispatcher:
    """Alert events -> guarded, audited, retried deliveries (see the module doc).

    ``submit`` is safe to call from any thread; ``start`` and ``stop`` from one.
    """

    def __init__(
        self,
        actions: Sequence[ActionConfig],
        *,
        store: Any,
        session: requests.Session,
        node: str,
        listen: str = DEFAULT_LISTEN,
        clock: Any = time.time,
        interval: float = 1.0,
        retry: RetryPolicy | None = None,
        queue_size: int = 10_000,
        am_resend: float = 60.0,
        am_resolved_resend: float = RESOLVED_RESEND_SECONDS,
        models: ModelHistory | None = None,
        inhibit: Sequence[InhibitRule] = DEFAULT_INHIBIT,
        poll: float = 0.1,
        wait: Callable[[threading.Condition, float], object] | None = None,
        audit_queue: int = 10_000,
        restore_timeout: float = 10.0,
    ) -> None:
        self.actions = {a.name: a for a in actions}
        self.clock = clock
        self.retry = retry or RetryPolicy()
        self.models = models
        self.inhibit = tuple(inhibit)
        self.node = node
        self.am_resend = am_resend
        self.am_resolved_resend = am_resolved_resend
        self._poll = poll
        self._wait = wait
        self._restore_timeout = restore_timeout
        engine: Engine | None = store if store is None or not hasattr(store, "engine") else (
            store.engine)
        self.audit = AuditLog(engine, clock=clock, background=True,
                              queue_size=audit_queue) if engine is not None else None
        self.external_url = external_url(listen, node)
        self.generator_url = self.external_url + "/api/v1/alerts"
        self.ctx = ReceiverContext(session=session, node=node, external_url=self.external_url,
                                   interval=interval, am_resend=am_resend, clock=clock)
        self._workers = {a.name: DeliveryWorker(self, a, build_receiver(a, self.ctx))
                         for a in actions}
        # Shared between threads (under _cv).
        self._cv = threading.Condition()
        self._events: deque[tuple[AlertEvent, tuple[str, ...] | None]] = deque()
        self._queue_size = queue_size
        self._timers: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()
        self._counts: Counter[tuple[str, str]] = Counter()
        self._disabled: set[str] = set()
        self.dropped_total = 0
        self.dead_letters = 0
        self._stopping = False
        self._deadline: float | None = None
        self.workers_exit = threading.Event()
        self._busy = False
        self._router: threading.Thread | None = None
        self._last_drop_log = 0.0
        # Router-only state.
        self._firing: dict[str, Alert] = {}
        self._seen: set[tuple[str, str]] = set()
        self._calls: dict[tuple[str, str], deque[float]] = {}
        self._groups: dict[tuple[str, str, str], _Group] = {}
        self._am: dict[str, dict[str, tuple[AlertEntry, float | None]]] = {}
        self._am_timer: set[str] = set()
        self._escalations: Counter[tuple[str, str]] = Counter()

    @classmethod
    def from_config(cls, config: Config, *, store: Any, session: requests.Session,
                    models: ModelHistory | None = None, **kwargs: Any) -> Dispatcher:
        return cls(config.actions, store=store, session=session, node=config.node,
                   listen=config.listen, interval=config.interval, models=models, **kwargs)

    # ------------------------------------------------------------------ life cycle
    def start(self) -> None:
        if self._router is not None:
            return
        # The trail is read on a thread of its own: a database that hangs must not hold
        # up start() (the daemon's start-up) nor, beyond restore_timeout, the router.
        trail: list[tuple[list[AuditRow], int]] = []
        reader = threading.Thread(target=self._read_trail, args=(trail,), daemon=True,
                                  name="gpuwarden-alerts-restore")
        reader.start()
        for w in self._workers.values():
            w.thread.start()
        self._router = threading.Thread(target=self._route_loop, args=(reader, trail),
                                         name="gpuwarden-alerts", daemon=True)
        self._router.start()
        self._schedule(self.clock() + 60.0, "dlcount", None)

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued within ``timeout`` (one try each); dead-letter the rest."""
        if self._router is None:
            return
        end = time.monotonic() + timeout
        with self._cv:
            self._stopping = True
            self._deadline = end
            self._cv.notify_all()
        for w in self._workers.values():  # cut retry backoffs short
            with w.cv:
                w.cv.notify_all()
        self._router.join(max(0.0, end - time.monotonic()))
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
                quiet = not self._events and not self._busy and not self._groups and not due
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
                    wait = self._poll if not self._timers else min(
                        self._poll, max(0.005, self._timers[0][0] - now))
                    self._cv.wait(wait)
                events = list(self._events)
                self._events.clear()
                timers = []
                while self._timers and (self._timers[0][0] <= now or self._stopping):
                    timers.append(heapq.heappop(self._timers))
                stopping = self._stopping
                self._busy = True
            try:
                self._handle(events, timers, stopping)
            except Exception:  # convention 9: never let the router die
                log.exception("alert router failed on a batch; carrying on")
            finally:
                with self._cv:
                    self._busy = False
            if stopping:
                with self._cv:
                    if not self._events:
                        return

    def _handle(self, events: list[tuple[AlertEvent, tuple[str, ...] | None]],
                timers: list[tuple[float, int, str, Any]], stopping: bool) -> None:
        for ev, _ in events:  # state first: a ServerDown in this batch inhibits its peers
            if ev.kind is EventKind.FIRING:
                self._firing[ev.alert.fingerprint] = ev.alert
            else:
                self._firing.pop(ev.alert.fingerprint, None)
        for ev, names in events:
            self._route(ev, names if names is not None else ev.alert.actions)
        for _, _, kind, payload in timers:
            if kind == "group":
                self._flush_group(payload)
            elif kind == "sent" and not stopping:
                self._after_sent(*payload)
            elif kind == "verify" and not stopping:
                self._verify(*payload)
            elif kind == "am" and not stopping:
                self._am_resend_due(payload)
            elif kind == "dlcount" and not stopping:
                self._refresh_dead_letters()
        if stopping:
            for key in list(self._groups):
                self._flush_group(key)

    def _route(self, ev: AlertEvent, names: Sequence[str]) -> None:
        alert = ev.alert
        firing = ev.kind is EventKind.FIRING
        inhibitor = self._inhibitor(alert) if firing else None
        if not firing:  # every action called for the firing (escalation targets too)
            names = [*names, *sorted(n for n in self.actions if n not in names
                                     and (n, alert.fingerprint) in self._seen)]
        for name in names:
            action = self.actions.get(name)
            if action is None:
                if firing:
                    shown = name in DEFAULT_ACTION_NAMES
                    self._audit_alert(name, alert, "no_action", reason=(
                        f"no [[actions]] named {name!r}: alert shown only" if shown
                        else f"unknown action {name!r}"))
                continue
            if firing:
                self._fire(action, alert, ev.at, inhibitor)
            else:
                self._resolve(action, alert, ev.at)

    def _inhibitor(self, alert: Alert) -> str | None:
        labels = alert.label_map
        for rule in self.inhibit:
            if alert.name in rule.sources or not any(fnmatch(alert.name, t)
                                                     for t in rule.targets):
                continue
            for other in self._firing.values():
                if other.name in rule.sources:
                    ol = other.label_map
                    if all(ol.get(k, "") == labels.get(k, "") for k in rule.equal):
                        return other.name
        return None

    def _guard(self, action: ActionConfig, fp: str, now: float) -> str | None:
        calls = self._calls.get((action.name, fp))
        if not calls:
            return None
        while calls and now - calls[0] >= HOUR:
            calls.popleft()
        if action.cooldown > 0 and calls and now - calls[-1] < action.cooldown:
            return (f"cooldown {format_duration(action.cooldown)}: last call "
                    f"{format_duration(max(0.0, now - calls[-1]))} ago")
        if action.max_per_hour > 0 and len(calls) >= action.max_per_hour:
            return f"max_per_hour {action.max_per_hour} reached for this target"
        return None

    def _fire(self, action: ActionConfig, alert: Alert, at: float,
              inhibitor: str | None) -> None:
        fp, name = alert.fingerprint, action.name
        if self.is_disabled(name):
            self._audit_alert(name, alert, "disabled", reason="endpoint disabled after HTTP 410")
            return
        if inhibitor is not None:
            self._audit_alert(name, alert, "suppressed", reason=f"inhibited by {inhibitor}")
            return
        now = self.clock()
        reason = self._guard(action, fp, now)
        if reason is not None:
            self._audit_alert(name, alert, "suppressed", reason=reason)
            return
        self._calls.setdefault((name, fp), deque()).append(now)
        self._seen.add((name, fp))
        self._enqueue(action, alert, "firing", at)

    def _resolve(self, action: ActionConfig, alert: Alert, at: float) -> None:
        key = (action.name, alert.fingerprint)
        group = self._groups.get((action.name, alert.name, "firing"))
        if group is not None and group.entries.pop(alert.fingerprint, None) is not None:
            self._seen.discard(key)  # resolved inside group_wait: never notified
            self._audit_alert(action.name, alert, "suppressed",
                              reason="resolved within group_wait, before it was sent")
            return
        if key not in self._seen:
            return  # this action was never called for the firing
        self._seen.discard(key)
        if self.is_disabled(action.name):
            self._audit_alert(action.name, alert, "disabled",
                              reason="endpoint disabled after HTTP 410")
            return
        self._enqueue(action, alert, "resolved", at)

    def _enqueue(self, action: ActionConfig, alert: Alert, status: str, at: float) -> None:
        extra = None
        server = alert.label_map.get("server")
        if self.models is not None and server:
            extra = self.models.annotations(server)
        entry = alert_entry(alert, status, at=at, generator_url=self.generator_url,
                            extra_annotations=extra)
        if action.type == "alertmanager":
            until = None if status == "firing" else self.clock() + self.am_resolved_resend
            self._am.setdefault(action.name, {})[alert.fingerprint] = (entry, until)
            if action.name not in self._am_timer:
                self._am_timer.add(action.name)
                self._schedule(self.clock() + self.am_resend, "am", action.name)
        if action.group_wait > 0 and self._workers[action.name].receiver.groups:
            key = (action.name, alert.name, status)
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(self.clock() + action.group_wait)
                self._schedule(group.due, "group", key)
            group.entries[alert.fingerprint] = entry
            return
        self._dispatch(action, alert.name, status, [entry])

    def _flush_group(self, key: tuple[str, str, str]) -> None:
        group = self._groups.pop(key, None)
        if group is not None and group.entries:
            self._dispatch(self.actions[key[0]], key[1], key[2], list(group.entries.values()))

    def _dispatch(self, action: ActionConfig, rule: str, status: str,
                  entries: list[AlertEntry], *, resend: bool = False) -> None:
        d = Delivery(id=delivery_id(action.name, status, entries), action=action.name,
                     status=status, rule=rule, alerts=tuple(entries), created=self.clock(),
                     group_labels=(("alertname", rule),) if rule else (), resend=resend)
        self._workers[action.name].put(d)

    def _after_sent(self, action: ActionConfig, d: Delivery) -> None:
        if d.status != "firing" or action.verify <= 0 or not action.escalate_to:
            return
        for entry in d.alerts:
            self._schedule(self.clock() + action.verify, "verify",
                           (action, entry["fingerprint"], entry["startsAt"]))

    def _verify(self, action: ActionConfig, fp: str, starts_at: str) -> None:
        alert = self._firing.get(fp)
        if alert is None or _starts(alert) != starts_at:
            return  # resolved (or a new activation) since: the action worked
        target = self.actions.get(action.escalate_to or "")
        if target is None:
            return
        key = (fp, starts_at)
        if self._escalations[key] >= MAX_ESCALATIONS:
            log.warning("escalation of %s stopped after %d steps", alert.name, MAX_ESCALATIONS)
            return
        self._escalations[key] += 1
        self._audit_alert(action.name, alert, "escalated", reason=(
            f"still firing {format_duration(action.verify)} after {action.name}; "
            f"escalating to {target.name}"), detail={"escalate_to": target.name})
        log.warning("%s still firing %s after %s: escalating to %s", alert.name,
                    format_duration(action.verify), action.name, target.name)
        self._fire(target, alert, self.clock(), None)

    def _am_resend_due(self, name: str) -> None:
        now = self.clock()
        active = self._am.get(name, {})
        for fp, (_, until) in list(active.items()):
            if until is not None and until < now:
                del active[fp]
        if not active:
            self._am_timer.discard(name)
            return
        self._dispatch(self.actions[name], "", "firing", [e for e, _ in active.values()],
                       resend=True)
        self._schedule(now + self.am_resend, "am", name)

    # ---------------------------------------------------------- audit and bookkeeping
    def count(self, action: str, result: str, n: int = 1) -> None:
        with self._cv:
            self._counts[(action, result)] += n

    def _audit_alert(self, action: str, alert: Alert, result: str, *,
                     reason: str | None = None, detail: Mapping[str, Any] | None = None) -> None:
        self.count(action, result)
        if self.audit is not None:
            self.audit.record(action=action, result=result, labels=alert.label_map,
                              fingerprint=alert.fingerprint, reason=reason,
                              detail={"status": "firing", **(detail or {})})

    def record_delivery(self, action: str, d: Delivery, result: str, *,
                        http_status: int | None = None, attempt: int | None = None,
                        reason: str | None = None,
                        detail: Mapping[str, Any] | None = None) -> None:
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
        self.record_delivery(action.name, d, "dead_letter", attempt=attempts, reason=error)
        log.error("action %s: delivery of %s (%s) failed after %d attempts: %s; kept as a "
                  "dead letter (gpuwarden actions replay)", action.name, d.rule or "alerts",
                  d.status, attempts, error)
        if self.audit is not None:
            fp = d.alerts[0]["fingerprint"] if len(d.alerts) == 1 else None
            meta = {"http_status": http_status} if http_status is not None else None
            self.audit.add_dead_letter(action=action.name, fingerprint=fp,
                                       payload=d.to_json(meta), last_error=error,
                                       attempts=attempts)
        with self._cv:
            self.dead_letters += 1

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

    def _refresh_dead_letters(self) -> None:
        """Re-count pending dead letters (a replay from the CLI lowers it) on the audit
        writer's thread: a database that hangs must not hold up the router."""
        audit = self.audit
        if audit is not None:
            def count() -> None:
                n = audit.count_dead_letters()  # an error keeps the last count
                with self._cv:
                    self.dead_letters = n

            audit.call_later(count)
        self._schedule(self.clock() + 60.0, "dlcount", None)

    def _read_trail(self, out: list[tuple[list[AuditRow], int]]) -> None:
        """The last day's audit rows and the dead-letter count, appended to ``out``."""
        if self.audit is None:
            return
        try:
            rows = self.audit.query(since=self.clock() - 86400.0, limit=200_000)
            out.append((rows, self.audit.count_dead_letters()))
        except Exception as exc:
            log.warning("cannot read the audit trail to restore guard rails: %s",
                        type(exc).__name__)

    def _restore(self, rows: list[AuditRow], dead_letters: int) -> None:
        """Rebuild cooldowns, budgets and "who saw the firing" from the last day's audit
        (router thread, before the first event is routed)."""
        with self._cv:
            self.dead_letters = dead_letters
        now = self.clock()
        for r in rows:
            if r.fingerprint is None or r.action not in self.actions:
                continue
            key = (r.action, r.fingerprint)
            status = r.detail.get("status")
            final = r.result in ("sent", "dead_letter", "dry_run", "disabled", "superseded")
            if final and "delivery" in r.detail:
                if status == "firing" and r.result != "superseded":
                    if now - r.ts < HOUR:
                        self._calls.setdefault(key, deque()).append(r.ts)
                    self._seen.add(key)
                elif status == "resolved":
                    self._seen.discard(key)

    def metrics(self) -> tuple[SelfMetric, ...]:
        """``gpuwarden_actions_total{action,result}``, queue length, dead letters, drops."""
        with self._cv:
            counts = sorted(self._counts.items())
            queued = len(self._events) + sum(len(g.entries) for g in self._groups.values())
            dead, dropped = self.dead_letters, self.dropped_total
        audit_dropped = 0 if self.audit is None else self.audit.dropped_total
        audit_queued = 0 if self.audit is None else self.audit.queued
        queued += sum(len(w.queue) for w in self._workers.values())
        return (
            SelfMetric("actions", "counter", "Alert action outcomes by action and result",
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


def _starts(alert: Alert) -> str:
    return rfc3339(alert.fired_at if alert.fired_at is not None else alert.active_at)


def external_url(listen: str, node: str) -> str:
    """This daemon's base URL as receivers should see it (the node name for 0.0.0.0)."""
    try:
        host, port = split_host_port(listen)
    except ValueError:
        return f"http://{node}"
    if host in ("0.0.0.0", "::", ""):
        host = node
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
