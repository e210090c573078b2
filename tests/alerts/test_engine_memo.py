"""The engine's and the published list's memos change nothing a user sees.

The engine keeps, per rule, each finding's labels and fingerprint, and per instance the
finding its value and annotations were made from; each rule's step walks only that
rule's instances; ``Alerting.publish`` rebuilds only what changed. :class:`Reference` is
the engine with those memos defeated and the state update as it was before them (every
instance walked for every rule); random scripts of findings, reloads, restores and
failures must give both the same events, instances, changes and published JSON.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gpuwarden.alerts.alert import Alert, AlertEvent, AlertState, EventKind
from gpuwarden.alerts.engine import RuleEngine, _CompiledRule
from gpuwarden.daemon.alerting import Alerting
from gpuwarden.detectors import Finding, Status
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.model import Labels, make_labels
from tests.alerts.helpers import EmptySource, Factory, rule

T0 = 1_700_000_000.0


class Reference(RuleEngine):
    """The engine without its memos: every finding labelled, hashed and annotated anew,
    and every evaluation a new ``revision`` (the published list made anew)."""

    def evaluate(self, now: float, source: Any) -> list[AlertEvent]:
        self.revision += 1
        return super().evaluate(now, source)

    def _match(self, rule: _CompiledRule,
               findings: Iterable[Finding]) -> dict[str, tuple[Labels, Finding]]:
        rule.identities = {}
        return super()._match(rule, findings)

    def _step(self, rule: RuleConfig, matched: Mapping[str, tuple[Labels, Finding]],
              now: float, events: list[AlertEvent], live: Sequence[str]) -> None:
        held: set[str] = set()
        for fp, (labels, finding) in matched.items():
            alert = self._alerts.get(fp)
            if alert is not None and alert.state is not AlertState.RESOLVED:
                if alert.state is AlertState.PENDING and finding.status is Status.HOLD:
                    continue
                alert.value = finding.value
                alert.annotations = self._annotations(rule, finding, labels)
                alert.actions = rule.actions
                held.add(fp)
            elif finding.status is Status.BREACH:
                self._alerts[fp] = Alert(
                    name=rule.name, labels=labels,
                    annotations=self._annotations(rule, finding, labels),
                    state=AlertState.PENDING, value=finding.value, active_at=now,
                    actions=rule.actions, fingerprint=fp,
                )
                self._changed[fp] = self._alerts[fp]
                self._dropped.discard(fp)
                held.add(fp)
        for fp, alert in sorted(self._alerts.items()):
            if alert.name != rule.name or alert.state is AlertState.RESOLVED:
                continue
            if fp in held:
                if alert.keep_firing_since is not None:
                    alert.keep_firing_since = None
                    self._changed[fp] = alert
                if alert.state is AlertState.PENDING and now - alert.active_at >= rule.for_:
                    alert.state = AlertState.FIRING
                    alert.fired_at = now
                    self._changed[fp] = alert
                    events.append(AlertEvent(EventKind.FIRING, _copy(alert), now))
                continue
            self._inactive(alert, now, rule.keep_firing_for, events)

    def _resolve_orphans(self, now: float, events: list[AlertEvent],
                         live: Mapping[str, Sequence[str]]) -> None:
        for _fp, alert in sorted(self._alerts.items()):
            if alert.name not in self._rules and alert.state is not AlertState.RESOLVED:
                self._inactive(alert, now, 0.0, events)


def _copy(alert: Alert) -> Alert:
    return dataclasses.replace(alert, annotations=dict(alert.annotations))


LABELS = [make_labels(node="n1", gpu=str(i)) for i in range(3)] + [
    make_labels(gpu="0", node="n1"[::-1]),  # another node's
    (("gpu", "1"), ("node", "n1")),  # the same set as LABELS[1], another tuple
]
# 0.0/-0.0 and 1/1.0 compare equal but print differently: a memo must tell them apart.
VALUES = [0.0, -0.0, 1, 1.0, 90.0, 90.5, float("nan"), float("inf")]
RULES = {
    "A": rule("A", for_=2.0, summary="{value} on {gpu}"),
    "B": rule("B", for_=0.0, keep_firing_for=3.0, summary="{value:.1f} {missing}",
              labels=(("team", "infra"),), annotations=(("runbook", "r"),)),
    "C": rule("C", for_=1.0, threshold=None, summary=""),
}
RELOADED = {  # the same names, other objects: annotations and labels made anew
    "A": rule("A", for_=2.0, summary="{value:g} now on {gpu}"),
    "B": rule("B", for_=0.0, keep_firing_for=3.0, summary="{value:.1f} {missing}",
              labels=(("team", "gpu"),)),
    "C": rule("C", for_=1.0, threshold=None, summary=""),
}

finding = st.builds(
    Finding, st.sampled_from(LABELS), st.sampled_from(VALUES),
    st.sampled_from([Status.BREACH, Status.BREACH, Status.HOLD]),
    st.sampled_from([(), (("description", "d"),), (("description", "e"),)]))
step: st.SearchStrategy[Any] = st.one_of(
    st.dictionaries(st.sampled_from(sorted(RULES)), st.lists(finding, min_size=1, max_size=3),
                    min_size=1),
    st.sampled_from(["reload", "reorder", "drop B", "restore B", "raise A", "repeat"]),
    st.just({}))


def observed(eng: RuleEngine, alerting: Alerting, events: list[AlertEvent]) -> str:
    """Everything a user of the engine can see after one evaluation, as text (NaN-safe);
    the published list must be the live instances' JSON."""
    changed, dropped = eng.take_changes()
    fresh = [a.to_api() for a in eng.alerts(AlertState.PENDING, AlertState.FIRING)]
    assert repr(alerting.alerts_json()) == repr(fresh)
    return repr((
        [(str(e.kind), e.at, dataclasses.astuple(e.alert)) for e in events],
        [dataclasses.astuple(a) for a in eng.alerts()],
        [dataclasses.astuple(a) for a in changed], dropped,
        [dataclasses.astuple(a) for a in eng.last_pending_dropped],
        sorted(eng.stats.rule_errors_total.items()), sorted(eng.counts().items()), fresh,
    ))


