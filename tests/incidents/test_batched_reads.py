"""The default rules over the incident corpus read their inputs two ways, same outcome.

The engine reads a store's signals together (``Store.query_many``); a source with only
``query`` (the backtest's) is read a signal at a time. Both engines here evaluate every
cycle of every trace over the same store, so every transition, every value and every
annotation of every alert must be identical, cycle by cycle. The daemon goes one step
further: one read a cycle for the rules and the window signals together
(``promql/prefetch.py``); that too must change no alert and no window signal. The store
keeps 2 minutes in memory so the reads reach cut blocks and the database as well as the
head.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from gpuwarden.alerts.engine import RuleEngine
from gpuwarden.config import parse_config
from gpuwarden.detectors.defaults import effective_rules
from gpuwarden.model import Sample, SeriesData
from gpuwarden.promql.derived import LONG_LOOKBACK, derive, derive_lookbacks
from gpuwarden.promql.prefetch import Prefetched, widest
from gpuwarden.storage import Store, open_store
from gpuwarden.storage.held_windows import HeldReads
from tests.incidents.corpus import load, names
from tests.promql.test_prefetch import Counted


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


def _exact(samples: list[Sample]) -> list[tuple[Any, ...]]:
    """Samples compared bit for bit (NaN equal to NaN)."""
    return [(s.signal, s.labels, s.ts, struct.pack("<d", s.value)) for s in samples]


def _replay_one_read_a_cycle(name: str, tmp_path: Any, reader: Callable[[Store], Any],
                             after_cycle: Callable[[float], None] = lambda ts: None) -> None:
    """The trace's cycles as the daemon runs them: each cycle, what the rules due and the
    window signals (every 5 s, the hour-long ones every 60) read, in one go from
    ``reader(store)`` (made once), through ``Prefetched``. Every alert, every annotation
    and every window signal must be what reading the store for itself gives."""
    trace = load(name)
    rules = effective_rules(parse_config(trace.rules).rules)
    apart = RuleEngine(rules, node=trace.node, interval=1.0)
    shared = RuleEngine(rules, node=trace.node, interval=1.0)
    signals = 0
    with open_store(f"sqlite:///{tmp_path / 's.db'}", node=trace.node, chunk_span=60.0,
                    memory_window=120.0) as store:
        source = reader(store)
        for k, (ts, samples) in enumerate(trace.cycles()):
            store.write(samples)
            derive_due = k % 5 == 0
            skip = () if k % 60 == 0 else LONG_LOOKBACK
            wanted = [shared.due_inputs(ts)]
            if derive_due:
                wanted.append(derive_lookbacks(skip=skip))
            reads = Prefetched(source, widest(*wanted), ts)
            a = apart.evaluate(ts, store)
            b = shared.evaluate(ts, reads)
            assert [(e.kind, e.at, e.alert) for e in a] == [(e.kind, e.at, e.alert) for e in b]
            assert _state(apart) == _state(shared), ts
            if derive_due:
                alone = derive(store, ts, skip=skip)
                assert _exact(derive(reads, ts, skip=skip)) == _exact(alone), ts
                signals += len(alone)
            after_cycle(ts)
    assert sum(shared.stats.rule_errors_total.values()) == 0
    assert signals, "the window signals must have values for the comparison to mean something"


@pytest.mark.parametrize("name", TRACES)
def test_one_read_for_rules_and_window_signals_gives_what_reading_apart_gives(
        name: str, tmp_path: Any) -> None:
    """The daemon reads what the rules due and the window signals need in one go, once a
    cycle (``Cycle._window_reads``, ``promql/prefetch.py``): one read of the store a
    cycle, and what each reading the store for itself gives."""
    counted: list[Counted] = []

    def one_read(ts: float) -> None:
        assert counted[0].reads == 1, ts
        counted[0].reads = 0

    def reader(store: Store) -> Counted:
        counted.append(Counted(store))
        return counted[0]

    _replay_one_read_a_cycle(name, tmp_path, reader, one_read)


@pytest.mark.parametrize("name", TRACES)
def test_reads_going_on_from_the_last_cycle_give_what_reading_apart_gives(
        name: str, tmp_path: Any) -> None:
    """The daemon's reads go on from the last cycle's (``storage/held_windows.py``): over
    a whole trace, through chunk cuts, evictions and reads that reach the database, what
    reading the store anew gives."""
    held: list[HeldReads] = []

    def reader(store: Store) -> HeldReads:
        held.append(HeldReads(store))
        return held[0]

    _replay_one_read_a_cycle(name, tmp_path, reader)
    # It went on from what it held (~96 % of reads on these traces), or it saved nothing.
    assert held[0].held.held_reads_total > 10 * held[0].held.full_reads_total
