"""The rule engine: detectors' findings through Prometheus' alert state machine.

Why Prometheus' machine, ported transition for transition (Prometheus'
``rules/alerting.go``): on-call engineers already know what ``for``,
``keep_firing_for``, pending and resolved mean there, and a receiver written for
Alertmanager expects exactly those lifecycles. Differences are deliberate and few:

* Detectors may answer ``HOLD`` (value between ``clear`` and ``threshold``): it keeps
  a *firing* alert firing (hysteresis) but never starts or advances a *pending* one,
  which is dropped as if the condition had gone.
* A rule whose detector raises (or whose input could not be read) leaves its alerts
  exactly as they were, as a failing PromQL query does in Prometheus: a bug or a store
  hiccup must neither resolve a real incident nor fire a new one. It is logged and
  counted per rule, and the other rules carry on.
* Alerts of a rule that disappeared on reload are resolved at the next evaluation
  (Prometheus drops them silently), so receivers that saw the firing get the notice.

Determinism: ``evaluate`` depends only on the rules, the sequence of ``now`` values
and what the source returns; findings are processed in fingerprint order and there is
no wall clock inside. That is what makes ``gpuwarden backtest`` and the incident
corpus replay exactly what the live daemon would have done.

Cost: it runs every cycle, and most cycles find what the last one found. So each rule
remembers its findings' labels and fingerprints, an instance is re-annotated only when
its finding changed, and each rule's step walks only that rule's instances. None of
this changes what anyone sees: tests/alerts/test_engine_memo.py replays random scripts
against the engine without it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from gpuwarden.alerts.alert import Alert, AlertEvent, AlertState, EventKind, fingerprint
from gpuwarden.detectors import Detector, Finding, Status, Window, build_detector
from gpuwarden.detectors.defaults import render_summary
from gpuwarden.errors import DuplicateLabelSetError
from gpuwarden.model import Labels, SeriesData
from gpuwarden.promql.prefetch import read_ranges, widest
from gpuwarden.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from gpuwarden.detectors.rule import RuleConfig
    from gpuwarden.model import SelfMetric

log = logging.getLogger(__name__)
# One line a minute per unreadable signal, not one per cycle of a database outage.
_quiet = RateLimitedLog(log)

#: How long a resolved instance stays visible (and re-sendable), as in Prometheus.
RESOLVED_RETENTION = 15 * 60.0

DetectorFactory = Callable[["RuleConfig"], Detector]
SummaryRenderer = Callable[["RuleConfig", Finding, Mapping[str, str]], str]


class SeriesSource(Protocol):
    """What the engine reads: the store, or the backtest's in-memory slices."""

    def query(
        self,
        signal: str,
        matchers: Mapping[str, str] | None = None,
        start: float = ...,
        end: float = ...,
    ) -> list[SeriesData]: ...


def read_inputs(
    source: SeriesSource, lookbacks: Mapping[str, float], now: float
) -> dict[str, list[SeriesData] | Exception]:
    """Each signal's series over ``[now - lookback, now]``, or the error reading it raised.

    A source with ``query_many`` (the store) reads them all in one go: one walk over its
    in-memory head and at most one database read, where a query per signal pays the
    walk, the sort and the read deadline's thread hop once per signal. Same series
    either way (``tests/incidents/test_batched_reads.py``).
    """
    got = read_ranges(source, {s: (now - lb, now) for s, lb in lookbacks.items()})
    return {s: got[s] for s in lookbacks}


@dataclass(slots=True)
class _CompiledRule:
    config: RuleConfig
    detector: Detector
    inputs: dict[str, float]
    #: A finding's labels -> the alert's labels and fingerprint, for the label sets of
    #: the rule's last evaluation. Both depend only on the finding's labels and the rule
    #: (``RuleEngine._labels``), and most label sets find again every cycle: hashing
    #: the same labels anew each time cost more than the state machine itself.
    identities: dict[Labels, tuple[Labels, str]] = field(default_factory=dict)


@dataclass(slots=True)
class RuleStats:
    """Per-evaluation bookkeeping the daemon exports as self-metrics."""

    evaluations_total: int = 0
    last_evaluation_seconds: float = 0.0
    rule_errors_total: dict[str, int] = field(default_factory=dict)
    events_total: dict[str, int] = field(default_factory=dict)


