"""The alert state machine, transition by transition, with scripted detectors.

Each test names the Prometheus behaviour it pins (Prometheus' ``rules/alerting.go``) or
the gpuwarden difference (HOLD, orphans).
"""

from __future__ import annotations

import logging

import pytest

from gpuwarden.alerts.alert import AlertState, EventKind, fingerprint
from gpuwarden.alerts.engine import RuleEngine
from gpuwarden.detectors import Finding
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.model import make_labels
from tests.alerts.helpers import GPU0, GPU1, EmptySource, Factory, breach, hold, rule

T0 = 1_700_000_000.0


def engine(*rules: RuleConfig, **kw: float) -> tuple[RuleEngine, Factory]:
    factory = Factory()
    eng = RuleEngine(rules or (rule(),), node="n1", interval=1.0, factory=factory, **kw)
    return eng, factory


def run(eng: RuleEngine, t: float) -> list[tuple[str, str]]:
    return [(str(e.kind), e.alert.name) for e in eng.evaluate(T0 + t, EmptySource())]


def state(eng: RuleEngine) -> list[tuple[str, str]]:
    return [(a.name, str(a.state)) for a in eng.alerts()]


def test_for_keeps_pending_until_exactly_for_then_fires_once() -> None:
    eng, det = engine(rule(for_=30.0))
    det["Hot"].findings = [breach()]
    assert run(eng, 0) == []
    (alert,) = eng.alerts()
    assert alert.state is AlertState.PENDING and alert.active_at == T0
    for t in range(1, 30):
        assert run(eng, t) == [], t
        assert state(eng) == [("Hot", "pending")]
    assert run(eng, 30) == [("firing", "Hot")]  # now - active_at == for: fires
    assert eng.alerts()[0].fired_at == T0 + 30
    assert run(eng, 31) == []  # no second FIRING while it stays firing
    det["Hot"].findings = []
    assert run(eng, 32) == [("resolved", "Hot")]
    resolved = eng.alerts()[0]
    assert resolved.state is AlertState.RESOLVED and resolved.resolved_at == T0 + 32


def test_for_zero_fires_on_first_evaluation() -> None:
    eng, det = engine(rule(for_=0.0))
    det["Hot"].findings = [breach()]
    events = eng.evaluate(T0, EmptySource())
    assert [(e.kind, e.at) for e in events] == [(EventKind.FIRING, T0)]
    assert events[0].alert.active_at == events[0].alert.fired_at == T0


def test_for_shorter_than_interval_is_one_interval() -> None:
    eng, det = engine(rule(for_=0.5))
    det["Hot"].findings = [breach()]
    assert run(eng, 0) == []
    assert run(eng, 1) == [("firing", "Hot")]


def test_a_gap_restarts_the_for_clock() -> None:
    eng, det = engine(rule(for_=10.0))
    det["Hot"].findings = [breach()]
    run(eng, 0)
    run(eng, 9)
    det["Hot"].findings = []
    run(eng, 10)  # one evaluation without the condition: pending is deleted
    assert eng.alerts() == []
    assert [a.name for a in eng.last_pending_dropped] == ["Hot"]
    det["Hot"].findings = [breach()]
    run(eng, 11)
    assert eng.alerts()[0].active_at == T0 + 11
    assert run(eng, 20) == []
    assert run(eng, 21) == [("firing", "Hot")]


def test_hold_keeps_firing_but_never_starts_or_advances_pending() -> None:
    eng, det = engine(rule(for_=5.0, clear=75.0))
    det["Hot"].findings = [hold()]
    run(eng, 0)
    assert eng.alerts() == []  # HOLD starts nothing
    det["Hot"].findings = [breach()]
    run(eng, 1)
    det["Hot"].findings = [hold()]
    run(eng, 2)
    assert eng.alerts() == []  # a pending alert seeing HOLD is dropped
    det["Hot"].findings = [breach()]
    run(eng, 3)
    assert run(eng, 8) == [("firing", "Hot")]
    det["Hot"].findings = [hold(value=77.0)]
    for t in range(9, 100):
        assert run(eng, t) == []
    alert = eng.alerts()[0]
    assert alert.state is AlertState.FIRING and alert.value == 77.0
    assert alert.annotations["value"] == "77"
    det["Hot"].findings = []
    assert run(eng, 100) == [("resolved", "Hot")]


def test_keep_firing_for_bridges_gaps_and_resets_when_the_condition_returns() -> None:
    eng, det = engine(rule(keep_firing_for=10.0))
    det["Hot"].findings = [breach()]
    assert run(eng, 0) == [("firing", "Hot")]
    det["Hot"].findings = []
    for t in range(1, 11):  # KeepFiringSince = t0+1; firing while now - since < 10
        assert run(eng, t) == [], t
        assert eng.alerts()[0].keep_firing_since == T0 + 1
    det["Hot"].findings = [breach()]
    run(eng, 11)
    assert eng.alerts()[0].keep_firing_since is None  # reset by the condition
    det["Hot"].findings = []
    for t in range(12, 22):
        assert run(eng, t) == []
    assert run(eng, 22) == [("resolved", "Hot")]
    assert eng.alerts()[0].resolved_at == T0 + 22


