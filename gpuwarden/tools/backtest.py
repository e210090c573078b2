"""``gpuwarden backtest``: what the rules would have done over stored history.

Why: before changing a threshold or a ``for`` an SRE wants to know how many pages it
would have caused last night. The backtest replays the stored samples through the
very :class:`~gpuwarden.alerts.engine.RuleEngine` the daemon runs, stepping ``now`` by
the config's interval, so its answer is the live daemon's answer (the engine is
deterministic given the rules and the samples).

Speed: a day at 1 s is 86,400 evaluations. Re-querying the store at each step would
decode the same chunks thousands of times, so each input signal is read ONCE over the
whole range (plus its lookback) and every step's window is cut from those arrays in
memory with two binary searches per series (:class:`PrefetchedSource`), with exactly
the inclusive ``start <= ts <= end`` semantics of ``Store.query``.

Fleet rules (``--fleet``, :func:`run_fleet_backtest`): on a PostgreSQL store shared by
a fleet, the rules with ``scope = "fleet"`` are replayed over every node's samples
(``fleet/source.py``) by an engine with no node of its own, as the leader evaluates
them (``fleet/evaluator.py``). A flag, not a default: a node's backtest reads that
node's samples, a fleet's reads every node's, which on a large fleet is another order
of cost; and the two answer different questions (this node's pages, the fleet's).
``NodeSilent`` is left out and said so: the store keeps each node's last write, not
the history of its writes, so past silences cannot be replayed (``gpuwarden fleet
status`` shows the nodes silent now).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from gpuwarden.alerts.alert import AlertEvent, AlertState, EventKind, rfc3339
from gpuwarden.alerts.engine import RuleEngine, SeriesSource
from gpuwarden.config import Config
from gpuwarden.detectors.defaults import effective_rules
from gpuwarden.detectors.fleet_rules import effective_fleet_rules
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.durations import format_duration
from gpuwarden.model import SeriesData, labels_match
from gpuwarden.promql.aggregation import in_window


class PrefetchedSource:
    """Series fetched once over a long range; ``query`` slices them without I/O."""

    def __init__(self, data: Mapping[str, Sequence[SeriesData]]) -> None:
        self._data = {signal: list(series) for signal, series in data.items()}

    @classmethod
    def fetch(
        cls, source: SeriesSource, inputs: Mapping[str, float], start: float, end: float
    ) -> PrefetchedSource:
        """One query per signal covering ``[start - lookback, end]``."""
        return cls({signal: source.query(signal, None, start - lookback, end)
                    for signal, lookback in inputs.items()})

    def query(
        self,
        signal: str,
        matchers: Mapping[str, str] | None = None,
        start: float = -math.inf,
        end: float = math.inf,
    ) -> list[SeriesData]:
        out = []
        for s in self._data.get(signal, ()):
            if not labels_match(s.labels, matchers):
                continue
            ts, vs = in_window(s, start, end)
            if ts.size:
                out.append(SeriesData(s.signal, s.labels, ts, vs))
        return out


@dataclass(slots=True)
class RuleReport:
    """What one rule would have done over the replayed range."""

    rule: str
    severity: str
    fired: int = 0
    first_fired: list[float] = field(default_factory=list)  # up to 5
    firing_seconds: float = 0.0
    longest_seconds: float = 0.0
    pending_never_fired: int = 0
    still_firing: int = 0
    errors: int = 0


@dataclass(slots=True)
class BacktestResult:
    start: float
    end: float
    interval: float
    steps: int
    rules: list[RuleReport]
    events: list[AlertEvent] = field(default_factory=list)
    scope: str = "node"  # "fleet": the fleet rules over every node's samples
    skipped: dict[str, str] = field(default_factory=dict)  # rule -> why not replayed

    def to_json(self) -> dict[str, object]:
        return {
            "scope": self.scope,
            "start": rfc3339(self.start), "end": rfc3339(self.end), "interval": self.interval,
            "steps": self.steps,
            "rules": [{**asdict(r), "first_fired": [rfc3339(t) for t in r.first_fired]}
                      for r in self.rules],
            "skipped": dict(self.skipped),
        }


def replay(
    rules: Sequence[RuleConfig],
    source: SeriesSource,
    *,
    node: str,
    start: float,
    end: float,
    interval: float,
    engine: RuleEngine | None = None,
) -> BacktestResult:
    """Evaluate ``rules`` at ``start, start + interval, ... <= end`` over ``source``."""
    eng = engine or RuleEngine(rules, node=node, interval=interval)
    pre = PrefetchedSource.fetch(source, eng.inputs, start, end)
    reports = {r.name: RuleReport(r.name, r.severity) for r in eng.rules}
    fired_at: dict[str, float] = {}
    events: list[AlertEvent] = []
    steps = math.floor((end - start) / interval + 1e-9) + 1
    now = start
    for k in range(steps):
        now = start + k * interval
        step_events = eng.evaluate(now, pre)
        events.extend(step_events)
        for e in step_events:
            report = reports.get(e.alert.name)
            if report is None:
                continue
            if e.kind is EventKind.FIRING:
                report.fired += 1
                if len(report.first_fired) < 5:
                    report.first_fired.append(e.at)
                fired_at[e.alert.fingerprint] = e.at
            elif e.alert.fingerprint in fired_at:
                _close(report, e.at - fired_at.pop(e.alert.fingerprint))
        for alert in eng.last_pending_dropped:
            if alert.name in reports:
                reports[alert.name].pending_never_fired += 1
    for alert in eng.alerts(AlertState.FIRING):
        report = reports.get(alert.name)
        if report is not None and alert.fingerprint in fired_at:
            report.still_firing += 1
            _close(report, now - fired_at[alert.fingerprint])
    for name, count in eng.stats.rule_errors_total.items():
        if name in reports:
            reports[name].errors = count
    return BacktestResult(start, now, interval, steps, list(reports.values()), events)


def _close(report: RuleReport, duration: float) -> None:
    report.firing_seconds += duration
    report.longest_seconds = max(report.longest_seconds, duration)


def run_backtest(
    config: Config, since: float, *, now: float, rule: str | None = None,
    source: SeriesSource | None = None,
) -> BacktestResult:
    """The CLI's backtest: the config's effective rules over its store (or ``source``)."""
    active = effective_rules(config.rules)
    rules = [r for r in active if rule is None or r.name == rule]
    if rule is not None and not rules:
        is_fleet = any(r.name == rule for r in effective_fleet_rules(config.rules))
        hint = f"{rule} is a fleet rule: add --fleet" if is_fleet else f"no rule named {rule!r}"
        raise LookupError(f"{hint} (known: {', '.join(r.name for r in active)})")
    start = now - since
    if source is not None:
        return replay(rules, source, node=config.node, start=start, end=now,
                      interval=config.interval)
    from gpuwarden.storage import open_store

    # Read-only in practice: nothing is written; a generous busy timeout so a running
    # daemon's write lock delays the backtest instead of failing it.
    store = open_store(config.storage.url, node=config.node, busy_timeout_ms=5000)
    try:
        return replay(rules, store, node=config.node, start=start, end=now,
                      interval=config.interval)
    finally:
        store.close()


def run_fleet_backtest(config: Config, since: float, *, now: float,
                       rule: str | None = None) -> BacktestResult:
    """``backtest --fleet``: the config's fleet rules over every node's samples in its
    shared PostgreSQL store. Raises ``StoreError`` (the store cannot be read, or is not
    PostgreSQL) and ``LookupError`` (no such fleet rule)."""
    from gpuwarden.errors import StoreError, one_line
    from gpuwarden.fleet.source import SILENCE_SIGNAL, FleetSource
    from gpuwarden.storage.engine import open_engine

    active = effective_fleet_rules(config.rules)
    chosen = [r for r in active if rule is None or r.name == rule]
    if rule is not None and not chosen:
        raise LookupError(f"no fleet rule named {rule!r} (known: "
                          f"{', '.join(r.name for r in active)})")
    skipped = {r.name: "not replayed: the store keeps each node's last write, not their "
               "history (gpuwarden fleet status shows the nodes silent now)"
               for r in chosen if r.signal == SILENCE_SIGNAL}
    rules = [r for r in chosen if r.name not in skipped]
    engine = RuleEngine(rules, node="", interval=config.interval)
    start = now - since
    db = open_engine(config.storage.url, busy_timeout_ms=5000)
    shown = db.url.render_as_string(hide_password=True)
    try:
        if db.dialect.name != "postgresql":
            raise StoreError(f"fleet rules read a fleet's shared PostgreSQL store; {shown} "
                             "is one node's")
        # Every input in one read of the fleet's chunks and head log, then sliced in
        # memory step by step (as PrefetchedSource does for one node).
        got, failed = FleetSource(db, lambda: now).query_many(
            {s: (start - lookback, now) for s, lookback in engine.inputs.items()})
    finally:
        db.dispose()
    if failed:
        raise StoreError(f"cannot read the fleet's samples from {shown}: "
                         f"{one_line(next(iter(failed.values())))}")
    result = replay(rules, PrefetchedSource(got), node="", start=start, end=now,
                    interval=config.interval, engine=engine)
    result.scope, result.skipped = "fleet", skipped
    return result


def format_table(result: BacktestResult) -> str:
    """A table an SRE reads at a glance: one line per rule."""
    what = "fleet rules over every node's samples, " if result.scope == "fleet" else ""
    head = (f"backtest {what}{rfc3339(result.start)} .. {rfc3339(result.end)}, every "
            f"{format_duration(result.interval)} ({result.steps} evaluations)")
    cols = ("RULE", "SEVERITY", "FIRED", "FIRING", "LONGEST", "PENDING-ONLY", "FIRST FIRED")
    rows = []
    for r in result.rules:
        first = ", ".join(rfc3339(t)[11:19] for t in r.first_fired[:3])
        if r.fired > 3:
            first += ", ..."
        extra = []
        if r.still_firing:
            extra.append(f"{r.still_firing} still firing")
        if r.errors:
            extra.append(f"{r.errors} errors")
        rows.append((r.rule, r.severity, str(r.fired), _dur(r.firing_seconds),
                     _dur(r.longest_seconds), str(r.pending_never_fired),
                     first + (f" ({'; '.join(extra)})" if extra else "")))
    widths = [max(len(c), *(len(row[i]) for row in rows)) if rows else len(c)
              for i, c in enumerate(cols)]
    lines = [head, "  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
              for row in rows]
    lines += [f"{name}: {why}" for name, why in result.skipped.items()]
    return "\n".join(lines)


def _dur(seconds: float) -> str:
    return "-" if seconds <= 0 else format_duration(seconds)


def dumps(result: BacktestResult) -> str:
    return json.dumps(result.to_json(), indent=2)