def format_value(value: float) -> str:
    """Compact human value for annotations: 0.931, 2.41, 1.2e+09, NaN."""
    if math.isnan(value):
        return "NaN"
    return f"{value:.4g}"


class RuleEngine:
    """Evaluates rules against a series source and keeps every alert instance.

    Not thread-safe: the daemon calls it from the cycle (under its cycle lock) and
    publishes an immutable snapshot for the HTTP thread.
    """

    def __init__(
        self,
        rules: Sequence[RuleConfig],
        *,
        node: str,
        interval: float,
        factory: DetectorFactory | None = None,
        summary: SummaryRenderer | None = None,
        resolved_retention: float = RESOLVED_RETENTION,
    ) -> None:
        self.node = node
        self.interval = interval
        self.resolved_retention = resolved_retention
        self._factory = factory or build_detector
        self._summary = summary or render_summary
        self._rules: dict[str, _CompiledRule] = {}
        self._needed: dict[str, float] = {}
        self._last_evaluated: dict[str, float] = {}
        self._alerts: dict[str, Alert] = {}
        self._changed: dict[str, Alert] = {}
        self._dropped: set[str] = set()
        # fingerprint -> (alert, rule, finding) its value and annotations were last made
        # from: a finding equal to that one would make them again, identical (``_refresh``).
        self._shown: dict[str, tuple[Alert, RuleConfig, Finding]] = {}
        #: Changes whenever what ``alerts()`` returns may have changed (an instance
        #: created, refreshed with another value, transitioned, dropped; a reload), so a
        #: reader can tell "nothing to redo" without comparing every instance.
        self.revision = 0
        self.stats = RuleStats()
        #: Pending instances dropped by the last evaluation without ever firing.
        self.last_pending_dropped: list[Alert] = []
        self.configure(rules)

    # --- configuration ---------------------------------------------------------------

    def configure(self, rules: Sequence[RuleConfig]) -> None:
        """(Re)build detectors; alerts of rules that still exist keep their state.

        A rule that cannot be built is logged and counted, and left out: one bad rule
        must not take the others down with it.
        """
        compiled: dict[str, _CompiledRule] = {}
        for rule in rules:
            if not rule.enabled:
                continue
            try:
                detector = self._factory(rule)
                inputs = {str(k): float(v) for k, v in detector.inputs.items()}
            except Exception:
                log.exception("rule %s: cannot build its detector; rule skipped", rule.name)
                self._count_error(rule.name)
                continue
            compiled[rule.name] = _CompiledRule(rule, detector, inputs)
        self._rules = compiled
        self._needed = widest(*(c.inputs for c in compiled.values()))
        self.revision += 1  # alerts() orders by rule
        # Every rule's error counter from 0 (a rule that could not be built keeps its
        # count); a rule gone from the config is gone from /metrics too.
        errors = self.stats.rule_errors_total
        self.stats.rule_errors_total = {r.name: errors.get(r.name, 0)
                                        for r in rules if r.enabled}

    @property
    def rules(self) -> list[RuleConfig]:
        return [c.config for c in self._rules.values()]

    @property
    def inputs(self) -> dict[str, float]:
        """Stored signal -> longest lookback any rule needs (what one evaluation reads)."""
        return dict(self._needed)

    # --- evaluation ------------------------------------------------------------------

    def _due(self, now: float) -> list[_CompiledRule]:
        """Rules to evaluate now: all, except those with an ``every`` not yet elapsed.

        Quality-drift rules look back hours over canary scores that change once a
        minute; reading that window every second would cost far more than the rest.
        """
        due = []
        for rule in self._rules.values():
            last = self._last_evaluated.get(rule.config.name)
            if rule.config.every <= 0 or last is None or now - last >= rule.config.every:
                due.append(rule)
        return due

    def due_inputs(self, now: float) -> dict[str, float]:
        """What an evaluation at ``now`` reads: each input of the rules due then, and how
        far back (seconds), the furthest any of them needs it."""
        return widest(*(r.inputs for r in self._due(now)))

    def evaluate(self, now: float, source: SeriesSource) -> list[AlertEvent]:
        """One evaluation at ``now``: read inputs once, run every due detector, step states."""
        started = time.perf_counter()
        data: dict[str, Sequence[SeriesData]] = {}
        unreadable: set[str] = set()
        first_error = ""
        due = self._due(now)
        for signal, got in read_inputs(source, widest(*(r.inputs for r in due)), now).items():
            if isinstance(got, Exception):
                unreadable.add(signal)
                first_error = first_error or f"{signal}: {got}"
            else:
                data[signal] = got
        if unreadable:
            _quiet.warning("read", "rules: cannot read %d signal(s) (%s); rules on them are "
                           "skipped and counted; first error: %s", len(unreadable),
                           ", ".join(sorted(unreadable)), first_error)
        window = Window(now=now, interval=self.interval, data=data)
        events: list[AlertEvent] = []
        self.last_pending_dropped = []
        live = self._live_by_rule()
        for rule in due:
            self._last_evaluated[rule.config.name] = now
            missing = sorted(unreadable.intersection(rule.inputs))
            if missing:
                self._count_error(rule.config.name)
                continue
            try:
                findings = rule.detector.evaluate(window)
                matched = self._match(rule, findings)
            except Exception:
                log.exception("rule %s: evaluation failed; its alerts are left as they were",
                              rule.config.name)
                self._count_error(rule.config.name)
                continue
            self._step(rule.config, matched, now, events, live.get(rule.config.name, ()))
        self._resolve_orphans(now, events, live)
        self._expire(now)
        for event in events:
            kind = str(event.kind)
            self.stats.events_total[kind] = self.stats.events_total.get(kind, 0) + 1
        self.stats.evaluations_total += 1
        self.stats.last_evaluation_seconds = time.perf_counter() - started
        return events

    def _labels(self, rule: RuleConfig, finding_labels: Labels) -> Labels:
        """Finding labels, then rule labels (overwrite), then alertname and severity."""
        merged = dict(finding_labels)
        if self.node:  # the fleet's engine has none: a finding names its node, if any
            merged.setdefault("node", self.node)
        merged.update(rule.labels)
        merged["alertname"] = rule.name
        merged["severity"] = rule.severity
        return tuple(sorted(merged.items()))

    def _live_by_rule(self) -> dict[str, list[str]]:
        """Fingerprints of the pending and firing instances, per rule, in order.

        Taken once per evaluation: a rule's step changes only its own instances, so each
        rule's share stays what its step needs (plus what the step itself creates), and
        no step has to walk every rule's instances.
        """
        live: dict[str, list[str]] = {}
        for fp, alert in sorted(self._alerts.items()):
            if alert.state is not AlertState.RESOLVED:
                live.setdefault(alert.name, []).append(fp)
        return live

    def _match(
        self, rule: _CompiledRule, findings: Iterable[Finding]
    ) -> dict[str, tuple[Labels, Finding]]:
        matched: dict[str, tuple[Labels, Finding]] = {}
        known = rule.identities
        seen: dict[Labels, tuple[Labels, str]] = {}
        for finding in findings:
            identity = known.get(finding.labels)
            if identity is None:
                labels = self._labels(rule.config, finding.labels)
                identity = (labels, fingerprint(labels))
            seen[finding.labels] = identity
            labels, fp = identity
            if fp in matched:
                raise DuplicateLabelSetError(
                    f"two findings of rule {rule.config.name} have the same label set "
                    f"{dict(labels)}"
                )
            matched[fp] = (labels, finding)
        rule.identities = seen  # only the current label sets: no growth with churn
        return dict(sorted(matched.items()))

    def _annotations(
        self, rule: RuleConfig, finding: Finding, labels: Labels
    ) -> dict[str, str]:
        label_map = dict(labels)
        out = dict(rule.annotations)
        try:
            out["summary"] = self._summary(rule, finding, label_map)
        except Exception as exc:  # a template error must not fail the rule (Prometheus)
            out["summary"] = f"<error expanding template: {exc}>"
        out["value"] = format_value(finding.value)
        if rule.threshold is not None:
            out["threshold"] = f"{rule.threshold:g}"
        out.update(finding.annotations)
        return out

    def _step(
        self,
        rule: RuleConfig,
        matched: Mapping[str, tuple[Labels, Finding]],
        now: float,
        events: list[AlertEvent],
        live: Sequence[str],
    ) -> None:
        """Prometheus' ``AlertingRule.Eval`` state update for one rule.

        ``live``: the rule's pending and firing instances before this step, in
        fingerprint order (``_live_by_rule``).
        """
        held: set[str] = set()  # instances the condition (BREACH or HOLD) keeps alive
        created: list[str] = []
        for fp, (labels, finding) in matched.items():
            alert = self._alerts.get(fp)
            if alert is not None and alert.state is not AlertState.RESOLVED:
                if alert.state is AlertState.PENDING and finding.status is Status.HOLD:
                    continue  # HOLD never advances a pending alert: treated as gone
                self._refresh(alert, rule, finding, labels)
                held.add(fp)
            elif finding.status is Status.BREACH:
                alert = Alert(
                    name=rule.name, labels=labels,
                    annotations=self._annotations(rule, finding, labels),
                    state=AlertState.PENDING, value=finding.value, active_at=now,
                    actions=rule.actions, fingerprint=fp,
                )
                self._alerts[fp] = alert
                self._shown[fp] = (alert, rule, finding)
                self._changed[fp] = alert
                self._dropped.discard(fp)
                self.revision += 1
                held.add(fp)
                created.append(fp)
        for fp in sorted({*live, *created}) if created else live:
            alert = self._alerts.get(fp)
            if alert is None or alert.name != rule.name or alert.state is AlertState.RESOLVED:
                continue
            if fp in held:
                if alert.keep_firing_since is not None:
                    alert.keep_firing_since = None
                    self._changed[fp] = alert
                if alert.state is AlertState.PENDING and now - alert.active_at >= rule.for_:
                    alert.state = AlertState.FIRING
                    alert.fired_at = now
                    self._changed[fp] = alert
                    self.revision += 1
                    events.append(AlertEvent(EventKind.FIRING, _snapshot(alert), now))
                continue
            self._inactive(alert, now, rule.keep_firing_for, events)

    def _refresh(self, alert: Alert, rule: RuleConfig, finding: Finding,
                 labels: Labels) -> None:
        """A live instance's value and annotations from this evaluation's finding.

        Made again only when the finding differs from the one they were made from: the
        annotations are a function of the rule, the finding and the labels (one
        fingerprint, one label set), and a steady condition (a server down, a setting too
        high) finds the same every cycle.
        """
        alert.actions = rule.actions
        shown = self._shown.get(alert.fingerprint)
        if (shown is not None and shown[0] is alert and shown[1] is rule
                and _same_finding(shown[2], finding)):
            return
        alert.value = finding.value
        alert.annotations = self._annotations(rule, finding, labels)
        self._shown[alert.fingerprint] = (alert, rule, finding)
        self.revision += 1

    def _inactive(
        self, alert: Alert, now: float, keep_firing_for: float, events: list[AlertEvent]
    ) -> None:
        """The condition no longer holds for a live alert."""
        fp = alert.fingerprint
        if alert.state is AlertState.PENDING:
            self.revision += 1
            del self._alerts[fp]
            self._shown.pop(fp, None)
            self._changed.pop(fp, None)
            self._dropped.add(fp)
            self.last_pending_dropped.append(alert)
            return
        if keep_firing_for > 0:
            if alert.keep_firing_since is None:
                alert.keep_firing_since = now
                self._changed[fp] = alert
            if now - alert.keep_firing_since < keep_firing_for:
                return
        self.revision += 1
        alert.state = AlertState.RESOLVED
        alert.resolved_at = now
        alert.keep_firing_since = None
        self._changed[fp] = alert
        events.append(AlertEvent(EventKind.RESOLVED, _snapshot(alert), now))

    def _resolve_orphans(self, now: float, events: list[AlertEvent],
                         live: Mapping[str, Sequence[str]]) -> None:
        """Alerts whose rule is gone (reload, disabled): resolve or drop them now.

        ``live``: the pending and firing instances per rule before the rules' steps
        (``_live_by_rule``); no step touches another rule's instances.
        """
        orphans = [fp for name, fps in live.items() if name not in self._rules for fp in fps]
        for fp in sorted(orphans):
            alert = self._alerts.get(fp)
            if (alert is not None and alert.name not in self._rules
                    and alert.state is not AlertState.RESOLVED):
                self._inactive(alert, now, 0.0, events)

    def _expire(self, now: float) -> None:
        for fp, alert in list(self._alerts.items()):
            if (
                alert.state is AlertState.RESOLVED
                and alert.resolved_at is not None
                and now - alert.resolved_at > self.resolved_retention
            ):
                del self._alerts[fp]
                self._shown.pop(fp, None)
                self._changed.pop(fp, None)
                self._dropped.add(fp)
                self.revision += 1

    def _count_error(self, rule: str) -> None:
        self.stats.rule_errors_total[rule] = self.stats.rule_errors_total.get(rule, 0) + 1

    # --- state access ----------------------------------------------------------------

    def alerts(self, *states: AlertState) -> list[Alert]:
        """Current instances (optionally only in ``states``), by rule then fingerprint."""
        order = {name: i for i, name in enumerate(self._rules)}
        chosen = [a for a in self._alerts.values() if not states or a.state in states]
        return sorted(chosen, key=lambda a: (order.get(a.name, len(order)), a.name,
                                             a.fingerprint))

    def counts(self) -> dict[tuple[str, str], int]:
        """(alertname, state) -> instances, with zeros for every rule's pending/firing."""
        out = {(name, str(s)): 0 for name in self._rules
               for s in (AlertState.PENDING, AlertState.FIRING)}
        for alert in self._alerts.values():
            key = (alert.name, str(alert.state))
            out[key] = out.get(key, 0) + 1
        return out

    def take_changes(self) -> tuple[list[Alert], list[str]]:
        """Instances created or transitioned, and fingerprints dropped, since last call.

        Value and annotation refreshes are not changes: persisting them every second
        would cost a transaction per cycle for nothing a restart needs.
        """
        changed = [_snapshot(a) for _, a in sorted(self._changed.items())]
        dropped = sorted(self._dropped)
        self._changed.clear()
        self._dropped.clear()
        return changed, dropped

    def restore(self, alerts: Iterable[Alert]) -> int:
        """Adopt persisted instances (after a restart); in-memory ones take precedence.

        A restored firing alert fires on without a new FIRING event; if its condition
        is gone at the next evaluation it resolves normally (with a RESOLVED event).
        """
        adopted = 0
        for alert in alerts:
            if alert.fingerprint in self._alerts:
                continue
            rule = self._rules.get(alert.name)
            if rule is not None:
                alert.actions = rule.config.actions
            self._alerts[alert.fingerprint] = alert
            adopted += 1
        self.revision += 1
        return adopted


