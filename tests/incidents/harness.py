"""Replaying a trace through a real Store and the rule engine, as the daemon would.

``replay_live`` interleaves, second by second, ``store.write(cycle)`` and
``engine.evaluate(now, store)`` (the daemon's cycle at accelerated, synthetic time);
``outcome`` condenses the events to first-FIRING / last-RESOLVED times per alert.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gpuwarden.alerts.alert import AlertEvent, EventKind
from gpuwarden.alerts.engine import DetectorFactory, RuleEngine
from gpuwarden.detectors import Detector, Finding, Status, Window
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.storage import Store
from tests.incidents.corpus import T0, Trace

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}


class LastValue:
    """A stand-in threshold detector: the newest sample vs threshold (and clear)."""

    def __init__(self, rule: RuleConfig) -> None:
        self.rule = rule
        self.inputs = {rule.signal: 10.0}

    def evaluate(self, window: Window) -> list[Finding]:
        out = []
        op, threshold = OPS[self.rule.op], self.rule.threshold
        assert threshold is not None
        for s in window.series(self.rule.signal):
            if not len(s) or s.timestamps[-1] < window.now - 3 * window.interval:
                continue
            v = float(s.values[-1])
            if op(v, threshold):
                out.append(Finding(s.labels, v))
            elif self.rule.clear is not None and op(v, self.rule.clear):
                out.append(Finding(s.labels, v, Status.HOLD))
        return out


def stub_factory(rule: RuleConfig) -> Detector:
    return LastValue(rule)


STUB_RULES = (
    RuleConfig("KVCacheNearFull", "kv_cache_usage_ratio", ">", 0.90, clear=0.85, for_=30.0),
    RuleConfig("ServerDown", "server_up", "==", 0.0, for_=30.0),
    RuleConfig("GPULost", "gpu_up", "==", 0.0),
    RuleConfig("GPUHot", "gpu_temperature_celsius", ">", 85.0, for_=60.0),
)


@dataclass
class Outcome:
    """Per fired alert: rule, labels, first FIRING and last RESOLVED (trace seconds)."""

    fired: list[tuple[str, dict[str, str], float, float | None]] = field(default_factory=list)
    events: list[AlertEvent] = field(default_factory=list)

    def key(self) -> list[tuple[str, float, str]]:
        return [(str(e.kind), e.at, e.alert.fingerprint) for e in self.events]


def outcome(events: list[AlertEvent]) -> Outcome:
    first: dict[str, tuple[str, dict[str, str], float]] = {}
    resolved: dict[str, float | None] = {}
    for e in events:
        fp = e.alert.fingerprint
        if e.kind is EventKind.FIRING:
            first.setdefault(fp, (e.alert.name, dict(e.alert.labels), e.at - T0))
            resolved[fp] = None
        else:
            resolved[fp] = e.at - T0
    fired = [(name, labels, at, resolved[fp]) for fp, (name, labels, at) in first.items()]
    return Outcome(sorted(fired, key=lambda f: (f[2], f[0])), events)


def replay_live(trace: Trace, store: Store, rules: Any, factory: DetectorFactory | None,
                interval: float = 1.0) -> tuple[Outcome, RuleEngine]:
    engine = RuleEngine(rules, node=trace.node, interval=interval, factory=factory)
    events: list[AlertEvent] = []
    for ts, samples in trace.cycles():
        store.write(samples)
        events += engine.evaluate(ts, store)
    return outcome(events), engine


def write_all(trace: Trace, store: Store, batch: int = 60) -> None:
    """The whole trace at once (several cycles per write), for backtests."""
    pending: list[Any] = []
    for k, (_, samples) in enumerate(trace.cycles(), 1):
        pending += samples
        if k % batch == 0:
            store.write(pending)
            pending = []
    if pending:
        store.write(pending)


#: Rules that page at most once per alert instance in any trace: one incident, one page
#: (KVCacheSaturationSoon's keep_firing_for, detectors/defaults.py).
PAGE_ONCE = ("KVCacheSaturationSoon",)


def firing_episodes(got: Outcome) -> dict[str, int]:
    """FIRING events per alert instance (fingerprint): more than one is a flap."""
    counts: dict[str, int] = {}
    for e in got.events:
        if e.kind is EventKind.FIRING:
            counts[e.alert.fingerprint] = counts.get(e.alert.fingerprint, 0) + 1
    return counts


def check_expectations(trace: Trace, got: Outcome) -> None:
    """Exactly the expected alerts fired (plus allowed ones), each in its time window,
    as many times as expected (``episodes``), and no ``PAGE_ONCE`` rule twice."""
    problems = []
    names = {e.alert.fingerprint: (e.alert.name, dict(e.alert.labels)) for e in got.events}
    for fp, count in firing_episodes(got).items():
        if names[fp][0] in PAGE_ONCE and count > 1:
            problems.append(f"{names[fp][0]} {names[fp][1]} flapped: fired {count} times")
    matched: set[int] = set()
    for exp in trace.expect:
        hits = [i for i, (name, labels, _, _) in enumerate(got.fired)
                if name == exp["rule"] and all(labels.get(k) == v
                                               for k, v in exp.get("match", {}).items())]
        if not hits:
            problems.append(f"{exp['rule']} {exp.get('match')} never fired")
            continue
        matched.update(hits)
        if "episodes" in exp:
            fired = [e for e in got.events if e.kind is EventKind.FIRING
                     and e.alert.name == exp["rule"]
                     and all(dict(e.alert.labels).get(k) == v
                             for k, v in exp.get("match", {}).items())]
            if len(fired) != exp["episodes"]:
                problems.append(f"{exp['rule']} fired {len(fired)} times (at t="
                                f"{', '.join(f'{e.at - T0:g}' for e in fired)}), expected "
                                f"{exp['episodes']}")
        at = min(got.fired[i][2] for i in hits)
        lo, hi = exp["fires"]
        if not lo <= at <= hi:
            problems.append(f"{exp['rule']} fired at t={at:g}, expected in [{lo}, {hi}]")
        if "breakdown" in exp:  # the latency breakdown annotation of its first firing
            firing = [e.alert.annotations.get("breakdown", "") for e in got.events
                      if e.kind is EventKind.FIRING and e.alert.name == exp["rule"]
                      and all(dict(e.alert.labels).get(k) == v
                              for k, v in exp.get("match", {}).items())]
            if not firing or exp["breakdown"] not in firing[0]:
                problems.append(f"{exp['rule']} breakdown {firing[:1]} does not say "
                                f"{exp['breakdown']!r}")
        if "resolves" in exp:
            ends = [got.fired[i][3] for i in hits]
            lo, hi = exp["resolves"]
            if any(e is None for e in ends):
                problems.append(f"{exp['rule']} never resolved (expected in [{lo}, {hi}])")
            elif not lo <= max(e for e in ends if e is not None) <= hi:
                problems.append(f"{exp['rule']} resolved at t={max(ends):g}, "  # type: ignore
                                f"expected in [{lo}, {hi}]")
    for i, (name, labels, at, end) in enumerate(got.fired):
        if i not in matched and name not in trace.may_fire:
            problems.append(f"unexpected {name} {labels} fired at t={at:g} (resolved {end})")
    assert not problems, f"{trace.name}:\n  " + "\n  ".join(problems)