@settings(max_examples=400, deadline=None)
@given(st.lists(step, min_size=1, max_size=25), st.booleans())
@example([{"A": [Finding(LABELS[0], 90.0)]}, "reload", "repeat"], False)  # new summary
@example([{"B": [Finding(LABELS[1], 1.0)]}, "drop B", "restore B", {}], False)  # orphan
@example([{"A": [Finding(LABELS[0], 7.0)]}, "repeat"], True)  # restored, same value
@example([{"A": [Finding(LABELS[0], 1.0)], "C": [Finding(LABELS[0], 1.0)]}, "reorder"], False)
@example([{"A": [Finding(LABELS[1], 9.0), Finding(LABELS[4], 9.0)]}], False)  # duplicate
def test_engine_equals_its_reference_without_memos(script: list[Any], restored: bool) -> None:
    runs = []
    for cls in (RuleEngine, Reference):
        factory = Factory()
        eng = cls(list(RULES.values()), node="n1", interval=1.0, factory=factory,
                  resolved_retention=4.0)
        alerting = Alerting()
        alerting.rule_engine = eng
        if restored:  # persisted with other annotations: the first refresh remakes them
            labels = tuple(sorted({**dict(LABELS[0]), "alertname": "A",
                                   "severity": "warning"}.items()))
            eng.restore([Alert("A", labels, {"summary": "from the store"}, AlertState.FIRING,
                               7.0, T0 - 60, fired_at=T0 - 30)])
            alerting.publish()
        seen, findings = [], {}
        for k, what in enumerate(script):
            if what == "reload":
                eng.configure(list(RELOADED.values()))
            elif what == "reorder":  # alerts() lists by rule order
                eng.configure(list(RULES.values())[::-1])
            elif what == "drop B":
                eng.configure([RULES["A"], RULES["C"]])
            elif what == "restore B":
                eng.configure(list(RULES.values()))
            elif what == "raise A" and "A" in factory.built:
                factory["A"].raises = RuntimeError("a bug")
            elif isinstance(what, dict):
                findings = what
            for name, det in factory.built.items():
                det.findings = list(findings.get(name, []))
                if what != "raise A":
                    det.raises = None
            events: list[AlertEvent] = []
            alerting.on_alert_events = [events.extend]
            alerting.evaluate(T0 + k, EmptySource(), None)  # type: ignore[arg-type]
            seen.append(observed(eng, alerting, events))
        runs.append(seen)
    assert runs[0] == runs[1]


def test_an_equal_finding_keeps_the_annotations_a_changed_one_remakes_them() -> None:
    factory = Factory()
    eng = RuleEngine([rule("A", summary="{value} on {gpu}")], node="n1", interval=1.0,
                     factory=factory)
    shown: list[tuple[str, str]] = []
    for value in (0.0, 0.0, -0.0, 1, 1.0, 1.0):
        factory["A"].findings = [Finding(LABELS[0], value)]
        eng.evaluate(T0 + len(shown), EmptySource())
        (alert,) = eng.alerts()
        shown.append((alert.annotations["summary"], alert.annotations["value"]))
    assert shown == [("0.0 on 0", "0"), ("0.0 on 0", "0"), ("-0.0 on 0", "-0"),
                     ("1 on 0", "1"), ("1.0 on 0", "1"), ("1.0 on 0", "1")]


def test_published_list_is_rebuilt_only_when_an_instance_changed() -> None:
    factory = Factory()
    eng = RuleEngine([rule("A", for_=1.0)], node="n1", interval=1.0, factory=factory)
    alerting = Alerting()
    alerting.rule_engine = eng
    factory["A"].findings = [Finding(LABELS[0], 90.0)]
    alerting.evaluate(T0, EmptySource(), None)  # type: ignore[arg-type]
    first = alerting.alerts_json()
    assert [(a["state"], a["value"]) for a in first] == [("pending", 90.0)]
    alerting.evaluate(T0 + 0.5, EmptySource(), None)  # type: ignore[arg-type]
    assert alerting.alerts_json() is first  # the same finding: nothing to redo
    alerting.evaluate(T0 + 1, EmptySource(), None)  # type: ignore[arg-type]
    assert [(a["state"], a["value"]) for a in alerting.alerts_json()] == [("firing", 90.0)]
    factory["A"].findings = [Finding(LABELS[0], 91.0)]
    alerting.evaluate(T0 + 2, EmptySource(), None)  # type: ignore[arg-type]
    assert [(a["state"], a["value"]) for a in alerting.alerts_json()] == [("firing", 91.0)]
    factory["A"].findings = []
    alerting.evaluate(T0 + 3, EmptySource(), None)  # type: ignore[arg-type]
    assert alerting.alerts_json() == []


def test_published_list_follows_a_new_engine_at_the_same_revision() -> None:
    alerting = Alerting()
    for value in (90.0, 95.0):
        factory = Factory()
        eng = RuleEngine([rule("A")], node="n1", interval=1.0, factory=factory)
        alerting.rule_engine = eng
        factory["A"].findings = [Finding(LABELS[0], value)]
        alerting.evaluate(T0, EmptySource(), None)  # type: ignore[arg-type]
        assert [a["value"] for a in alerting.alerts_json()] == [value]
