"""The alert rules as the daemon runs them: evaluate, persist, hand over, publish.

Each cycle the rule engine evaluates the due rules over the store; what changed is
persisted (on the store's writer thread once it runs), the transitions (``AlertEvent``
FIRING/RESOLVED, in order) go to every callback of ``on_alert_events`` -- the
dispatcher's among them -- and an immutable copy of the pending and firing alerts is
published for ``/api/v1/alerts``, so the HTTP thread never reads the engine. It is
made again only when the engine's ``revision`` moved, and then only for the instances
that changed: most cycles change nothing a reader of the list would see.

Nothing here kills a cycle: an evaluation that raises is logged and counted, a
callback that raises is logged and counted and the others still get the events.
Delivery starts after the first cycle (to keep the first stored sample early): that
cycle's events wait here and are handed to the dispatcher as soon as it is up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpuwarden.alerts.alert import Alert, AlertEvent
    from gpuwarden.alerts.dispatch import Dispatcher
    from gpuwarden.alerts.engine import RuleEngine, SeriesSource
    from gpuwarden.alerts.state import AlertStatePersister
    from gpuwarden.detectors.rule import RuleConfig
    from gpuwarden.storage.writer import StoreWriter

log = logging.getLogger(__name__)

AlertCallback = Callable[[list["AlertEvent"]], None]


class Alerting:
    """The rule engine, its persisted state and delivery's hooks; each part optional
    (None until started, or when it could not be started)."""

    def __init__(self) -> None:
        self.rule_engine: RuleEngine | None = None
        self.state: AlertStatePersister | None = None
        self.dispatcher: Dispatcher | None = None
        #: Called with every cycle's AlertEvents, in order.
        self.on_alert_events: list[AlertCallback] = []
        self.rule_failures_total = 0  # evaluations that raised past the engine's guards
        self.delivery_errors_total = 0
        self._published: list[dict[str, object]] = []
        # The engine and its ``revision`` that ``_published`` shows: an unchanged one has
        # nothing new to show, and rebuilding every instance's JSON every cycle for it
        # cost more than evaluating a rule.
        self._published_of: tuple[RuleEngine, int] | None = None
        # Per fingerprint, the instance's JSON and what it was made from (``_shown_as``).
        self._api: dict[str, tuple[tuple[object, ...], dict[str, object]]] = {}
        # The events of the cycles before delivery started; None once it has (or failed).
        self._early_events: list[AlertEvent] | None = []

    # --- rules -------------------------------------------------------------------------

    def restore(self, state: AlertStatePersister, now: float) -> None:
        """Take ``state`` as the persisted alert state and restore the engine from it."""
        assert self.rule_engine is not None
        self.state = state
        state.restore(self.rule_engine, now)
        self.publish()

    def reconfigure(self, rules: Sequence[RuleConfig], interval: float) -> None:
        """New rules after a reload: alerts of rules that still exist live on."""
        if self.rule_engine is not None:
            self.rule_engine.interval = interval
            self.rule_engine.configure(rules)

    def evaluate(self, now: float, source: SeriesSource, writer: StoreWriter | None) -> None:
        """Evaluate over ``source`` (the store, or the cycle's reads of it), persist what
        changed, hand events to delivery; never raises.

        ``writer``: the store's writer thread, which writes the alert state once it runs.
        """
        engine = self.rule_engine
        if engine is None:
            return
        try:
            if (self.state is not None and not self.state.restored
                    and not (writer is not None and writer.status().degraded)):
                self.state.restore(engine, now)  # before evaluating: no re-fire
            events = engine.evaluate(now, source)
            if self.state is not None:
                if writer is not None and writer.running:
                    self.state.collect(engine, now)  # the writer writes it
                else:
                    self.state.sync(engine, now)
        except Exception:
            self.rule_failures_total += 1
            log.exception("alert rule evaluation failed")
            return
        finally:
            self.publish()
        if events:
            self._deliver(events)

    def publish(self) -> None:
        """An immutable copy for the HTTP thread: it never reads the engine's state."""
        from gpuwarden.alerts.alert import AlertState

        engine = self.rule_engine
        if engine is None:
            return
        of = self._published_of
        if of is not None and of[0] is engine and of[1] == engine.revision:
            return
        live = engine.alerts(AlertState.PENDING, AlertState.FIRING)
        before, api = self._api, {}
        for alert in live:
            made_from = _shown_as(alert)
            kept = before.get(alert.fingerprint)
            if kept is None or not _same_objects(kept[0], made_from):
                kept = (made_from, alert.to_api())
            api[alert.fingerprint] = kept
        self._api = api
        self._published = [json for _, json in api.values()]
        self._published_of = (engine, engine.revision)

    def alerts_json(self) -> list[dict[str, object]]:
        """Pending and firing alerts as of the last evaluation (``/api/v1/alerts``)."""
        return self._published

    # --- delivery ----------------------------------------------------------------------

    def start_delivery(self, build: Callable[[], Dispatcher]) -> None:
        """Start the dispatcher ``build`` returns, on its own threads; a failure leaves
        alerts on ``/api/v1/alerts`` and ``/metrics`` and is counted."""
        try:
            dispatcher = build()
            self.dispatcher = dispatcher
            dispatcher.start()
        except Exception:
            self.delivery_errors_total += 1
            self.dispatcher = None
            log.exception("cannot start alert delivery")
            self._early_events = None
            return
        self.on_alert_events.append(dispatcher)
        early, self._early_events = self._early_events or [], None
        if early:
            self._deliver_to(dispatcher, early)

    def stop_delivery(self, timeout: float) -> None:
        """Stop the dispatcher: it sends what is queued, the rest is dead-lettered."""
        dispatcher, self.dispatcher = self.dispatcher, None
        if dispatcher is not None:
            if dispatcher in self.on_alert_events:
                self.on_alert_events.remove(dispatcher)
            dispatcher.stop(timeout=timeout)

    def deliver(self, events: list[AlertEvent]) -> None:
        """Hand events evaluated elsewhere (the fleet rules, ``daemon/fleet.py``) to the
        same delivery as the node's own; never raises."""
        self._deliver(events)

    def _deliver(self, events: list[AlertEvent]) -> None:
        if self._early_events is not None:
            self._early_events.extend(events)
        for callback in list(self.on_alert_events):
            self._deliver_to(callback, events)

    def _deliver_to(self, callback: AlertCallback, events: list[AlertEvent]) -> None:
        try:
            callback(list(events))
        except Exception:
            self.delivery_errors_total += 1
            log.exception("alert delivery callback %r failed", callback)


def _shown_as(alert: Alert) -> tuple[object, ...]:
    """The objects ``Alert.to_api`` reads: the same objects, the same JSON.

    Compared by identity: the engine replaces a field to change it (never mutates the
    annotations in place), and identity cannot mistake -0.0 for 0.0 or miss a NaN.
    """
    return (alert, alert.name, alert.state, alert.labels, alert.annotations, alert.value,
            alert.active_at, alert.fired_at, alert.fingerprint)


def _same_objects(a: tuple[object, ...], b: tuple[object, ...]) -> bool:
    return all(x is y for x, y in zip(a, b, strict=True))
