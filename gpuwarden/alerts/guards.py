"""The dispatcher's guard rails: inhibition, cooldown and hourly budget, and who saw a
firing (so its resolved notice goes to the same actions).

Why apart from the dispatcher: these are the decisions *whether* to call an action,
made from memory of what fired and what was called; the dispatcher (``dispatch.py``)
owns the threads, queues and timers around them. Everything here is used by the
dispatcher's router thread only, so it needs no locks.

Inhibition (kept deliberately small, see :data:`DEFAULT_INHIBIT`): a firing
``ServerDown`` mutes the KV-cache, TTFT and latency alerts of the same node+server (a
dead server explains them); a firing ``GPULost`` mutes ``GPUUtilizationSpread`` on its
node. Only new firings are muted; an alert already notified still gets its resolve.

``cooldown`` and ``max_per_hour`` bound how often an action is *called* for one target
(rule + labels = fingerprint). The memory is rebuilt at start from the last day of the
audit trail (:meth:`GuardRails.restore`), so a restart does not page twice.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatch

from gpuwarden.alerts.action import ActionConfig
from gpuwarden.alerts.alert import Alert, AlertEvent, EventKind
from gpuwarden.alerts.audit import AuditRow
from gpuwarden.durations import format_duration

HOUR = 3600.0
#: Audit results that settle a delivery (it will not be tried again).
_FINAL = ("sent", "dead_letter", "dry_run", "disabled", "superseded")


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


class GuardRails:
    """What fires now, which action was called for which target and when (router only)."""

    def __init__(self, inhibit: Sequence[InhibitRule] = DEFAULT_INHIBIT) -> None:
        self.inhibit = tuple(inhibit)
        #: Firing alerts by fingerprint: inhibition sources, and escalation's "still firing".
        self.firing: dict[str, Alert] = {}
        self._seen: set[tuple[str, str]] = set()  # (action, fingerprint) called for a firing
        self._calls: dict[tuple[str, str], deque[float]] = {}  # their times, last hour

    def note(self, events: Iterable[AlertEvent]) -> None:
        """Track what fires (before routing: a ServerDown in a batch inhibits its peers)."""
        for ev in events:
            if ev.kind is EventKind.FIRING:
                self.firing[ev.alert.fingerprint] = ev.alert
            else:
                self.firing.pop(ev.alert.fingerprint, None)

    def inhibitor(self, alert: Alert) -> str | None:
        """The name of a firing alert that mutes this one, if any."""
        labels = alert.label_map
        for rule in self.inhibit:
            if alert.name in rule.sources or not any(fnmatch(alert.name, t)
                                                     for t in rule.targets):
                continue
            for other in self.firing.values():
                if other.name in rule.sources:
                    ol = other.label_map
                    if all(ol.get(k, "") == labels.get(k, "") for k in rule.equal):
                        return other.name
        return None

    def refusal(self, action: ActionConfig, fp: str, now: float) -> str | None:
        """Why ``action`` may not be called for target ``fp`` now (cooldown, budget)."""
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

    def called(self, action: str, fp: str, now: float) -> None:
        """``action`` is called for the firing of ``fp``: counts against its guard rails."""
        self._calls.setdefault((action, fp), deque()).append(now)
        self._seen.add((action, fp))

    def saw_firing(self, action: str, fp: str) -> bool:
        """Whether ``action`` was called for the current firing of ``fp``."""
        return (action, fp) in self._seen

    def forget(self, action: str, fp: str) -> None:
        """``action`` gets (or needs) no resolved notice for ``fp``."""
        self._seen.discard((action, fp))

    def restore(self, rows: Sequence[AuditRow], now: float, actions: Iterable[str]) -> None:
        """Rebuild cooldowns, budgets and "who saw the firing" from the last day's audit
        rows of the configured ``actions``."""
        known = set(actions)
        for r in rows:
            if r.fingerprint is None or r.action not in known:
                continue
            key = (r.action, r.fingerprint)
            status = r.detail.get("status")
            if r.result in _FINAL and "delivery" in r.detail:
                if status == "firing" and r.result != "superseded":
                    if now - r.ts < HOUR:
                        self._calls.setdefault(key, deque()).append(r.ts)
                    self._seen.add(key)
                elif status == "resolved":
                    self._seen.discard(key)