def test_flapping_without_for_fires_and_resolves_each_time_with_for_never_fires() -> None:
    eager, det1 = engine(rule(for_=0.0))
    patient, det2 = engine(rule(for_=3.0))
    events1, events2 = [], []
    for t in range(20):
        det1["Hot"].findings = det2["Hot"].findings = [breach()] if t % 2 == 0 else []
        events1 += run(eager, t)
        events2 += run(patient, t)
    assert events1 == [("firing", "Hot"), ("resolved", "Hot")] * 10
    assert events2 == []  # the `for` clock restarts on every gap: never fires


def test_resolved_is_retained_15_minutes_then_dropped_and_a_new_breach_starts_over() -> None:
    eng, det = engine(rule())
    det["Hot"].findings = [breach()]
    run(eng, 0)
    det["Hot"].findings = []
    run(eng, 1)
    run(eng, 1 + 900)
    assert state(eng) == [("Hot", "resolved")]  # kept while now - resolved_at <= 15 m
    run(eng, 1 + 901)
    assert eng.alerts() == []
    assert eng.take_changes()[1] == [fingerprint(eng._labels(rule(), GPU0))]
    # and a breach on a retained resolved instance is a fresh activation
    det["Hot"].findings = [breach()]
    run(eng, 2000)
    det["Hot"].findings = []
    run(eng, 2001)
    det["Hot"].findings = [breach()]
    assert run(eng, 2002) == [("firing", "Hot")]
    assert eng.alerts()[0].active_at == T0 + 2002


def test_labels_identity_and_annotations() -> None:
    r = rule("KV", labels=(("team", "infer"), ("gpu", "overridden")), severity="critical",
             annotations=(("runbook", "https://runbooks/kv"),))
    eng, det = engine(r)
    det["KV"].findings = [Finding(make_labels(gpu="0"), 0.93, annotations=(("forecast", "60s"),))]
    (event,) = eng.evaluate(T0, EmptySource())
    labels = dict(event.alert.labels)
    # finding labels, node added, rule labels overwrite, alertname and severity last
    assert labels == {"gpu": "overridden", "node": "n1", "team": "infer", "alertname": "KV",
                      "severity": "critical"}
    assert event.alert.fingerprint == fingerprint(labels)
    assert event.alert.annotations == {"runbook": "https://runbooks/kv",
                                       "summary": "KV: value 0.93 > 80", "value": "0.93",
                                       "threshold": "80", "forecast": "60s"}
    api = event.alert.to_api()
    assert api["state"] == "firing" and api["active_at"] == "2023-11-14T22:13:20.000Z"


def test_fingerprint_is_stable_and_alertmanager_compatible() -> None:
    # Value from Alertmanager's model.LabelSet{"alertname": "A", "job": "j"}.Fingerprint()
    # computed with the same FNV-1a 64 algorithm; identical across runs and label order.
    a = fingerprint({"alertname": "A", "job": "j"})
    assert a == fingerprint((("job", "j"), ("alertname", "A")))
    eng1, d1 = engine(rule())
    eng2, d2 = engine(rule())
    d1["Hot"].findings = [breach(GPU0, 90.0), breach(GPU1, 91.0)]
    d2["Hot"].findings = [breach(GPU1, 95.0), breach(GPU0, 99.0)]  # order, values differ
    fps1 = [e.alert.fingerprint for e in eng1.evaluate(T0, EmptySource())]
    fps2 = [e.alert.fingerprint for e in eng2.evaluate(T0 + 5, EmptySource())]
    assert fps1 == fps2 and len(set(fps1)) == 2


def test_a_raising_detector_is_counted_leaves_its_alerts_and_others_carry_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    eng, det = engine(rule("A"), rule("B"))
    det["A"].findings = det["B"].findings = [breach()]
    run(eng, 0)
    det["A"].raises = RuntimeError("detector bug")
    det["B"].findings = []
    with caplog.at_level(logging.ERROR):
        events = run(eng, 1)
    assert events == [("resolved", "B")]
    assert state(eng) == [("A", "firing"), ("B", "resolved")]  # A untouched, not resolved
    assert eng.stats.rule_errors_total == {"A": 1, "B": 0}
    assert "rule A: evaluation failed" in caplog.text
    det["A"].raises = None
    det["A"].findings = []
    assert run(eng, 2) == [("resolved", "A")]


def test_duplicate_label_sets_fail_the_rule_like_prometheus() -> None:
    eng, det = engine(rule())
    det["Hot"].findings = [breach(GPU0, 90.0), breach(GPU0, 91.0)]
    assert run(eng, 0) == []
    assert eng.stats.rule_errors_total["Hot"] == 1