def alert_self_metrics(
    engine: RuleEngine, *, state_errors: int = 0, delivery_errors: int = 0
) -> list[SelfMetric]:
    """The engine's share of gpuwarden's own ``/metrics``."""
    from gpuwarden.alerts.outcomes import ALERT_EVENTS, EVENT_KINDS, RULE_ERRORS
    from gpuwarden.model import SelfMetric

    stats = engine.stats
    counts = tuple(({"alertname": name, "state": st}, float(n))
                   for (name, st), n in sorted(engine.counts().items()))
    errors = tuple(({"rule": r}, float(n)) for r, n in sorted(stats.rule_errors_total.items()))
    events = tuple(({"kind": k}, float(stats.events_total.get(k, 0)))
                   for k in sorted({*EVENT_KINDS, *stats.events_total}))
    return [
        SelfMetric("alerts", "gauge", "Alert instances per rule and state", counts),
        SelfMetric("rule_evaluation_seconds", "gauge",
                   "Wall time of the last evaluation of all alert rules",
                   (({}, stats.last_evaluation_seconds),)),
        SelfMetric("rule_evaluations", "counter", "Evaluations of the alert rules",
                   (({}, float(stats.evaluations_total)),)),
        SelfMetric(RULE_ERRORS.name, "counter", RULE_ERRORS.help, errors),
        SelfMetric(ALERT_EVENTS.name, "counter", ALERT_EVENTS.help, events),
        SelfMetric("alert_state_errors", "counter",
                   "Failed reads/writes of persisted alert state", (({}, float(state_errors)),)),
        SelfMetric("alert_delivery_errors", "counter", "Alert delivery callbacks that raised",
                   (({}, float(delivery_errors)),)),
    ]


def _same_finding(a: Finding, b: Finding) -> bool:
    """Whether ``a`` and ``b`` would be shown the same: equal, down to the value's type
    and the sign of a zero (``-0`` and ``0`` compare equal but print differently)."""
    return (a == b and type(a.value) is type(b.value)
            and math.copysign(1.0, a.value) == math.copysign(1.0, b.value))


def _snapshot(alert: Alert) -> Alert:
    return dataclasses.replace(alert, annotations=dict(alert.annotations))
