"""gpuwarden's own health on ``/metrics``: what each part of the daemon reports.

Each part reports its share from its own typed figures: the collector runner
(success, duration and errors per collector, the scrapes' counters), the cycle, the
store (written, failed, pending, dropped samples), the rule engine and the dispatcher.
All but the samples' flow are taken as a cycle ends, into its snapshot; the flow is read
when ``/metrics`` is rendered (:func:`sample_flow_metrics` says why).
A part that is not running (no store yet, alerting that could not start) adds nothing
but the zeros below. Every family name here is listed in ``tools/dashboards.py``'s ``SELF_METRICS``.

Counters whose label sets are known in advance are exported at 0 from the first
``/metrics`` answer on (Prometheus' instrumentation practice: a series that first
appears at 1 loses that increment to ``increase()``, and a panel over a series that
does not exist shows "No data" rather than 0). The collector runner and the store do
that themselves; the alerting counters' label sets -- each rule's errors, each kind of
transition, each configured action's results and ``no_action`` for an action a rule
names but the config lacks -- follow from the config (``alerts/outcomes.py``), so they
are added here, computed once per config (start, reload), and are there even before the
rule engine and the dispatcher are up, when nothing can have been counted yet.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpuwarden.model import SelfMetric

if TYPE_CHECKING:
    from gpuwarden.alerts.outcomes import CounterFamily
    from gpuwarden.collector.run import CollectorRunner
    from gpuwarden.config import Config
    from gpuwarden.daemon.alerting import Alerting
    from gpuwarden.storage.store import Store

Samples = tuple[tuple[Mapping[str, str], float], ...]
#: A label set as a sorted tuple of pairs: how two spellings of one series are matched.
_Key = tuple[tuple[str, str], ...]

#: Every reason ``store_write_errors_total`` is exported with, 0 until it happens, so
#: that ``rate()`` over it works from the first scrape.
WRITE_ERROR_REASONS = ("timeout", "unavailable", "locked", "disk_full", "error")


@dataclass(slots=True)
class CycleStats:
    """The collection loop's own figures, updated by the cycle and the scheduler."""

    cycles_total: int = 0
    cycle_errors_total: int = 0  # cycles (or their derived signals) that raised
    cycles_skipped_total: int = 0  # scheduled runs skipped: the previous one still ran
    samples_collected_total: int = 0
    last_cycle_seconds: float = 0.0
    last_cycle_end: float | None = None  # monotonic
    first_sample_at: float | None = None  # seconds from start to the first samples


def _one(value: float) -> tuple[tuple[dict[str, str], float], ...]:
    return (({}, float(value)),)


def cycle_metrics(stats: CycleStats) -> tuple[SelfMetric, ...]:
    return (
        SelfMetric("cycle_duration_seconds", "gauge", "Wall time of the last cycle",
                   _one(stats.last_cycle_seconds)),
        SelfMetric("cycles", "counter", "Completed collection cycles", _one(stats.cycles_total)),
        SelfMetric("cycle_errors", "counter", "Cycles that raised unexpectedly",
                   _one(stats.cycle_errors_total)),
        SelfMetric("cycles_skipped", "counter",
                   "Scheduled cycles skipped because the previous one was still running",
                   _one(stats.cycles_skipped_total)),
    )


def sample_flow_metrics(stats: CycleStats, store: Store | None) -> tuple[SelfMetric, ...]:
    """Samples collected, written, pending and dropped, read as ``/metrics`` is rendered.

    Why not with the cycle's snapshot: the writer thread writes a cycle after the cycle
    hands it over, so figures taken as the cycle ends race that write. On a loaded node
    the write lost the race cycle after cycle, and ``/metrics`` showed the last cycle
    as pending and written one cycle behind collected, on a store that was keeping up.
    Read here, in this order (written before collected, both only grow), written never
    shows above collected, and both are equal whenever the writer has caught up.
    """
    written = store_metrics(store) if store is not None else ()
    collected = SelfMetric("samples_collected", "counter", "Samples returned by collectors",
                           _one(stats.samples_collected_total))
    return (collected, *written)


def store_metrics(store: Store) -> tuple[SelfMetric, ...]:
    # One C-level copy of each: the writer thread may add a reason while this reads.
    errors = dict(store.write_errors)
    reasons = sorted(set(WRITE_ERROR_REASONS) | set(errors))
    write_errors = tuple(({"reason": r}, float(errors.get(r, 0))) for r in reasons)
    return (
        SelfMetric("samples_written", "counter", "Samples durably written to the store",
                   _one(store.samples_written_total)),
        SelfMetric("store_write_errors", "counter",
                   "Failed store writes by reason (timeout: the database did not "
                   "answer in time)", write_errors),
        SelfMetric("store_pending_samples", "gauge",
                   "Samples buffered in memory while the store is unwritable",
                   _one(store.pending_samples)),
        SelfMetric("store_dropped_samples", "counter",
                   "Samples dropped because the pending buffer was full",
                   _one(store.dropped_samples_total)),
    )


