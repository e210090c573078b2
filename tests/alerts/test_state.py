"""Alert state across restarts, on SQLite and PostgreSQL (``backend`` fixture).

The promise: a new engine over the same store restores a firing alert without a new
FIRING event, and still resolves it (with a RESOLVED event) when the condition ends.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from sqlalchemy import select, text

from gpuwarden.alerts.alert import AlertState
from gpuwarden.alerts.engine import RuleEngine
from gpuwarden.alerts.state import AlertStatePersister, AlertStateStore
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.storage import Store, schema
from tests.alerts.helpers import GPU0, GPU1, EmptySource, Factory, breach, rule
from tests.storage.conftest import Backend, backend

__all__ = ["backend"]  # the SQLite/PostgreSQL fixture, reused from the storage tests

T0 = 1_700_000_000.0


def boot(store: Store, *rules: RuleConfig, node: str = "n1") -> tuple[
        RuleEngine, Factory, AlertStatePersister]:
    factory = Factory()
    eng = RuleEngine(rules or (rule(for_=10.0),), node=node, interval=1.0, factory=factory)
    persister = AlertStatePersister(AlertStateStore(store.engine, node))
    assert persister.restore(eng, T0)
    return eng, factory, persister


def rows(store: Store) -> dict[str, tuple[str, str]]:
    with store.engine.connect() as conn:
        return {json.loads(r.labels)["gpu"]: (r.rule, r.state)
                for r in conn.execute(select(schema.alerts))}


def step(eng: RuleEngine, persister: AlertStatePersister, t: float) -> list[str]:
    events = eng.evaluate(T0 + t, EmptySource())
    assert persister.sync(eng, T0 + t)
    return [f"{e.kind}:{dict(e.alert.labels)['gpu']}" for e in events]


def test_restart_restores_firing_and_pending_without_refiring(backend: Backend) -> None:
    store = backend.open()
    eng, det, persister = boot(store)
    det["Hot"].findings = [breach(GPU0)]
    step(eng, persister, 0)
    assert step(eng, persister, 10) == ["firing:0"]
    det["Hot"].findings = [breach(GPU0), breach(GPU1)]
    step(eng, persister, 11)
    assert rows(store) == {"0": ("Hot", "firing"), "1": ("Hot", "pending")}
    fired_at = eng.alerts()[0].fired_at
    store.close()

    store2 = backend.open()
    eng2, det2, persister2 = boot(store2)
    restored = {dict(a.labels)["gpu"]: a for a in eng2.alerts()}
    assert {g: a.state for g, a in restored.items()} == {"0": AlertState.FIRING,
                                                          "1": AlertState.PENDING}
    assert restored["0"].fired_at == fired_at and restored["1"].active_at == T0 + 11
    det2["Hot"].findings = [breach(GPU0), breach(GPU1)]
    assert step(eng2, persister2, 15) == []  # no re-fire of gpu 0
    assert step(eng2, persister2, 21) == ["firing:1"]  # gpu 1's for clock survived
    det2["Hot"].findings = []
    assert step(eng2, persister2, 22) == ["resolved:0", "resolved:1"]
    assert rows(store2) == {"0": ("Hot", "resolved"), "1": ("Hot", "resolved")}
    step(eng2, persister2, 22 + 901)  # retention over: rows deleted too
    assert rows(store2) == {}


def test_only_this_nodes_alerts_are_restored(backend: Backend) -> None:
    store = backend.open()
    a, det_a, pa = boot(store, node="n1")
    b, det_b, pb = boot(store, node="n2")
    det_a["Hot"].findings = [breach(GPU0)]  # GPU0 carries node=n1
    det_b["Hot"].findings = [breach((("gpu", "0"),))]  # node defaults to n2
    for eng, persister in ((a, pa), (b, pb)):
        step(eng, persister, 0)
    again, _, _ = boot(store, node="n2")
    assert [dict(x.labels)["node"] for x in again.alerts()] == ["n2"]


def test_stale_pending_is_not_restored(backend: Backend) -> None:
    store = backend.open()
    eng, det, persister = boot(store)
    det["Hot"].findings = [breach(GPU0)]
    step(eng, persister, 0)
    later = RuleEngine([rule(for_=10.0)], node="n1", interval=1.0, factory=Factory())
    p2 = AlertStatePersister(AlertStateStore(store.engine, "n1"))
    p2.restore(later, T0 + 7200)  # two hours later: the for clock must restart
    assert later.alerts() == []


@contextmanager
def lock_alerts(backend: Backend, store: Store) -> Iterator[None]:
    """Hold a lock that makes every write to ``alerts`` time out (a locked database)."""
    if backend.name == "sqlite":
        with backend.lock_writes():
            yield
        return
    with store.engine.connect() as conn, conn.begin():
        conn.execute(text("LOCK TABLE alerts IN ACCESS EXCLUSIVE MODE"))
        yield


def test_unavailable_store_keeps_state_in_memory_and_catches_up(
    backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    store = backend.open()
    eng, det, persister = boot(store, rule(for_=0.0))
    det["Hot"].findings = [breach(GPU0)]
    with lock_alerts(backend, store), caplog.at_level(logging.WARNING):
        events = eng.evaluate(T0, EmptySource())
        assert [str(e.kind) for e in events] == ["firing"]
        assert not persister.sync(eng, T0)
        assert not persister.sync(eng, T0 + 1)
        assert persister.pending_writes == 1
    assert caplog.text.count("cannot write alert state") == 1  # logged once
    assert persister.sync(eng, T0 + 2)
    assert rows(store) == {"0": ("Hot", "firing")}
