"""The fleet evaluator on a real PostgreSQL: state that outlives a leader, events sent
only after their state is written, and a reload of the fleet rules."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine, text

from gpuwarden.alerts.alert import AlertEvent, EventKind
from gpuwarden.detectors.fleet_rules import effective_fleet_rules
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.fleet.evaluator import FleetEvaluator
from gpuwarden.fleet.nodes import NodeBeat
from gpuwarden.storage import open_store

pytestmark = pytest.mark.postgres
T0 = 1_700_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(fleet_url: str) -> Iterator[Engine]:
    store = open_store(fleet_url, node="setup")  # creates the tables
    store.close()
    made = create_engine(fleet_url)
    yield made
    made.dispose()


def _evaluator(engine: Engine, node: str, clock: Clock, sent: list[AlertEvent],
               rules: tuple[RuleConfig, ...] | None = None) -> FleetEvaluator:
    return FleetEvaluator(engine, node, rules or effective_fleet_rules([]), interval=1.0,
                          sink=sent.extend, clock=clock)


def _kinds(events: list[AlertEvent]) -> list[tuple[str, str, str]]:
    return [(e.alert.name, str(e.kind), dict(e.alert.labels).get("node", "")) for e in events]


def test_a_new_leader_continues_a_firing_alert_and_resolves_it_once(engine: Engine) -> None:
    clock = Clock()
    beat = NodeBeat(engine, "node-x", "test", 1.0, clock=clock)
    beat.beat()
    sent_a: list[AlertEvent] = []
    sent_b: list[AlertEvent] = []
    a = _evaluator(engine, "a", clock, sent_a)
    b = _evaluator(engine, "b", clock, sent_b)
    clock.now += 5  # node-x silent for 5 intervals
    a.run_once()
    assert b.run_once() == [] and not b.is_leader
    assert _kinds(sent_a) == [("NodeSilent", "firing", "node-x")]
    a.stop()  # a clean hand-over: b takes the lock on its next pass
    clock.now += 1
    assert b.run_once() == []  # restored as firing: not fired again
    assert b.is_leader
    beat.beat()  # node-x writes again
    clock.now += 1
    b.run_once()
    assert _kinds(sent_b) == [("NodeSilent", "resolved", "node-x")]
    clock.now += 1
    b.run_once()
    assert len(sent_b) == 1 and len(sent_a) == 1


def test_transitions_wait_for_their_state_to_be_written(engine: Engine) -> None:
    clock = Clock()
    NodeBeat(engine, "node-x", "test", 1.0, clock=clock).beat()
    sent: list[AlertEvent] = []
    a = _evaluator(engine, "a", clock, sent)
    a.run_once()  # leads; nothing silent yet
    assert a.is_leader and sent == []
    with engine.begin() as conn:  # the state table cannot be written for a while
        conn.execute(text("ALTER TABLE fleet_alerts RENAME TO fleet_alerts_away"))
    clock.now += 5
    try:
        assert a.run_once() == []
        assert sent == []  # evaluated, but not sent: its state is not in the database
    finally:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE fleet_alerts_away RENAME TO fleet_alerts"))
    clock.now += 1
    a.run_once()
    assert _kinds(sent) == [("NodeSilent", "firing", "node-x")]
    with engine.connect() as conn:
        assert conn.execute(text("SELECT state FROM fleet_alerts")).scalars().all() == ["firing"]


def test_a_reload_that_drops_a_fleet_rule_resolves_its_alerts(engine: Engine) -> None:
    clock = Clock()
    NodeBeat(engine, "node-x", "test", 1.0, clock=clock).beat()
    sent: list[AlertEvent] = []
    a = _evaluator(engine, "a", clock, sent)
    clock.now += 5
    a.run_once()
    off = RuleConfig(name="NodeSilent", signal="node_silence_intervals", enabled=False)
    a.configure(effective_fleet_rules([off]), 1.0)
    clock.now += 1
    a.run_once()
    assert [(e.alert.name, e.kind) for e in sent] == [("NodeSilent", EventKind.FIRING),
                                                      ("NodeSilent", EventKind.RESOLVED)]
