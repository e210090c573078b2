"""One collection cycle: collect, store, derive, evaluate the rules, publish, ping.

Run every collector (``collector/run.py``: concurrently, with a deadline), add what their
samples give together (each GPU's memory budget, the servers' GPUs and the GPUs' prices:
``collector/memory_budget.py``), put all that -- and what was pushed over HTTP since --
in the store's memory and wake the store's writer thread, record which model each
server serves, evaluate the alert rules over the store and hand the transitions to
delivery (``alerting.py``), refresh the window signals, make the cycle's snapshot what
``/metrics`` shows next, ping the systemd watchdog.

The cycle never waits on the database: writes run on the store's writer thread
(``storage/writer.py``) and reads have a deadline (``Store.read_timeout``), so a database
that hangs without answering costs the writes' latency, not collection, alerting or the
watchdog. A store that cannot be written keeps the samples buffered (bounded) and writes
them once it is back.

The first cycle runs before the store is opened (see ``Daemon.start``): on a SQLite file
it is written by ``storage/early.py`` with the standard library, and the store replays
it on open; :meth:`Cycle.run` then goes on from there, so it is stored once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from gpuwarden.collector.run import CollectorRunner
from gpuwarden.config import Config
from gpuwarden.daemon import wiring
from gpuwarden.daemon.alerting import Alerting
from gpuwarden.daemon.pushed import PushedSamples
from gpuwarden.daemon.sdnotify import SystemdNotifier
from gpuwarden.daemon.self_metrics import CycleStats, sample_flow_metrics, self_metrics
from gpuwarden.errors import StoreError
from gpuwarden.model import Sample
from gpuwarden.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from gpuwarden.alerts.engine import SeriesSource
    from gpuwarden.alerts.served_models import ServedModels
    from gpuwarden.api.exposition import Exposition, Snapshot
    from gpuwarden.collector.memory_budget import MemoryBudget
    from gpuwarden.daemon.fleet import FleetMode
    from gpuwarden.storage.held_windows import HeldReads
    from gpuwarden.storage.store import Store
    from gpuwarden.storage.writer import StoreWriter

log = logging.getLogger(__name__)

#: Window signals are recomputed at most this often (seconds); see Cycle._derive.
DERIVE_EVERY_S = 5.0
#: Derived signals over the last hour (``promql.derived.LONG_LOOKBACK``), at most this often.
LONG_DERIVE_EVERY_S = 60.0
#: /healthz: the last cycle may be this old at least, whatever the interval.
HEALTH_MIN_S = 2.0


@dataclass(slots=True)
class FirstCycle:
    """The first cycle, collected before the store is opened (see ``Daemon.start``)."""

    samples: list[Sample]  # what the collectors returned
    pushed: list[Sample]  # pushed over HTTP meanwhile (none yet, HTTP is not up)
    seconds: float  # spent collecting and storing it, before the store was opened
    stored: bool  # written by storage/early.py; else Store.write must write it


def stores_first_cycle_early(url: str) -> bool:
    """Whether the first cycle can be written before the store opens: a SQLite file
    (importing SQLAlchemy takes most of the start-up budget)."""
    from gpuwarden.storage import early as early_store

    return early_store.sqlite_file(url) is not None


class Cycle:
    """The cycle and what it keeps from one to the next.

    ``store``, ``writer`` and ``served_models`` are set by ``Daemon.start`` as they come up;
    until the store is open, a cycle only collects. ``lock`` is held for a whole cycle:
    a reload swaps parts under it, and stopping waits on it.
    """

    def __init__(self, config: Config, *, runner: CollectorRunner, notifier: SystemdNotifier,
                 clock: Callable[[], float], stopping: threading.Event,
                 gpu_source: str) -> None:
        self.config = config
        self.runner = runner
        self.notifier = notifier
        self.clock = clock
        self.stopping = stopping  # set: a cycle handed out by the scheduler returns at once
        self.gpu_source = gpu_source  # for gpuwarden_build_info
        self.alerting = Alerting()
        self.pushed = PushedSamples()
        self.stats = CycleStats()
        self.lock = threading.Lock()
        self.store: Store | None = None
        self.writer: StoreWriter | None = None
        self.served_models: ServedModels | None = None
        self.fleet: FleetMode | None = None  # on a PostgreSQL store (daemon/fleet.py)
        self._exposition: Exposition | None = None
        self._held_reads: HeldReads | None = None  # the window reads, of ``store``
        self._derived: list[Sample] = []
        self._derived_at: float | None = None
        self._long_derived_at: float | None = None
        self._started_mono = time.monotonic()
        self._log = RateLimitedLog(log)
        self._budget: MemoryBudget | None = None
        self._budget_inputs: tuple[object, ...] | None = None

    @property
    def exposition(self) -> Exposition:
        if self._exposition is None:
            from gpuwarden.api.exposition import Exposition

            self._exposition = Exposition()
        return self._exposition

    def collect(self) -> list[Sample]:
        """Run the collectors, waiting at most 80 % of the interval for them, and add
        what their samples give together (the memory budget)."""
        samples = self.runner.run(max(0.05, 0.8 * self.config.interval))
        samples += self._memory_budget(samples)
        self.stats.samples_collected_total += len(samples)
        return samples

    def _memory_budget(self, samples: list[Sample]) -> list[Sample]:
        """Each GPU's memory budget, the servers' GPUs and the GPUs' prices from this
        cycle's samples (``collector/memory_budget.py``); a failure costs only those.

        Built here, on the first cycle and again when a reload changes what it is built
        from (``wiring.memory_budget_inputs``), so that the first, early cycle has it too.
        """
        try:
            inputs = wiring.memory_budget_inputs(self.config)
            if self._budget is None or inputs != self._budget_inputs:
                self._budget = wiring.build_memory_budget(self.config)
                self._budget_inputs = inputs
            return self._budget.samples(samples)
        except Exception as exc:
            self.stats.cycle_errors_total += 1
            self._log.warning("budget", "computing the GPU memory budget failed: %s", exc)
            return []

    def run_early(self) -> FirstCycle | None:
        """Collect the first cycle and store it before SQLAlchemy is imported.

        Only for a SQLite file (:func:`stores_first_cycle_early`): the cycle goes to the
        database with ``sqlite3`` first and the store, opened after, replays it into its
        head. An early write that steps aside (None from ``store_first_cycle``) leaves
        the cycle to ``Store.write`` in :meth:`run`; either way it is stored once.
        """
        from gpuwarden.storage import early as early_store

        try:
            started = time.perf_counter()
            samples, pushed = self.collect(), self.pushed.take()
            written = early_store.store_first_cycle(self.config.storage.url, self.config.node,
                                                    samples + pushed)
        except Exception:  # a bug here must not cost the first cycle: run it normally
            log.exception("early first cycle failed; running it the usual way")
            return None
        return FirstCycle(samples, pushed, time.perf_counter() - started,
                          stored=written is not None)

    def publish_early(self, first: FirstCycle) -> None:
        """Make the first cycle's samples what ``/metrics`` shows while the store opens.

        The store, the rules and delivery take most of start-up to come up (SQLAlchemy
        and numpy imports); a scraper or an SRE waiting on ``/metrics`` gets what was
        collected meanwhile. No window signals (they are read from the store) and no
        self-metrics of the parts not up yet; :meth:`run` replaces it with the full
        snapshot of the same cycle.
        """
        self.exposition.update(self._snapshot(first.samples + first.pushed))

    def guarded(self, first: FirstCycle | None = None) -> None:
        """:meth:`run`, inside the catch-all of ARCHITECTURE.md's convention 9: log,
        count, carry on. What the scheduler runs."""
        if self.stopping.is_set():
            return
        try:
            self.run(first)
        except Exception:
            self.stats.cycle_errors_total += 1
            log.exception("collection cycle failed")

    def run(self, first: FirstCycle | None = None) -> list[Sample]:
        """Collect, store, render. Returns what was collected (for tests and the demo).

        ``first``: the first cycle, collected by ``Daemon.start`` before the store was
        open (and maybe stored already); this cycle goes on from there.
        """
        with self.lock:
            if first is None:
                started = time.perf_counter()
                samples = self.collect()
                self._write(samples + self.pushed.take())
            else:  # its time before the store was opened counts, the opening does not
                started, samples = time.perf_counter() - first.seconds, first.samples
                if not first.stored:
                    self._write(samples + first.pushed)
            self._observe_models(samples)
            now = self.clock()
            reads = self._window_reads(now)
            self.evaluate_rules(now, reads)
            derived = self._derive(now, reads)
            stats = self.stats
            stats.cycles_total += 1
            stats.last_cycle_seconds = time.perf_counter() - started
            stats.last_cycle_end = time.monotonic()
            if samples and stats.first_sample_at is None:
                stats.first_sample_at = stats.last_cycle_end - self._started_mono
            recent = self.pushed.recent(self.clock())
            self.exposition.update(self._snapshot(samples + derived + recent),
                                   next_in=self.config.interval)
            self.notifier.watchdog()
            return samples

    def _write(self, samples: list[Sample]) -> None:
        store = self.store
        if store is None:
            return
        writer = self.writer
        if writer is not None and writer.running:
            try:
                store.append(samples)
            except (StoreError, ValueError) as exc:
                self.stats.cycle_errors_total += 1
                self._log.warning("append", "cannot keep this cycle's samples: %s", exc)
            writer.kick()
            writer.check()
            return
        try:
            store.write(samples)
        except StoreError as exc:
            self._log.warning("store", "store write failed (%d samples pending, kept in memory "
                              "and retried every cycle): %s", store.pending_samples, exc)
        else:
            self._log.recovered("store", "store writable again; buffered samples written")

    def _observe_models(self, samples: list[Sample]) -> None:
        """Which model each server serves, for rollback annotations; never fatal."""
        if self.served_models is None:
            return
        try:
            self.served_models.observe(samples, self.clock())
        except Exception as exc:
            self._log.warning("models", "recording served models failed: %s", exc)

    def _window_reads(self, now: float) -> SeriesSource | None:
        """One read of what the rules due now and the window signals read, if due: they
        read the same minute of the same series (``promql/prefetch.py``). It goes on from
        the last cycle's reads rather than read every window anew
        (``storage/held_windows.py``)."""
        store = self.store
        if store is None:
            return None
        from gpuwarden.promql.derived import LONG_LOOKBACK, derive_lookbacks
        from gpuwarden.promql.prefetch import Prefetched, widest

        engine = self.alerting.rule_engine
        wanted = [engine.due_inputs(now)] if engine is not None else []
        due, long_due = self._derive_due(now)
        if due:
            wanted.append(derive_lookbacks(skip=() if long_due else LONG_LOOKBACK))
        held = self._held_reads
        if held is None or held.store is not store:
            from gpuwarden.storage.held_windows import HeldReads

            held = self._held_reads = HeldReads(store)
        try:
            return Prefetched(held, widest(*wanted), now)
        except Exception as exc:  # each reader then reads for itself, and fails alone
            self._log.warning("reads", "reading the rules' and window signals' inputs "
                              "failed: %s", exc)
            return store

    def evaluate_rules(self, now: float, reads: SeriesSource | None) -> None:
        """Evaluate the alert rules as of ``now`` over ``reads`` (``alerting.py``)."""
        if reads is not None:
            self.alerting.evaluate(now, reads, self.writer)

    def _derive_due(self, now: float) -> tuple[bool, bool]:
        """Whether the window signals are due at ``now``, and their hour-long ones."""
        due = self._derived_at is None or now - self._derived_at >= DERIVE_EVERY_S
        long_due = (self._long_derived_at is None
                    or now - self._long_derived_at >= LONG_DERIVE_EVERY_S)
        return due, long_due

    def _derive(self, now: float, reads: SeriesSource | None) -> list[Sample]:
        """Window signals (quantiles, rates, GPU spread) from ``reads``; a failure costs
        only them.

        They summarise 60 s windows, so recomputing them every second adds nothing a
        15 s Prometheus scrape could see: they are refreshed every DERIVE_EVERY_S and
        the last values exported in between (at most that much older).
        """
        if reads is None:
            return []
        from gpuwarden.promql.derived import LONG_LOOKBACK, derive

        due, long_due = self._derive_due(now)
        if not due:
            return self._derived
        # An hour of histograms is read from the database (~35 ms on a 2-server node):
        # once a minute, and the last values kept in between.
        try:
            derived = derive(reads, now, interval=self.config.interval,
                             skip=() if long_due else LONG_LOOKBACK)
            if long_due:
                self._long_derived_at = now
            else:
                derived += [s for s in self._derived if s.signal in LONG_LOOKBACK]
            self._derived = derived
            self._derived_at = now
            return self._derived
        except Exception as exc:
            self.stats.cycle_errors_total += 1
            self._log.warning("derive", "computing window signals failed: %s", exc)
            return []

    def _snapshot(self, samples: list[Sample]) -> Snapshot:
        from gpuwarden.api.exposition import Snapshot

        families = self_metrics(self.runner, self.stats, self.alerting, self.config)
        if self.fleet is not None:
            families = (*families, *self.fleet.self_metrics())
        info = {"node": self.config.node, "gpu_source": self.gpu_source}
        return Snapshot(samples=tuple(samples), self_metrics=families, info=info,
                        live=partial(sample_flow_metrics, self.stats, self.store))

    def health(self) -> tuple[bool, dict[str, object]]:
        """``/healthz``: alive when a cycle ended within three intervals, and never less
        than HEALTH_MIN_S, so that one slow cycle at a 100 ms interval does not read as a
        dead loop. The store's state is told, but a degraded store is still healthy: the
        loop is what this is about."""
        limit = max(3 * self.config.interval, HEALTH_MIN_S)
        if self.stats.last_cycle_end is None:
            # Starting up: healthy for the first few intervals, then not.
            age = time.monotonic() - self._started_mono
            return age < limit + 2.0, {"last_cycle_age_seconds": None}
        age = time.monotonic() - self.stats.last_cycle_end
        detail: dict[str, object] = {"last_cycle_age_seconds": round(age, 3),
                                     "cycles": self.stats.cycles_total}
        if self.writer is not None:
            detail.update(self.writer.status().to_json())
        return age <= limit, detail
