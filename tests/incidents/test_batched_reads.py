"""The default rules over the incident corpus read their inputs two ways, same outcome.

The engine reads a store's signals together (``Store.query_many``); a source with only
``query`` (the backtest's) is read a signal at a time. Both engines here evaluate every
cycle of every trace over the same store, so every transition, every value and every
annotation of every alert must be identical, cycle by cycle. The store keeps 2 minutes
in memory so the reads reach cut blocks and the database as well as the head.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from gpuwarden.alerts.engine import RuleEngine
from gpuwarden.config import parse_config
from gpuwarden.detectors.defaults import effective_rules
from gpuwarden.model import SeriesData
from gpuwarden.storage import Store, open_store
from tests.incidents.corpus import load, names


class OneAtATime:
    """The store seen through ``query`` alone: a read per signal."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def query(self, signal: str, matchers: Mapping[str, str] | None = None,
              start: float = 0.0, end: float = 0.0) -> list[SeriesData]:
        return self.store.query(signal, matchers, start, end)


def _state(engine: RuleEngine) -> list[tuple[Any, ...]]:
    return [(a.fingerprint, str(a.state), a.value, a.active_at, a.fired_at, a.resolved_at,
             sorted(a.annotations.items())) for a in engine.alerts()]


#: Traces whose alerts fire and resolve over every kind of read: quantiles of histograms
#: (5 s rules), an hour of length histograms (past the memory), a per-GPU spread, a
#: server gone. The rest of the corpus gives the same equality at ~30 s a trace.
TRACES = ("itl-regression", "kv-capacity-too-small", "straggler-gpu", "server-crash")


def test_the_traces_exist() -> None:
    assert set(TRACES) <= set(names())


@pytest.mark.parametrize("name", TRACES)
def test_batched_and_per_signal_reads_give_identical_alerts(name: str, tmp_path: Any) -> None:
    trace = load(name)
    rules = effective_rules(parse_config(trace.rules).rules)
    batched = RuleEngine(rules, node=trace.node, interval=1.0)
    single = RuleEngine(rules, node=trace.node, interval=1.0)
    fired = 0
    with open_store(f"sqlite:///{tmp_path / 's.db'}", node=trace.node, chunk_span=60.0,
                    memory_window=120.0) as store:
        assert hasattr(store, "query_many") and not hasattr(OneAtATime(store), "query_many")
        for ts, samples in trace.cycles():
            store.write(samples)
            a = batched.evaluate(ts, store)
            b = single.evaluate(ts, OneAtATime(store))
            assert [(e.kind, e.at, e.alert) for e in a] == [(e.kind, e.at, e.alert) for e in b]
            assert _state(batched) == _state(single), ts
            fired += len(a)
    assert batched.stats.rule_errors_total == single.stats.rule_errors_total
    assert sum(batched.stats.rule_errors_total.values()) == 0
    if trace.expect:
        assert fired, "the trace's alerts must fire for the comparison to mean something"
