"""gpuwarden's own health on ``/metrics``: what each part of the daemon reports.

Each part reports its share from its own typed figures: the collector runner
(success, duration and errors per collector, the scrapes' counters), the cycle, the
store (written, failed, pending, dropped samples), the rule engine and the dispatcher.
A part that is not running (no store yet, alerting that could not start) adds nothing.
Every family name here is listed in ``tools/dashboards.py``'s ``SELF_METRICS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from gpuwarden.model import SelfMetric

if TYPE_CHECKING:
    from gpuwarden.collector.run import CollectorRunner
    from gpuwarden.daemon.alerting import Alerting
    from gpuwarden.storage.store import Store

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
        SelfMetric("samples_collected", "counter", "Samples returned by collectors",
                   _one(stats.samples_collected_total)),
    )


def store_metrics(store: Store) -> tuple[SelfMetric, ...]:
    reasons = sorted(set(WRITE_ERROR_REASONS) | set(store.write_errors))
    write_errors = tuple(({"reason": r}, float(store.write_errors.get(r, 0))) for r in reasons)
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


def alerting_metrics(alerting: Alerting) -> tuple[SelfMetric, ...]:
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
    return tuple(out)


def self_metrics(runner: CollectorRunner, stats: CycleStats, store: Store | None,
                 alerting: Alerting) -> tuple[SelfMetric, ...]:
    """Every self-metric family, in the order ``/metrics`` shows them."""
    families = runner.metrics() + cycle_metrics(stats)
    if store is not None:
        families += store_metrics(store)
    return families + alerting_metrics(alerting)
