"""What the dispatcher's router thread decides for each alert event and timer: which
actions are called for a firing and its resolve (guard rails: ``guards.py``), how
notices are batched (``group_wait``, Alertmanager's resends) and when an action that did
not help is escalated.

Why apart from the dispatcher (``dispatch.py``): that module owns the threads, the
event queue and the timers; this one only decides, on the router thread, so it needs
no locks. It hands deliveries to the actions' workers and asks for timers through
``schedule`` (kinds: ``group``, ``sent``, ``verify``, ``am``, ``dlcount``).

Escalation: an action with ``verify`` and ``escalate_to`` that was called successfully
for a firing alert is checked ``verify`` later; if the same activation still fires, the
``escalate_to`` action is fired for it (guard rails apply) and the step is audited
``escalated`` (e.g. warm restart, then checkpoint rollback), at most
:data:`MAX_ESCALATIONS` times per activation.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gpuwarden.alerts.action import DEFAULT_ACTION_NAMES, ActionConfig
from gpuwarden.alerts.alert import Alert, AlertEvent, EventKind, rfc3339
from gpuwarden.alerts.guards import GuardRails
from gpuwarden.alerts.ledger import Ledger
from gpuwarden.alerts.payload import AlertEntry, alert_entry, delivery_id
from gpuwarden.alerts.receivers.base import Delivery
from gpuwarden.alerts.receivers.worker import DeliveryWorker
from gpuwarden.durations import format_duration

if TYPE_CHECKING:
    from gpuwarden.alerts.served_models import ServedModels

log = logging.getLogger(__name__)

MAX_ESCALATIONS = 5  # per activation: a cycle A -> B -> A stops here

#: A router timer: (due, sequence, kind, payload).
Timer = tuple[float, int, str, Any]
Schedule = Callable[[float, str, Any], None]


@dataclass(slots=True)
class _Group:
    due: float
    entries: dict[str, AlertEntry] = field(default_factory=dict)


class Router:
    """The decisions of the dispatcher's router thread (see the module doc)."""

    def __init__(
        self,
        actions: Mapping[str, ActionConfig],
        workers: Mapping[str, DeliveryWorker],
        *,
        guards: GuardRails,
        ledger: Ledger,
        clock: Callable[[], float],
        schedule: Schedule,
        is_disabled: Callable[[str], bool],
        generator_url: str,
        am_resend: float,
        am_resolved_resend: float,
        served_models: ServedModels | None,
    ) -> None:
        self.actions = actions
        self.guards = guards
        self.ledger = ledger
        self._workers = workers
        self._clock = clock
        self._schedule = schedule
        self._is_disabled = is_disabled
        self.generator_url = generator_url
        self.am_resend = am_resend
        self.am_resolved_resend = am_resolved_resend
        self.served_models = served_models
        self._groups: dict[tuple[str, str, str], _Group] = {}
        self._am: dict[str, dict[str, tuple[AlertEntry, float | None]]] = {}
        self._am_timer: set[str] = set()
        self._escalations: Counter[tuple[str, str]] = Counter()

    def grouping(self) -> bool:
        """Whether a group is open (its ``group_wait`` is not over)."""
        return bool(self._groups)

    def grouped(self) -> int:
        """Notices waiting for their group's ``group_wait``."""
        return sum(len(g.entries) for g in list(self._groups.values()))

    def handle(self, events: Sequence[tuple[AlertEvent, tuple[str, ...] | None]],
               timers: Sequence[Timer], stopping: bool) -> None:
        """One batch of the router thread: the events, then the timers that are due.
        When stopping every timer is due; groups are flushed, and escalation checks,
        resends and recounts are dropped."""
        self.guards.note(ev for ev, _ in events)  # first: a ServerDown inhibits its peers
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
                self.ledger.recount_dead_letters()  # a replay from the CLI lowers it
                self._schedule(self._clock() + 60.0, "dlcount", None)
        if stopping:
            for key in list(self._groups):
                self._flush_group(key)

    def _route(self, ev: AlertEvent, names: Sequence[str]) -> None:
        alert = ev.alert
        firing = ev.kind is EventKind.FIRING
        inhibitor = self.guards.inhibitor(alert) if firing else None
        if not firing:  # every action called for the firing (escalation targets too)
            names = [*names, *sorted(n for n in self.actions if n not in names
                                     and self.guards.saw_firing(n, alert.fingerprint))]
        for name in names:
            action = self.actions.get(name)
            if action is None:
                if firing:
                    shown = name in DEFAULT_ACTION_NAMES
                    self.ledger.alert(name, alert, "no_action", reason=(
                        f"no [[actions]] named {name!r}: alert shown only" if shown
                        else f"unknown action {name!r}"))
                continue
            if firing:
                self._fire(action, alert, ev.at, inhibitor)
            else:
                self._resolve(action, alert, ev.at)

    def _fire(self, action: ActionConfig, alert: Alert, at: float,
              inhibitor: str | None) -> None:
        fp, name = alert.fingerprint, action.name
        if self._is_disabled(name):
            self.ledger.alert(name, alert, "disabled", reason="endpoint disabled after HTTP 410")
            return
        if inhibitor is not None:
            self.ledger.alert(name, alert, "suppressed", reason=f"inhibited by {inhibitor}")
            return
        now = self._clock()
        reason = self.guards.refusal(action, fp, now)
        if reason is not None:
            self.ledger.alert(name, alert, "suppressed", reason=reason)
            return
        self.guards.called(name, fp, now)
        self._enqueue(action, alert, "firing", at)

    def _resolve(self, action: ActionConfig, alert: Alert, at: float) -> None:
        name, fp = action.name, alert.fingerprint
        group = self._groups.get((name, alert.name, "firing"))
        if group is not None and group.entries.pop(fp, None) is not None:
            self.guards.forget(name, fp)  # resolved inside group_wait: never notified
            self.ledger.alert(name, alert, "suppressed",
                              reason="resolved within group_wait, before it was sent")
            return
        if not self.guards.saw_firing(name, fp):
            return  # this action was never called for the firing
        self.guards.forget(name, fp)
        if self._is_disabled(name):
            self.ledger.alert(name, alert, "disabled", reason="endpoint disabled after HTTP 410")
            return
        self._enqueue(action, alert, "resolved", at)

    def _enqueue(self, action: ActionConfig, alert: Alert, status: str, at: float) -> None:
        extra = None
        server = alert.label_map.get("server")
        if self.served_models is not None and server:
            extra = self.served_models.annotations(server)
        entry = alert_entry(alert, status, at=at, generator_url=self.generator_url,
                            extra_annotations=extra)
        if action.type == "alertmanager":
            until = None if status == "firing" else self._clock() + self.am_resolved_resend
            self._am.setdefault(action.name, {})[alert.fingerprint] = (entry, until)
            if action.name not in self._am_timer:
                self._am_timer.add(action.name)
                self._schedule(self._clock() + self.am_resend, "am", action.name)
        if action.group_wait > 0 and self._workers[action.name].receiver.groups:
            key = (action.name, alert.name, status)
            group = self._groups.get(key)
            if group is None:
                group = self._groups[key] = _Group(self._clock() + action.group_wait)
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
                     status=status, rule=rule, alerts=tuple(entries), created=self._clock(),
                     group_labels=(("alertname", rule),) if rule else (), resend=resend)
        self._workers[action.name].put(d)

    def _after_sent(self, action: ActionConfig, d: Delivery) -> None:
        if d.status != "firing" or action.verify <= 0 or not action.escalate_to:
            return
        for entry in d.alerts:
            self._schedule(self._clock() + action.verify, "verify",
                           (action, entry["fingerprint"], entry["startsAt"]))

    def _verify(self, action: ActionConfig, fp: str, starts_at: str) -> None:
        alert = self.guards.firing.get(fp)
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
        self.ledger.alert(action.name, alert, "escalated", reason=(
            f"still firing {format_duration(action.verify)} after {action.name}; "
            f"escalating to {target.name}"), detail={"escalate_to": target.name})
        log.warning("%s still firing %s after %s: escalating to %s", alert.name,
                    format_duration(action.verify), action.name, target.name)
        self._fire(target, alert, self._clock(), None)

    def _am_resend_due(self, name: str) -> None:
        now = self._clock()
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


def _starts(alert: Alert) -> str:
    return rfc3339(alert.fired_at if alert.fired_at is not None else alert.active_at)