def test_an_unreadable_input_errors_only_the_rules_that_need_it() -> None:
    class Flaky:
        def query(self, signal: str, matchers: object = None, start: float = 0.0,
                  end: float = 0.0) -> list[object]:
            raise OSError("store down")

    eng, det = engine(rule())
    det["Hot"].findings = [breach()]
    assert eng.evaluate(T0, Flaky()) == []  # type: ignore[arg-type]
    assert eng.stats.rule_errors_total["Hot"] == 1 and det["Hot"].windows == []


def test_inputs_are_fetched_once_with_the_longest_lookback() -> None:
    factory = Factory()
    eng = RuleEngine([rule("A"), rule("B")], node="n1", interval=1.0, factory=factory)
    factory["A"].inputs = {"x": 60.0, "y": 10.0}
    factory["B"].inputs = {"x": 300.0}
    eng.configure([rule("A"), rule("B")])  # re-reads inputs from the rebuilt detectors
    assert eng.inputs == {"gpu_temperature_celsius": 60.0}
    factory2 = Factory()
    rules = [rule("A"), rule("B")]
    eng2 = RuleEngine([], node="n1", interval=1.0, factory=factory2)
    eng2._factory = lambda r: _with_inputs(factory2(r), {"A": {"x": 60.0, "y": 10.0},
                                                        "B": {"x": 300.0}}[r.name])
    eng2.configure(rules)
    src = EmptySource()
    eng2.evaluate(T0, src)
    assert sorted(src.queries) == [("x", T0 - 300, T0), ("y", T0 - 10, T0)]
    assert factory2["A"].windows[0] is factory2["B"].windows[0]  # one shared window


def _with_inputs(det: object, inputs: dict[str, float]) -> object:
    det.inputs = inputs  # type: ignore[attr-defined]
    return det


def test_reload_keeps_state_of_surviving_rules_and_resolves_removed_ones() -> None:
    eng, det = engine(rule("A", for_=10.0), rule("B"))
    det["A"].findings = det["B"].findings = [breach()]
    run(eng, 0)
    assert state(eng) == [("A", "pending"), ("B", "firing")]
    eng.configure([rule("A", for_=10.0)])  # B removed
    det["A"].findings = [breach()]
    assert run(eng, 5) == [("resolved", "B")]
    assert run(eng, 10) == [("firing", "A")]  # A's for clock survived the reload
    eng.configure([rule("A", for_=10.0, enabled=False)])
    assert run(eng, 11) == [("resolved", "A")]


def test_unbuildable_rule_is_skipped_and_counted() -> None:
    def factory(r: RuleConfig) -> object:
        if r.name == "Bad":
            raise ValueError("unknown detector")
        return Factory()(r)

    eng = RuleEngine([rule("Bad"), rule("Good")], node="n1", interval=1.0,
                     factory=factory)  # type: ignore[arg-type]
    assert [r.name for r in eng.rules] == ["Good"]
    assert eng.stats.rule_errors_total == {"Bad": 1, "Good": 0}


def test_counts_and_events_are_deterministic() -> None:
    def script(eng: RuleEngine, det: Factory) -> list[object]:
        out: list[object] = []
        for t in range(40):
            det["Hot"].findings = [breach(GPU0)] + ([breach(GPU1)] if 5 < t < 25 else [])
            out += [(e.kind, e.at, e.alert.fingerprint, e.alert.state) for e in
                    eng.evaluate(T0 + t, EmptySource())]
        return out

    a, b = engine(rule(for_=3.0)), engine(rule(for_=3.0))
    assert script(*a) == script(*b)
    assert a[0].counts() == {("Hot", "pending"): 0, ("Hot", "firing"): 1,
                             ("Hot", "resolved"): 1}


def test_default_summary_without_threshold_or_template() -> None:
    eng, det = engine(rule(threshold=None))
    det["Hot"].findings = [breach(value=0.5)]
    (event,) = eng.evaluate(T0, EmptySource())
    assert event.alert.annotations["summary"] == "Hot: value 0.5"


def test_every_evaluates_a_rule_and_reads_its_inputs_at_most_that_often() -> None:
    factory = Factory()
    eng = RuleEngine([], node="n1", interval=1.0, factory=factory)
    eng._factory = lambda r: _with_inputs(factory(r), {"Fast": {"x": 60.0},
                                                       "Slow": {"long": 21600.0}}[r.name])
    eng.configure([rule("Fast"), rule("Slow", every=60.0)])
    factory["Slow"].findings = [breach()]
    src = EmptySource()
    for t in range(125):
        eng.evaluate(T0 + t, src)
    slow_reads = [q for q in src.queries if q[0] == "long"]
    assert [q[2] - T0 for q in slow_reads] == [0, 60, 120]  # 3 of 125 evaluations
    assert len(factory["Slow"].windows) == 3 and len(factory["Fast"].windows) == 125
    assert state(eng) == [("Slow", "firing")]  # its alert stays between evaluations