@dataclass(frozen=True, slots=True)
class ZeroFamily:
    """A counter family's label sets known from the config, each with its value 0."""

    family: CounterFamily
    zeros: Mapping[_Key, tuple[Mapping[str, str], float]]

    def merged(self, metric: SelfMetric | None) -> SelfMetric:
        """``metric`` (None: its part is not up) with every known label set in it, sorted
        by label set; what the part counted wins over the zero."""
        if metric is None or not metric.samples:
            samples: Samples = tuple(self.zeros.values())
        else:
            have = {tuple(sorted(labels.items())): (labels, value)
                    for labels, value in metric.samples}
            if have.keys() >= self.zeros.keys():
                samples = metric.samples
            else:
                every = {**self.zeros, **have}
                samples = tuple(every[key] for key in sorted(every))
        return (SelfMetric(self.family.name, "counter", self.family.help, samples)
                if metric is None else dataclasses.replace(metric, samples=samples))


def _zero_family(family: CounterFamily,
                 label_sets: list[dict[str, str]]) -> ZeroFamily:
    keyed = {tuple(sorted(labels.items())): labels for labels in label_sets}
    return ZeroFamily(family, {key: (keyed[key], 0.0) for key in sorted(keyed)})


def alerting_zeros(config: Config) -> tuple[ZeroFamily, ...]:
    """The rule, transition and action counters' label sets of ``config``: each rule
    that runs, each kind of transition, each (action, result) an action can count."""
    from gpuwarden.alerts.outcomes import (
        ACTIONS,
        ALERT_EVENTS,
        EVENT_KINDS,
        RULE_ERRORS,
        action_zero_set,
    )
    from gpuwarden.detectors.defaults import effective_rules

    rules = effective_rules(config.rules)
    referenced = {name for rule in rules for name in rule.actions}
    return (
        _zero_family(RULE_ERRORS, [{"rule": rule.name} for rule in rules]),
        _zero_family(ALERT_EVENTS, [{"kind": kind} for kind in EVENT_KINDS]),
        _zero_family(ACTIONS, [{"action": a, "result": r}
                               for a, r in action_zero_set(config.actions, referenced)]),
    )


class _ZerosOfConfig:
    """:func:`alerting_zeros` of the config last asked about: computed at start and
    after each reload (a new config object), not per snapshot."""

    def __init__(self) -> None:
        self._last: tuple[Config, tuple[ZeroFamily, ...]] | None = None

    def __call__(self, config: Config) -> tuple[ZeroFamily, ...]:
        last = self._last  # one read: several daemons (tests) may share this
        if last is not None and last[0] is config:
            return last[1]
        zeros = alerting_zeros(config)
        self._last = (config, zeros)
        return zeros


_zeros_of = _ZerosOfConfig()


def alerting_metrics(alerting: Alerting, config: Config | None = None) -> tuple[SelfMetric, ...]:
    """The rule engine's and the dispatcher's families; with ``config``, every counter
    label set it makes known is there at 0, whether or not those parts are up yet."""
    out: list[SelfMetric] = []
    if alerting.rule_engine is not None:
        from gpuwarden.alerts.engine import alert_self_metrics

        out += alert_self_metrics(
            alerting.rule_engine,
            state_errors=alerting.state.errors_total if alerting.state is not None else 0,
            delivery_errors=alerting.delivery_errors_total,
        )
    if alerting.dispatcher is not None:
        out += alerting.dispatcher.metrics()
    if config is None:
        return tuple(out)
    for zero in _zeros_of(config):
        at = next((i for i, m in enumerate(out) if m.name == zero.family.name), None)
        if at is None:
            out.append(zero.merged(None))
        else:
            out[at] = zero.merged(out[at])
    return tuple(out)


def self_metrics(runner: CollectorRunner, stats: CycleStats, alerting: Alerting,
                 config: Config | None = None) -> tuple[SelfMetric, ...]:
    """The self-metric families of a cycle's snapshot, in the order ``/metrics`` shows
    them (``config``: the running one, whose known counter label sets are exported at
    0); :func:`sample_flow_metrics` adds the samples' flow as the text is rendered."""
    return runner.metrics() + cycle_metrics(stats) + alerting_metrics(alerting, config)
