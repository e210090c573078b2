"""The daemon: the collection cycle, its schedule, signals and the HTTP endpoints.

One cycle = run every collector (concurrently, bounded), put what they returned in the
store's memory and wake the store's writer thread, evaluate the alert rules over the
store, hand the alert transitions to delivery, refresh ``/metrics``, ping the systemd
watchdog. APScheduler runs it every ``interval`` with ``max_instances=1`` and
``coalesce=True``: cycles never overlap and a stalled machine does not replay a backlog
of missed runs; a run skipped because the previous one overran is counted
(``gpuwarden_cycles_skipped_total``) and logged at most once a minute.

Failure policy (ARCHITECTURE.md, convention 9): every collector call and every job sits in a
catch-all that logs, counts and carries on. A collector that hangs is not waited for
past the cycle's deadline; it is left to finish in its worker and not started again
until it has, so a dead inference server can never stall GPU sampling or pile up
threads. The cycle never waits on the database: writes (samples, alert state, model
history) run on the store's writer thread (``storage/writer.py``) and reads have a
deadline (``Store.read_timeout``), so a database that hangs without answering costs the
writes' latency, not collection, alerting or the watchdog. A store that cannot be
written keeps the samples buffered (bounded) and writes them once it is back.

One daemon per store and node: an exclusive lock (``storage/instance_lock.py``) is taken
before anything is written; a second instance exits naming the first one's PID.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from types import FrameType
from typing import TYPE_CHECKING, Any

from gpuwarden import __version__
from gpuwarden.collector import Collector
from gpuwarden.config import Config, load_config
from gpuwarden.daemon.sdnotify import SystemdNotifier
from gpuwarden.errors import ConfigError, GpuwardenError, InstanceLocked, StoreError
from gpuwarden.model import Labels, Sample
from gpuwarden.ratelog import RateLimitedLog

if TYPE_CHECKING:
    from gpuwarden.alerts.alert import AlertEvent
    from gpuwarden.alerts.dispatch import Dispatcher
    from gpuwarden.alerts.engine import RuleEngine
    from gpuwarden.alerts.served_models import ModelHistory
    from gpuwarden.alerts.state import AlertStatePersister
    from gpuwarden.api.exposition import Exposition, Snapshot
    from gpuwarden.storage.instance_lock import InstanceLock
    from gpuwarden.storage.writer import StoreWriter

log = logging.getLogger(__name__)

RETENTION_EVERY_S = 300.0
MAX_COLLECT_WORKERS = 8
MAX_PUSHED_SAMPLES = 10_000
DERIVE_EVERY_S = 5.0
PUSHED_TTL_S = 600.0
#: A database read on the collection loop waits at most this long (see Store._db_read).
STORE_READ_TIMEOUT_S = 0.5
#: Seconds given to the writer to write what is pending when stopping.
SHUTDOWN_FLUSH_S = 5.0
HEALTH_MIN_S = 2.0
#: glibc malloc arenas for the whole process (default: 8 per core), see native_memory.
MALLOC_ARENAS = 2


@dataclass(slots=True)
class CollectorResult:
    samples: list[Sample]
    duration: float
    error: str | None
    reported_error: str | None = None  # ``Collector.last_error`` after a normal return


@dataclass(slots=True)
class _FirstCycle:
    """The first cycle, collected before the store is opened (see ``Daemon.start``)."""

    samples: list[Sample]  # what the collectors returned
    pushed: list[Sample]  # pushed over HTTP meanwhile (none yet, HTTP is not up)
    seconds: float  # spent collecting and storing it, before the store was opened
    stored: bool  # written by early_store; else Store.write must write it


def build_collectors(config: Config, session: Callable[[], Any]) -> list[Collector]:
    """The collectors a config asks for: one GPU source, one per server, the canaries.

    ``session`` is called only when a collector makes HTTP requests, so a node with
    only NVML or simulated GPUs never imports ``requests``.
    """
    from gpuwarden.collector import gpu_collector, server_collector

    gpu = config.gpu
    collectors: list[Collector] = []
    gpu_source = gpu_collector(gpu.source, node=config.node, sim_gpus=gpu.sim_gpus,
                               dcgm_url=gpu.dcgm_url, timeout=gpu.timeout,
                               session=session() if gpu.source == "dcgm" else None)
    if gpu_source is not None:
        collectors.append(gpu_source)
    collectors.extend(server_collector(s, node=config.node, session=session())
                      for s in config.servers)
    if config.quality.canaries and any(s.api_url for s in config.servers):
        from gpuwarden.collector.quality.canary import quality_collector

        canaries = quality_collector(config, session=session())
        if canaries is not None:
            collectors.append(canaries)
    return collectors


class Daemon:
    """Owns the store, the collectors, the schedule and the HTTP server."""

    def __init__(
        self,
        config: Config,
        *,
        collectors: list[Collector] | None = None,
        clock: Any = time.time,
        store: Any = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self._session: Any = None
        self._collectors = collectors
        self._store = store
        self._exposition: Exposition | None = None
        self.notifier = SystemdNotifier()
        self._pool = ThreadPoolExecutor(MAX_COLLECT_WORKERS, thread_name_prefix="gpuwarden-collect")
        self._in_flight: dict[str, Future[CollectorResult]] = {}
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._scheduler: Any = None
        self._http: Any = None
        self._cycle_lock = threading.Lock()
        self._log = RateLimitedLog(log)
        self._lock: InstanceLock | None = None
        self.writer: StoreWriter | None = None
        self.cycles_skipped_total = 0
        self.exit_code = 0  # what run_forever returns (1: another instance took the store)
        self.gpu_source = "custom" if collectors is not None else config.gpu.source
        # Self-metrics state (read by the exposition at the end of each cycle).
        self.cycles_total = 0
        self.cycle_errors_total = 0
        self.last_cycle_seconds = 0.0
        self.last_cycle_end: float | None = None  # monotonic
        self.first_sample_at: float | None = None
        self.samples_collected_total = 0
        self._collector_success: dict[str, float] = {}
        self._collector_duration: dict[str, float] = {}
        self._collector_errors: dict[str, int] = defaultdict(int)
        self._started_mono = time.monotonic()
        # Alerting: the rule engine, its persisted state, and delivery's hook. Each
        # callback gets every cycle's AlertEvents (FIRING/RESOLVED), in order; one that
        # raises is logged and counted, and the others still get them.
        self.on_alert_events: list[Callable[[list[AlertEvent]], None]] = []
        # Samples pushed over HTTP (POST /api/v1/quality) wait here for the next cycle,
        # which stores and exports them with its own.
        self._pushed: list[Sample] = []
        self._push_lock = threading.Lock()
        # ...and the latest of each pushed series stays on /metrics for a while, as a
        # scraped gauge would, though it is stored only once.
        self._pushed_latest: dict[tuple[str, Labels], Sample] = {}
        self._derived: list[Sample] = []
        self._derived_at: float | None = None
        self.rule_engine: RuleEngine | None = None
        self._alert_state: AlertStatePersister | None = None
        self._alerts_api: list[dict[str, Any]] = []
        self.rule_failures_total = 0  # evaluations that raised past the engine's guards
        self.delivery_errors_total = 0
        self.models: ModelHistory | None = None
        self.dispatcher: Dispatcher | None = None
        # Events of the first cycle, which runs before delivery is started (to keep the
        # first stored sample early): handed to the dispatcher as soon as it is up.
        self._early_events: list[AlertEvent] | None = []

    # --- life cycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, run the first cycle, bind HTTP, start the schedule.

        The first cycle runs before the HTTP server and scheduler are even imported,
        so the first sample is stored as early as the store's own imports allow. On a
        SQLite file it is stored before that: collected, written by ``early_store``
        with the standard library, then loaded by the store's replay on open (see
        :meth:`_first_cycle_early`). Before any of that, the instance lock: a second
        daemon on the same store and node raises :class:`InstanceLocked` having
        written nothing.
        """
        from gpuwarden.native_memory import limit_arenas

        limit_arenas(MALLOC_ARENAS)  # before the threads: see native_memory
        if self._store is None:
            from gpuwarden.storage.instance_lock import acquire_instance_lock

            self._lock = acquire_instance_lock(self.config.storage.url, self.config.node)
        first = self._first_cycle_early() if self._store is None else None
        if self._store is None:
            from gpuwarden.storage import open_store

            self._store = open_store(self.config.storage.url, node=self.config.node,
                                     read_timeout=STORE_READ_TIMEOUT_S)
            if first is not None and first.stored:
                # Written by this process, if not through Store.write: count them.
                self._store.samples_written_total += len(first.samples) + len(first.pushed)
        if self._collectors is None:
            self._collectors = build_collectors(self.config, lambda: self.session)
            self.gpu_source = _effective_source(self._collectors, self.config)
        try:
            self._start_rules()
        except Exception:  # alerting is down, collection and /metrics are not
            self.rule_failures_total += 1
            log.exception("cannot start the alert rule engine")
        engine = getattr(self._store, "engine", None)
        if engine is not None:
            from gpuwarden.alerts.served_models import ModelHistory

            self.models = ModelHistory(engine, node=self.config.node)
        self._guarded_cycle(first)
        self._start_writer()
        self._start_delivery()

        from gpuwarden.api.server import HttpServer

        host, port = self.config.listen_host_port
        self._http = HttpServer(host, port, self)
        self._http.start()
        self._start_scheduler()
        self.notifier.ready(f"collecting every {self.config.interval:g}s")
        log.info(
            "gpuwarden %s on node %s: %d collectors (%s), store %s, http://%s:%d/metrics",
            __version__, self.config.node, len(self._collectors),
            ", ".join(c.name for c in self._collectors) or "none",
            _redact_url(self.config.storage.url), host, self._http.port,
        )

    def _start_writer(self) -> None:
        """From now on every database write of the loop goes through the writer thread."""
        from gpuwarden.storage.writer import StoreWriter

        if not hasattr(self._store, "persist"):
            return  # a test's stand-in store: written in the cycle as before
        writer = StoreWriter(self._store, stall_after=_stall_after(self.config.interval))
        if self._alert_state is not None:
            writer.add_job("alert state", self._alert_state.flush)
        if self.models is not None:
            self.models.defer_writes = True
            writer.add_job("model history", self.models.flush)
        if self._lock is not None and self._lock.kind == "postgres":
            writer.add_job("instance lock", self._hold_lock)
        writer.start()
        self.writer = writer

    def _hold_lock(self) -> None:
        """Take the advisory lock again after a PostgreSQL restart ended its session.

        Runs on the writer thread (it may wait on the server). Losing it to another
        instance means the store is that one's now: stop, exit 1.
        """
        assert self._lock is not None
        try:
            self._lock.ensure()
        except InstanceLocked as exc:
            log.error("lost the instance lock while the database was away: %s; stopping", exc)
            self.exit_code = 1
            self._stop.set()

    def _first_cycle_early(self) -> _FirstCycle | None:
        """Collect the first cycle and store it before SQLAlchemy is imported.

        Only for a SQLite file (``early_store.sqlite_file``): importing SQLAlchemy takes
        most of the start-up budget, so the cycle goes to the database with ``sqlite3``
        first and the store, opened after, replays it into its head. Anything else, or
        an early write that steps aside, leaves the cycle to ``Store.write`` in
        :meth:`run_cycle`; either way it is stored once.
        """
        from gpuwarden.storage import early as early_store

        url = self.config.storage.url
        if early_store.sqlite_file(url) is None:
            return None
        if self._collectors is None:
            self._collectors = build_collectors(self.config, lambda: self.session)
            self.gpu_source = _effective_source(self._collectors, self.config)
        try:
            started = time.perf_counter()
            samples, pushed = self._collect_all(), self._take_pushed()
            written = early_store.store_first_cycle(url, self.config.node, samples + pushed)
        except Exception:  # a bug here must not cost the first cycle: run it normally
            log.exception("early first cycle failed; running it the usual way")
            return None
        return _FirstCycle(samples, pushed, time.perf_counter() - started,
                           stored=written is not None)

    @property
    def exposition(self) -> Exposition:
        if self._exposition is None:
            from gpuwarden.api.exposition import Exposition

            self._exposition = Exposition()
        return self._exposition

    @property
    def session(self) -> Any:
        """One ``requests.Session`` for every outbound HTTP call (convention 7)."""
        if self._session is None:
            import requests

            self._session = requests.Session()
            self._session.headers["User-Agent"] = f"gpuwarden/{__version__}"
        return self._session

    @property
    def http_port(self) -> int:
        return int(self._http.port) if self._http is not None else 0

    @property
    def store(self) -> Any:
        return self._store

    def _start_scheduler(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self._scheduler = BackgroundScheduler(
            timezone="UTC",
            job_defaults={"coalesce": True, "max_instances": 1},
        )
        self._scheduler.add_job(
            self._guarded_cycle, "interval", seconds=self.config.interval, id="cycle",
            next_run_time=_utcnow(self.config.interval),
            misfire_grace_time=max(1, int(self.config.interval)),
        )
        self._scheduler.add_job(
            self._guarded_retention, "interval", seconds=RETENTION_EVERY_S, id="retention",
            misfire_grace_time=60,
        )
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED

        self._scheduler.add_listener(self._on_cycle_skipped,
                                     EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        # APScheduler warns on every skipped run; counted and rate-limited here instead.
        logging.getLogger("apscheduler.scheduler").addFilter(_drop_skip_warnings)
        self._scheduler.start()

    def _on_cycle_skipped(self, event: Any) -> None:
        if getattr(event, "job_id", None) != "cycle":
            return
        self.cycles_skipped_total += 1
        self._log.warning("skipped", "collection cycle skipped: the previous one is still "
                          "running (%d skipped so far; see gpuwarden_cycles_skipped_total)",
                          self.cycles_skipped_total)

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads; handled on the main thread's next wait."""
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def wait_stop(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for a stop request, doing any pending reload first."""
        if self._reload.is_set():
            self._reload.clear()
            try:
                self.reload()
            except Exception:  # the running config stays; the daemon must not die here
                log.exception("config reload failed; keeping the running config")
                self.notifier.ready()
        return self._stop.wait(timeout)

    def run_forever(self) -> int:
        """Block until SIGTERM/SIGINT; handle SIGHUP reloads. Returns the exit code."""
        self.install_signal_handlers()
        while not self.wait_stop(0.5):
            pass
        self.shutdown()
        return self.exit_code

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: flushing and stopping", signal.Signals(signum).name)
        self._stop.set()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload.set()

    def request_stop(self) -> None:
        self._stop.set()

    def shutdown(self) -> None:
        self.notifier.stopping()
        self._stop.set()  # a cycle the scheduler has already handed out returns at once
        if self._scheduler is not None:
            # Not wait=True: a retention job stuck on a database that does not answer
            # would hold SIGTERM forever. A running cycle never waits on the database,
            # so waiting for it (the cycle lock) is bounded.
            self._scheduler.shutdown(wait=False)
            if self._cycle_lock.acquire(timeout=SHUTDOWN_FLUSH_S):
                self._cycle_lock.release()
        self._pool.shutdown(wait=False, cancel_futures=True)
        for collector in self._collectors or ():
            _close_quietly(collector)
        if self.dispatcher is not None:  # sends what is queued; the rest is dead-lettered
            self.dispatcher.stop(timeout=3.0)
        if self.writer is not None:
            # The writer's last pass writes what is pending and cuts the head; a database
            # that does not answer in time is given up on (and not closed: that waits too).
            if self.writer.stop(SHUTDOWN_FLUSH_S) and self._store is not None:
                self._store.close()
        elif self._store is not None:
            try:
                self._store.flush()
            except GpuwardenError as exc:
                log.error("final flush failed; unsaved samples stay in the head log: %s", exc)
            self._store.close()
        if self._lock is not None:
            self._lock.release()
        if self._http is not None:
            self._http.stop()
        if self._session is not None:
            self._session.close()
        self.notifier.close()
        log.info("stopped")

    def reload(self) -> bool:
        """Re-read the config file; a bad one is rejected and the old one stays."""
        path = self.config.source_path
        if path is None:
            log.warning("SIGHUP: running on built-in defaults, nothing to reload")
            return False
        self.notifier.reloading()
        try:
            new = load_config(path)
        except ConfigError as exc:
            log.error("config reload rejected, keeping the running config: %s", exc)
            self.notifier.ready()
            return False
        for attr in ("listen", "storage"):
            if getattr(new, attr) != getattr(self.config, attr):
                log.warning("config reload: %s changed; that takes effect on restart only", attr)
        new = _keep(new, self.config, "listen", "storage")
        old = self.config
        try:  # everything that can fail, before anything of the running config changes
            from gpuwarden.detectors.defaults import effective_rules

            collectors = build_collectors(new, lambda: self.session)
            rules = effective_rules(new.rules)
        except Exception as exc:
            log.error("config reload rejected, keeping the running config: %s: %s",
                      type(exc).__name__, exc)
            self.notifier.ready()
            return False
        with self._cycle_lock:
            old_collectors = self._collectors or []
            self._collectors = collectors
            self.gpu_source = _effective_source(self._collectors, new)
            self._in_flight.clear()
            self.config = new
            if self.rule_engine is not None:  # alerts of rules that still exist live on
                self.rule_engine.interval = new.interval
                self.rule_engine.configure(rules)
        for collector in old_collectors:
            _close_quietly(collector)
        if self.dispatcher is not None and old.actions != new.actions:
            # New actions, new guard rails: the new dispatcher reloads cooldowns, budgets
            # and who saw which firing from the audit trail, so nothing is sent twice.
            old_dispatcher = self.dispatcher
            self.on_alert_events.remove(old_dispatcher)
            old_dispatcher.stop(timeout=3.0)
            self._start_delivery()
        if self._scheduler is not None:
            self._scheduler.reschedule_job("cycle", trigger="interval", seconds=new.interval)
        if self.writer is not None:
            self.writer.stall_after = _stall_after(new.interval)
        log.info("config reloaded from %s: %d collectors", path, len(self._collectors))
        self.notifier.ready()
        return True

    # --- the cycle -----------------------------------------------------------------------

    def _guarded_cycle(self, first: _FirstCycle | None = None) -> None:
        if self._stop.is_set():
            return
        try:
            self.run_cycle(first)
        except Exception:  # the catch-all of convention 9: log, count, carry on
            self.cycle_errors_total += 1
            log.exception("collection cycle failed")

    def run_cycle(self, first: _FirstCycle | None = None) -> list[Sample]:
        """Collect, store, render. Returns what was collected (for tests and the demo).

        ``first``: the first cycle, collected by :meth:`start` before the store was
        open (and maybe stored already); this cycle goes on from there.
        """
        with self._cycle_lock:
            if first is None:
                started = time.perf_counter()
                samples = self._collect_all()
                self._write(samples + self._take_pushed())
            else:  # its time before the store was opened counts, the opening does not
                started, samples = time.perf_counter() - first.seconds, first.samples
                if not first.stored:
                    self._write(samples + first.pushed)
            self._observe_models(samples)
            self._evaluate_rules()
            derived = self._derive()
            self.cycles_total += 1
            self.last_cycle_seconds = time.perf_counter() - started
            self.last_cycle_end = time.monotonic()
            if samples and self.first_sample_at is None:
                self.first_sample_at = self.last_cycle_end - self._started_mono
            self.exposition.update(self._snapshot(samples + derived + self._recent_pushed()))
            self.notifier.watchdog()
            return samples

    def _collect_all(self) -> list[Sample]:
        deadline = time.monotonic() + max(0.05, 0.8 * self.config.interval)
        for collector in self._collectors or ():
            if collector.name not in self._in_flight:
                self._in_flight[collector.name] = self._pool.submit(_run_collector, collector)
        pending = list(self._in_flight.values())
        wait_futures(pending, timeout=max(0.0, deadline - time.monotonic()))
        samples: list[Sample] = []
        for name, future in list(self._in_flight.items()):
            if not future.done():
                # Still running (a hung scrape): count it once per cycle, keep waiting.
                self._collector_success[name] = 0.0
                self._collector_errors[name] += 1
                self._log.warning(f"slow:{name}", "collector %s is still running past the "
                                  "cycle deadline; not starting it again until it returns", name)
                continue
            del self._in_flight[name]
            result = future.result()
            self._collector_duration[name] = result.duration
            if result.error is None and result.reported_error is None:
                self._collector_success[name] = 1.0
                self._log.recovered(f"fail:{name}", "collector %s recovered", name)
            elif result.error is None:  # failure reported as data; the collector logged it
                self._collector_success[name] = 0.0
                self._collector_errors[name] += 1
            else:
                self._collector_success[name] = 0.0
                self._collector_errors[name] += 1
                self._log.warning(f"fail:{name}", "collector %s failed: %s", name, result.error)
            samples.extend(result.samples)
        self.samples_collected_total += len(samples)
        return samples

    def _write(self, samples: list[Sample]) -> None:
        if self._store is None:
            return
        writer = self.writer
        if writer is not None and writer.running:
            try:
                self._store.append(samples)
            except (StoreError, ValueError) as exc:
                self.cycle_errors_total += 1
                self._log.warning("append", "cannot keep this cycle's samples: %s", exc)
            writer.kick()
            writer.check()
            return
        try:
            self._store.write(samples)
        except StoreError as exc:
            self._log.warning("store", "store write failed (%d samples pending, kept in memory "
                              "and retried every cycle): %s",
                              getattr(self._store, "pending_samples", 0), exc)
        else:
            self._log.recovered("store", "store writable again; buffered samples written")

    # --- alert rules -------------------------------------------------------------------

    def _start_rules(self) -> None:
        """Build the engine from defaults + config and restore persisted alert state."""
        from gpuwarden.alerts.engine import RuleEngine
        from gpuwarden.detectors.defaults import effective_rules

        self.rule_engine = RuleEngine(effective_rules(self.config.rules), node=self.config.node,
                                      interval=self.config.interval)
        engine = getattr(self._store, "engine", None)
        if engine is not None:
            from gpuwarden.alerts.state import AlertStatePersister, AlertStateStore

            self._alert_state = AlertStatePersister(AlertStateStore(engine, self.config.node))
            self._alert_state.restore(self.rule_engine, self.clock())
            self._publish_alerts()

    def _evaluate_rules(self) -> None:
        """Evaluate, persist what changed, hand events to delivery; never kills the cycle."""
        engine = self.rule_engine
        if engine is None or self._store is None:
            return
        try:
            now = self.clock()
            if (self._alert_state is not None and not self._alert_state.restored
                    and not self._store_degraded()):
                self._alert_state.restore(engine, now)  # before evaluating: no re-fire
            events = engine.evaluate(now, self._store)
            if self._alert_state is not None:
                if self.writer is not None and self.writer.running:
                    self._alert_state.collect(engine, now)  # the writer writes it
                else:
                    self._alert_state.sync(engine, now)
        except Exception:
            self.rule_failures_total += 1
            log.exception("alert rule evaluation failed")
            return
        finally:
            self._publish_alerts()
        if events:
            self._deliver(events)

    def _observe_models(self, samples: list[Sample]) -> None:
        """Which model each server serves, for rollback annotations; never fatal."""
        if self.models is None:
            return
        try:
            self.models.observe(samples, self.clock())
        except Exception as exc:
            self._log.warning("models", "recording served models failed: %s", exc)

    def _start_delivery(self) -> None:
        """The dispatcher (guard rails, retries, audit) on its own threads."""
        from gpuwarden.alerts.dispatch import Dispatcher

        try:
            self.dispatcher = Dispatcher.from_config(self.config, store=self._store,
                                                     session=self.session, models=self.models)
            self.dispatcher.start()
        except Exception:  # alerts still show on /api/v1/alerts and /metrics
            self.delivery_errors_total += 1
            self.dispatcher = None
            log.exception("cannot start alert delivery")
            self._early_events = None
            return
        self.on_alert_events.append(self.dispatcher)
        early, self._early_events = self._early_events or [], None
        if early:
            self._deliver_to(self.dispatcher, early)

    def _deliver(self, events: list[AlertEvent]) -> None:
        if self._early_events is not None:
            self._early_events.extend(events)
        for callback in list(self.on_alert_events):
            self._deliver_to(callback, events)

    def _deliver_to(self, callback: Callable[[list[AlertEvent]], None],
                    events: list[AlertEvent]) -> None:
        try:
            callback(list(events))
        except Exception:
            self.delivery_errors_total += 1
            log.exception("alert delivery callback %r failed", callback)

    def _publish_alerts(self) -> None:
        """An immutable copy for the HTTP thread: it never reads the engine's state."""
        from gpuwarden.alerts.alert import AlertState

        if self.rule_engine is not None:
            live = self.rule_engine.alerts(AlertState.PENDING, AlertState.FIRING)
            self._alerts_api = [a.to_api() for a in live]

    def _derive(self) -> list[Sample]:
        """Window signals (quantiles, rates, GPU spread) from the store; a failure costs
        only them.

        They summarise 60 s windows, so recomputing them every second adds nothing a
        15 s Prometheus scrape could see: they are refreshed every DERIVE_EVERY_S and
        the last values exported in between (at most that much older).
        """
        if self._store is None:
            return []
        from gpuwarden.promql.derived import derive

        now = self.clock()
        if self._derived_at is not None and now - self._derived_at < DERIVE_EVERY_S:
            return self._derived
        try:
            self._derived = derive(self._store, now, interval=self.config.interval)
            self._derived_at = now
            return self._derived
        except Exception as exc:
            self.cycle_errors_total += 1
            self._log.warning("derive", "computing window signals failed: %s", exc)
            return []

    def _guarded_retention(self) -> None:
        try:
            deleted = self._store.apply_retention(self.clock(), self.config.storage.retention)
            if deleted:
                log.info("retention: deleted %d rows older than %gs", deleted,
                         self.config.storage.retention)
        except Exception:
            log.exception("retention job failed")

    # --- what the HTTP layer reads -------------------------------------------------------

    def metrics_body(self) -> bytes:
        return self.exposition.body

    def health(self) -> tuple[bool, dict[str, Any]]:
        # Alive: a cycle ended within three intervals, and never less than HEALTH_MIN_S,
        # so that one slow cycle at a 100 ms interval does not read as a dead loop.
        limit = max(3 * self.config.interval, HEALTH_MIN_S)
        if self.last_cycle_end is None:
            # Starting up: healthy for the first few intervals, then not.
            age = time.monotonic() - self._started_mono
            return age < limit + 2.0, {"last_cycle_age_seconds": None}
        age = time.monotonic() - self.last_cycle_end
        detail: dict[str, Any] = {"last_cycle_age_seconds": round(age, 3),
                                  "cycles": self.cycles_total}
        if self.writer is not None:  # the loop is what /healthz is about; the store is told
            detail.update(self.writer.status().to_json())
        return age <= limit, detail

    def _store_degraded(self) -> bool:
        return self.writer is not None and self.writer.status().degraded

    def push_samples(self, samples: list[Sample]) -> None:
        """Queue externally pushed samples for the next cycle (bounded)."""
        with self._push_lock:
            if len(self._pushed) + len(samples) > MAX_PUSHED_SAMPLES:
                raise OverflowError("too many pushed samples waiting for the next cycle")
            self._pushed.extend(samples)
            for sample in samples:
                self._pushed_latest[(sample.signal, sample.labels)] = sample

    def _recent_pushed(self) -> list[Sample]:
        """Pushed series younger than PUSHED_TTL_S and not already in this cycle."""
        cutoff = self.clock() - PUSHED_TTL_S
        with self._push_lock:
            for key in [k for k, s in self._pushed_latest.items() if s.ts < cutoff]:
                del self._pushed_latest[key]
            return list(self._pushed_latest.values())

    def _take_pushed(self) -> list[Sample]:
        with self._push_lock:
            pushed, self._pushed = self._pushed, []
        return pushed

    def push_quality(self, body: bytes, headers: Any) -> tuple[int, dict[str, Any]]:
        from gpuwarden.api.quality_push import api_token, handle_quality_post

        return handle_quality_post(body, headers, token=api_token(self.config),
                                   sink=self.push_samples, node=self.config.node)

    def alerts_json(self) -> list[dict[str, Any]]:
        """Pending and firing alerts as of the last evaluation (``/api/v1/alerts``)."""
        return self._alerts_api

    def _snapshot(self, samples: list[Sample]) -> Snapshot:
        from gpuwarden.api.exposition import Snapshot
        from gpuwarden.model import SelfMetric

        store = self._store
        success = tuple(({"collector": n}, v) for n, v in sorted(self._collector_success.items()))
        duration = tuple(({"collector": n}, v) for n, v in sorted(self._collector_duration.items()))
        errors = tuple(
            ({"collector": n}, float(v)) for n, v in sorted(self._collector_errors.items())
        )
        scrape_errors = tuple(
            ({"collector": c.name, "reason": reason}, float(count))
            for c in self._collectors or ()
            for reason, count in sorted(getattr(c, "scrape_errors_total", {}).items())
        )
        invalid_lines = tuple(
            ({"collector": c.name}, float(c.parse_errors_total))
            for c in self._collectors or () if hasattr(c, "parse_errors_total")
        )
        self_metrics = [
            SelfMetric("collector_success", "gauge",
                       "1 if the collector's last run succeeded, 0 if it failed or hung", success),
            SelfMetric("collector_duration_seconds", "gauge",
                       "Wall time of the collector's last completed run", duration),
            SelfMetric("collector_errors", "counter", "Failed or overrunning collector runs",
                       errors),
            SelfMetric("scrape_errors", "counter", "Failed scrapes by reason", scrape_errors),
            SelfMetric("scrape_invalid_lines", "counter",
                       "Lines rejected inside payloads that were still used", invalid_lines),
            SelfMetric("cycle_duration_seconds", "gauge", "Wall time of the last cycle",
                       (({}, self.last_cycle_seconds),)),
            SelfMetric("cycles", "counter", "Completed collection cycles",
                       (({}, float(self.cycles_total)),)),
            SelfMetric("cycle_errors", "counter", "Cycles that raised unexpectedly",
                       (({}, float(self.cycle_errors_total)),)),
            SelfMetric("cycles_skipped", "counter",
                       "Scheduled cycles skipped because the previous one was still running",
                       (({}, float(self.cycles_skipped_total)),)),
            SelfMetric("samples_collected", "counter", "Samples returned by collectors",
                       (({}, float(self.samples_collected_total)),)),
        ]
        if store is not None:
            self_metrics += [
                SelfMetric("samples_written", "counter", "Samples durably written to the store",
                           (({}, float(store.samples_written_total)),)),
                SelfMetric("store_write_errors", "counter",
                           "Failed store writes by reason (timeout: the database did not "
                           "answer in time)", _write_errors(store)),
                SelfMetric("store_pending_samples", "gauge",
                           "Samples buffered in memory while the store is unwritable",
                           (({}, float(store.pending_samples)),)),
                SelfMetric("store_dropped_samples", "counter",
                           "Samples dropped because the pending buffer was full",
                           (({}, float(store.dropped_samples_total)),)),
            ]
        if self.rule_engine is not None:
            from gpuwarden.alerts.engine import alert_self_metrics

            self_metrics += alert_self_metrics(
                self.rule_engine,
                state_errors=self._alert_state.errors_total if self._alert_state else 0,
                delivery_errors=self.delivery_errors_total,
            )
        if self.dispatcher is not None:
            self_metrics += self.dispatcher.metrics()
        info = {"node": self.config.node, "gpu_source": self.gpu_source}
        return Snapshot(samples=tuple(samples), self_metrics=tuple(self_metrics), info=info)


def _run_collector(collector: Collector) -> CollectorResult:
    started = time.perf_counter()
    try:
        samples = list(collector.collect())
    except GpuwardenError as exc:
        return CollectorResult([], time.perf_counter() - started, str(exc) or type(exc).__name__)
    except Exception as exc:  # a bug in one collector must not stop the others
        log.exception("collector %s raised", collector.name)
        return CollectorResult([], time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    return CollectorResult(samples, time.perf_counter() - started, None, collector.last_error)


#: Every reason ``store_write_errors_total`` is exported with, 0 until it happens, so
#: that ``rate()`` over it works from the first scrape.
WRITE_ERROR_REASONS = ("timeout", "unavailable", "locked", "disk_full", "error")


def _write_errors(store: Any) -> tuple[tuple[dict[str, str], float], ...]:
    counts = getattr(store, "write_errors", None)
    if counts is None:  # a stand-in store of a test
        return (({"reason": "error"}, float(store.write_errors_total)),)
    reasons = sorted(set(WRITE_ERROR_REASONS) | set(counts))
    return tuple(({"reason": r}, float(counts.get(r, 0))) for r in reasons)


def _stall_after(interval: float) -> float:
    """Seconds a store write may wait before it counts as a timeout: two cycles' worth,
    at least 2 s (a busy SQLite's busy_timeout and a PostgreSQL commit fit well within)."""
    return max(2.0, 2 * interval)


def _drop_skip_warnings(record: logging.LogRecord) -> bool:
    """APScheduler's per-run "skipped"/"missed" warnings (counted by the daemon)."""
    msg = str(record.msg)
    return not ("skipped: maximum number of running instances" in msg
                or "was missed by" in msg)


def _effective_source(collectors: list[Collector], config: Config) -> str:
    names = {c.name for c in collectors}
    for source in ("sim", "nvml", "dcgm"):
        if source in names:
            return source
    return "off" if config.gpu.source in ("off", "auto") else config.gpu.source


def _keep(new: Config, old: Config, *attrs: str) -> Config:
    import dataclasses

    return dataclasses.replace(new, **{a: getattr(old, a) for a in attrs})


def _close_quietly(collector: Collector) -> None:
    try:
        collector.close()
    except Exception:
        log.exception("closing collector %s failed", collector.name)


def _redact_url(url: str) -> str:
    """Never log a database password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"


def _utcnow(offset: float = 0.0) -> Any:
    import datetime

    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
