"""The fleet rules as the leader runs them: lead, read every node, evaluate, persist, hand over.

Each pass (:meth:`FleetEvaluator.run_once`, every interval on a thread of its own so
that a slow or frozen database never holds up the node's own cycle):

1. :class:`~gpuwarden.fleet.leader.Leadership` is refreshed. A daemon that does not
   lead does nothing more; one that has just lost the lead forgets its fleet alerts
   (the database has them, and the next leader continues them).
2. On the first pass of a term, the fleet's alert instances are restored from
   ``fleet_alerts``: pending ones keep their ``for`` clock, firing ones stay firing
   (no re-fire, and they resolve once, from the new leader).
3. The fleet rules are evaluated over every node's samples (:mod:`source`) by a
   ``RuleEngine`` with no node of its own (a fleet alert's ``node`` label is the node
   it is about, where it is about one).
4. What changed is written to ``fleet_alerts`` in a transaction fenced by the lock
   (``Leadership.fence``), and only then are the transitions handed to delivery:
   commit, then send. A leader that dies between the two loses that notice; one that
   died after sending has its state committed, so its successor does not send it
   again. A write that fails keeps the events until a later write succeeds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy import Connection, Engine

from gpuwarden.alerts.alert import AlertEvent
from gpuwarden.alerts.engine import RuleEngine
from gpuwarden.alerts.state import AlertStatePersister, AlertStateStore
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.errors import one_line
from gpuwarden.fleet.leader import Leadership, NotLeader
from gpuwarden.fleet.source import FleetSource
from gpuwarden.ratelog import RateLimitedLog
from gpuwarden.storage import schema

log = logging.getLogger(__name__)
_quiet = RateLimitedLog(log)

EventSink = Callable[[list[AlertEvent]], None]


class FencedStateStore(AlertStateStore):
    """``fleet_alerts``, written only while this daemon's session holds the lead."""

    def __init__(self, engine: Engine, leadership: Leadership) -> None:
        super().__init__(engine, None, schema.fleet_alerts)
        self.leadership = leadership

    def _fence(self, conn: Connection) -> None:
        self.leadership.fence(conn)


class FleetEvaluator:
    """Runs the fleet rules when this daemon leads; see the module docstring."""

    def __init__(self, engine: Engine, node: str, rules: Sequence[RuleConfig], *,
                 interval: float, sink: EventSink,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.node = node
        self.interval = interval
        self.rules = tuple(rules)
        self.sink = sink
        self.clock = clock
        self.leadership = Leadership(engine, node)
        self.source = FleetSource(engine, clock)
        self._state_store = FencedStateStore(engine, self.leadership)
        self._term: tuple[RuleEngine, AlertStatePersister] | None = None
        self._unsent: list[AlertEvent] = []
        # A reload's rules, taken by the fleet thread at its next pass (no lock shared
        # with the thread that reloads).
        self._reloaded: tuple[tuple[RuleConfig, ...], float] | None = None
        self.evaluations_total = 0
        self.errors_total = 0

    @property
    def is_leader(self) -> bool:
        return self.leadership.is_leader

    def rule_engine(self) -> RuleEngine | None:
        """This term's engine (None while not leading): ``/api/v1/alerts`` may show it."""
        return self._term[0] if self._term is not None else None

    def run_once(self) -> list[AlertEvent]:
        """One pass; the events handed to ``sink`` (none when not leading). Never raises."""
        try:
            return self._run()
        except NotLeader:
            log.warning("fleet leader %s: the lock is no longer ours: stepping down", self.node)
        except Exception as exc:
            self.errors_total += 1
            _quiet.warning("pass", "fleet rules: evaluation failed: %s", one_line(exc))
            return []
        self._end_term()
        return []

    def configure(self, rules: Sequence[RuleConfig], interval: float) -> None:
        """New fleet rules (a config reload): alerts of rules that still exist live on."""
        self._reloaded = (tuple(rules), interval)

    def stop(self) -> None:
        """Give up the lead (clean stop): another daemon continues at once."""
        self._end_term()

    def _run(self) -> list[AlertEvent]:
        reloaded, self._reloaded = self._reloaded, None
        if reloaded is not None:
            self.rules, self.interval = reloaded
            if self._term is not None:
                self._term[0].interval = self.interval
                self._term[0].configure(self.rules)
        if not self.leadership.refresh():
            if self._term is not None:
                self._end_term()
            return []
        now = self.clock()
        if self._term is None:
            persister = AlertStatePersister(self._state_store)
            engine = RuleEngine(self.rules, node="", interval=self.interval)
            if not persister.restore(engine, now):
                return []
            self._term = (engine, persister)
        engine, persister = self._term
        self._unsent.extend(engine.evaluate(now, self.source))
        self.evaluations_total += 1
        if not persister.sync(engine, now):
            return []  # kept, with the state, until a write succeeds
        sent, self._unsent = self._unsent, []
        if sent:
            self.sink(sent)
        return sent

    def _end_term(self) -> None:
        self.leadership.step_down()
        self._term = None
        self._unsent = []
