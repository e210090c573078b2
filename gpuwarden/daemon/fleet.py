"""Fleet mode in one daemon: its heartbeat in the shared store, and the fleet rules.

On a PostgreSQL store every daemon takes part (``gpuwarden/fleet/``): its writer thread
refreshes the node's ``nodes`` row after each pass that left nothing pending, and a
thread of its own tries to lead every interval and, while leading, evaluates the fleet
rules and hands their transitions to this daemon's delivery (the same actions, guard
rails and audit as the node's own alerts). The thread is apart from the collection
loop because it reads every node's samples from the database, which may be slow or
hang; the loop never waits for it. A SQLite store is one node's: no fleet mode.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpuwarden import __version__
from gpuwarden.detectors.fleet_rules import effective_fleet_rules
from gpuwarden.fleet.evaluator import EventSink, FleetEvaluator
from gpuwarden.fleet.nodes import NodeBeat

if TYPE_CHECKING:
    from gpuwarden.config import Config
    from gpuwarden.model import SelfMetric
    from gpuwarden.storage.store import Store

log = logging.getLogger(__name__)

#: Seconds a stopping daemon waits for a fleet pass in flight.
STOP_WAIT_S = 5.0


def fleet_capable(store: Store) -> bool:
    return store.engine.dialect.name == "postgresql"


class FleetMode:
    """The heartbeat job and the fleet-rules thread of one daemon."""

    def __init__(self, store: Store, config: Config, sink: EventSink,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.interval = config.interval
        self.servers = len(config.servers)
        self.beat = NodeBeat(store.engine, config.node, __version__, config.interval, clock)
        self.evaluator = FleetEvaluator(store.engine, config.node,
                                        effective_fleet_rules(config.rules),
                                        interval=config.interval, sink=sink, clock=clock)
        self._stop = threading.Event()  # also ends the heartbeat: see stop()
        self._thread: threading.Thread | None = None
        self._alert_counts = self._fleet_alert_counts()  # gpuwarden_fleet_alerts

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: its fleet rules and interval from the next pass on."""
        self.interval = config.interval
        self.servers = len(config.servers)
        self.beat.interval = config.interval
        self.evaluator.configure(effective_fleet_rules(config.rules), config.interval)

    def heartbeat(self) -> None:
        """The writer thread's job: this node wrote everything it collected, just now."""
        if self._stop.is_set():  # stopped: the writer's last pass must not undo the farewell
            return
        if self.store.pending_samples == 0:
            self.beat.gpus = len(self.store.latest("gpu_up"))
            self.beat.servers = self.servers
            self.beat.beat()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gpuwarden-fleet", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.evaluator.run_once()
            self._alert_counts = self._fleet_alert_counts()
            self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))

    def stop(self) -> None:
        """Stop evaluating, give the lead up and say this node stopped on purpose.

        Bounded: a database that does not answer (stopped, frozen) must not hold up the
        daemon's stop. The farewell runs on a thread of its own and is given up on after
        ``STOP_WAIT_S``; the lead then ends with the process (its session closes)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(STOP_WAIT_S)
        farewell = threading.Thread(target=self._farewell, name="gpuwarden-fleet-stop",
                                    daemon=True)
        farewell.start()
        farewell.join(STOP_WAIT_S)
        if farewell.is_alive():
            log.warning("fleet: the database did not answer within %gs; stopping without "
                        "marking this node stopped (NodeSilent will report it)", STOP_WAIT_S)

    def _farewell(self) -> None:
        self.evaluator.stop()
        try:
            self.beat.stopped()
        except Exception as exc:  # the database is away: NodeSilent will say so
            log.warning("fleet: cannot mark this node stopped: %s", exc)

    def self_metrics(self) -> list[SelfMetric]:
        from gpuwarden.model import SelfMetric

        ev = self.evaluator
        return [
            SelfMetric("fleet_leader", "gauge", "1 while this daemon evaluates the fleet rules",
                       (({}, 1.0 if ev.is_leader else 0.0),)),
            SelfMetric("fleet_evaluations", "counter",
                       "Fleet-rule evaluations this daemon ran as leader",
                       (({}, float(ev.evaluations_total)),)),
            SelfMetric("fleet_errors", "counter",
                       "Fleet-rule passes that failed (database, rules)",
                       (({}, float(ev.errors_total)),)),
            SelfMetric("fleet_alerts", "gauge",
                       "Fleet alert instances by rule and state, as this daemon evaluates "
                       "them (0 while it does not lead: take the max over the fleet)",
                       tuple(({"alertname": name, "state": state}, float(n))
                             for (name, state), n in sorted(self._alert_counts.items()))),
        ]

    def _fleet_alert_counts(self) -> dict[tuple[str, str], int]:
        """The leader's counts after its last pass; zeros for every fleet rule's pending
        and firing otherwise (the same label sets on every daemon: a failover moves no
        series). Taken on the fleet thread, between passes: /metrics is rendered on
        another thread, which must not walk the engine's alerts while a pass changes them."""
        from gpuwarden.alerts.alert import AlertState

        engine = self.evaluator.rule_engine()
        if engine is not None:
            return engine.counts()
        return {(r.name, str(state)): 0 for r in self.evaluator.rules
                for state in (AlertState.PENDING, AlertState.FIRING)}
