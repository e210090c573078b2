"""The incident corpus replayed through a real Store and the rule engine.

Two layers: stand-in threshold detectors (``harness.STUB_RULES``) pin the harness, the
engine and the store together on SQLite and PostgreSQL, and check backtest == live;
the real default rules (``detectors.defaults``), with the trace's own ``rules`` (TOML, as
an operator writes them) if it has any, are checked against every trace's ``expect``.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytest

from gpuwarden.tools.backtest import replay
from tests.incidents.corpus import T0, load, names
from tests.incidents.harness import (
    STUB_RULES,
    check_expectations,
    replay_live,
    stub_factory,
    write_all,
)
from tests.storage.conftest import Backend, backend

__all__ = ["backend"]


def _defaults() -> Any:
    try:
        defaults = importlib.import_module("gpuwarden.detectors.defaults")
        importlib.import_module("gpuwarden.detectors").build_detector  # noqa: B018
    except (ImportError, AttributeError):
        return None
    return defaults


def by_rule(fired: list[Any]) -> list[tuple[str, str, float, float | None]]:
    return [(name, labels.get("server") or labels.get("gpu", ""), at, end)
            for name, labels, at, end in fired]


def test_stub_rules_kv_ramp_fire_and_resolve_on_both_backends(backend: Backend) -> None:
    store = backend.open(node="gpu-node-01")
    got, _ = replay_live(load("kv-ramp-to-saturation"), store, STUB_RULES, stub_factory)
    ((name, server, at, end),) = by_rule(got.fired)
    # crossing 0.90 at t~657 (+-noise) + for 30 s; below the 0.85 clear at t~915
    assert (name, server) == ("KVCacheNearFull", "vllm-0")
    assert 680 <= at <= 700 and 910 <= end <= 920  # type: ignore[operator]


def test_stub_rules_server_crash(tmp_path: Any) -> None:
    from gpuwarden.storage import open_store

    with open_store(f"sqlite:///{tmp_path / 's.db'}", node="gpu-node-01") as store:
        got, _ = replay_live(load("server-crash"), store, STUB_RULES, stub_factory)
    assert by_rule(got.fired) == [("ServerDown", "vllm-1", 330.0, 600.0)]


def test_stub_rules_stay_silent_on_the_calm_hour(tmp_path: Any) -> None:
    from gpuwarden.storage import open_store

    with open_store(f"sqlite:///{tmp_path / 's.db'}", node="gpu-node-01") as store:
        got, engine = replay_live(load("calm-hour"), store, STUB_RULES, stub_factory)
    assert got.fired == [] and engine.alerts() == []


def test_backtest_equals_live(tmp_path: Any) -> None:
    """The determinism promise: a backtest over stored samples == the live run."""
    from gpuwarden.storage import open_store

    trace = load("kv-ramp-to-saturation")
    with open_store(f"sqlite:///{tmp_path / 'live.db'}", node=trace.node) as store:
        live, _ = replay_live(trace, store, STUB_RULES, stub_factory)
    with open_store(f"sqlite:///{tmp_path / 'bt.db'}", node=trace.node) as store:
        write_all(trace, store)
        store.flush()  # into chunks: the backtest reads the database, not just the head
    with open_store(f"sqlite:///{tmp_path / 'bt.db'}", node=trace.node) as store:
        from gpuwarden.alerts.engine import RuleEngine

        engine = RuleEngine(STUB_RULES, node=trace.node, interval=1.0, factory=stub_factory)
        result = replay(STUB_RULES, store, node=trace.node, start=T0,
                        end=T0 + trace.duration - 1, interval=1.0, engine=engine)
    assert [(str(e.kind), e.at, e.alert.fingerprint) for e in result.events] == live.key()
    (kv,) = [r for r in result.rules if r.rule == "KVCacheNearFull"]
    assert kv.fired == 1 and kv.first_fired == [live.events[0].at]


DEFAULTS = _defaults()


@pytest.mark.skipif(DEFAULTS is None, reason="detectors (build_detector, defaults) not landed")
@pytest.mark.parametrize("name", names())
def test_default_rules_on_corpus(name: str, tmp_path: Any) -> None:
    from gpuwarden.config import parse_config
    from gpuwarden.storage import open_store

    trace = load(name)
    rules = DEFAULTS.effective_rules(parse_config(trace.rules).rules)
    with open_store(f"sqlite:///{tmp_path / 's.db'}", node=trace.node) as store:
        got, engine = replay_live(trace, store, rules, None)
    assert sum(engine.stats.rule_errors_total.values()) == 0, engine.stats.rule_errors_total
    check_expectations(trace, got)
