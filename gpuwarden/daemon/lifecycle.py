"""The daemon's life: start, the schedule, signals, SIGHUP reload, stop.

``Daemon.start`` takes the instance lock (one daemon per store and node,
``storage/instance_lock.py``; a second instance exits naming the first one's PID), runs
the first cycle before the heavy libraries are imported (``cycle.py``) and serves it on
the HTTP endpoints, opens the store, starts the rules, the store's writer thread and
delivery, then the schedule (``schedule.py``). The parts are built by ``wiring.py``; the cycle is
``cycle.py``.

The main thread sleeps in ``run_forever`` until something happens: a stop request, or a
signal. Python runs signal handlers on the main thread only, and only once it runs
Python code again; a signal the kernel hands to another thread does not interrupt the
main thread's wait. So the main thread sleeps on a socketpair that
``signal.set_wakeup_fd`` writes to when any handled signal arrives (and
``request_stop`` writes to from any thread), rather than waking every half second to
look: an idle daemon then costs nothing there, and SIGHUP/SIGTERM are acted on at once.

Failure policy (ARCHITECTURE.md, convention 9): every scheduled job sits in a catch-all
that logs, counts and carries on; a reload that fails keeps the running config; stopping
never waits on a database that does not answer for longer than ``SHUTDOWN_FLUSH_S``.
"""

from __future__ import annotations

import logging
import select
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from gpuwarden import __version__
from gpuwarden.collector.base import Collector
from gpuwarden.collector.run import CollectorRunner, close_collectors
from gpuwarden.config import Config, load_config
from gpuwarden.daemon import wiring
from gpuwarden.daemon.alerting import AlertCallback
from gpuwarden.daemon.cycle import Cycle, FirstCycle, stores_first_cycle_early
from gpuwarden.daemon.gc_freeze import GcFreeze
from gpuwarden.daemon.schedule import (
    CYCLE_JOB,
    JobEvent,
    Scheduler,
    reschedule_cycle,
    start_scheduler,
)
from gpuwarden.daemon.sdnotify import SystemdNotifier
from gpuwarden.errors import ConfigError, GpuwardenError, InstanceLocked, StoreError
from gpuwarden.model import Sample
from gpuwarden.native_memory import PeriodicTrim, fix_mmap_threshold, limit_arenas
from gpuwarden.ratelog import RateLimitedLog
from gpuwarden.wakeup import WakeupPair

if TYPE_CHECKING:
    from gpuwarden.api.quality_push import Headers
    from gpuwarden.api.server import HttpServer
    from gpuwarden.storage.instance_lock import InstanceLock
    from gpuwarden.storage.store import Store

log = logging.getLogger(__name__)

#: Seconds given to the writer to write what is pending when stopping.
SHUTDOWN_FLUSH_S = 5.0
#: Seconds given to delivery to send what is queued, when stopping or replacing it.
DELIVERY_STOP_S = 3.0
#: glibc malloc arenas for the whole process (default: 8 per core), see native_memory.
MALLOC_ARENAS = 2
#: Blocks from this size get their own mapping, returned when freed (native_memory).
MMAP_THRESHOLD_BYTES = 256 * 1024
#: Seconds between two hand-backs of freed memory after a cycle (native_memory).
TRIM_EVERY_S = 10.0


class _Wakeup:
    """What the main thread sleeps on (module doc): a :class:`WakeupPair` woken by
    :meth:`wake` (any thread, signal handlers too) and, once :meth:`catch_signals` ran,
    by Python's C-level signal handler."""

    def __init__(self) -> None:
        self._pair: WakeupPair | None = None
        self._poll: select.poll | None = None
        self._previous_fd: int | None = None  # set_wakeup_fd's, while ours is installed

    def open(self) -> None:
        """Create the pair (by the sleeping thread, before it looks at what to do)."""
        if self._pair is None:
            pair = WakeupPair()
            poll = select.poll()  # not select.select: no FD_SETSIZE limit
            poll.register(pair.reader, select.POLLIN)
            self._pair, self._poll = pair, poll

    def catch_signals(self) -> None:
        """Wake on every signal that has a Python handler (main thread only)."""
        self.open()
        if self._previous_fd is None and self._pair is not None:
            self._previous_fd = signal.set_wakeup_fd(self._pair.writer.fileno(),
                                                     warn_on_full_buffer=False)

    def wake(self) -> None:
        pair = self._pair
        if pair is not None:
            pair.wake()

    def sleep(self, timeout: float | None) -> None:
        """Until a wake-up (one pending returns at once) or ``timeout`` seconds."""
        self.open()
        assert self._poll is not None and self._pair is not None
        ms = None if timeout is None else max(0, int(timeout * 1000) + 1)
        if self._poll.poll(ms):
            self._pair.drain()

    def close(self) -> None:
        """Give the previous wake-up fd back and close the pair. Not possible off the main
        thread while ours is installed: the pair then stays open, or a signal would
        write into whatever file reuses its number."""
        if self._previous_fd is not None:
            if threading.current_thread() is not threading.main_thread():
                return
            signal.set_wakeup_fd(self._previous_fd)
            self._previous_fd = None
        pair, self._pair, self._poll = self._pair, None, None
        if pair is not None:
            pair.close()


class Daemon:
    """Owns the parts -- store, collectors, cycle, schedule, HTTP -- and runs them.

    ``collectors``: run these instead of the config's (tests, the demo); ``store``: an
    open store to use (no instance lock, no early first cycle); ``freeze_gc``: the
    process is the daemon's own (``gpuwarden run``), so its long-lived objects may be
    frozen out of the garbage collector's passes (``gc_freeze``).
    """

    def __init__(
        self,
        config: Config,
        *,
        collectors: list[Collector] | None = None,
        clock: Callable[[], float] = time.time,
        store: Store | None = None,
        freeze_gc: bool = False,
    ) -> None:
        self.clock = clock
        self.notifier = SystemdNotifier()
        self.exit_code = 0  # what run_forever returns (1: another instance took the store)
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._wakeup = _Wakeup()  # what the main thread sleeps on (module doc)
        self._session = wiring.LazySession()  # deliveries
        self._scrape_session = wiring.LazySession(for_scrapes=True)
        self._collectors_built = collectors is not None
        self.cycle = Cycle(config, runner=CollectorRunner(collectors or ()),
                           notifier=self.notifier, clock=clock, stopping=self._stop,
                           gpu_source="custom" if collectors is not None else config.gpu.source)
        self.cycle.store = store
        self._lock: InstanceLock | None = None
        self._scheduler: Scheduler | None = None
        self._http: HttpServer | None = None
        self._log = RateLimitedLog(log)
        self._trim = PeriodicTrim(TRIM_EVERY_S)
        self._gc_freeze = GcFreeze() if freeze_gc else None

    # --- what callers read ---------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self.cycle.config

    @property
    def store(self) -> Store | None:
        return self.cycle.store

    @property
    def http_port(self) -> int:
        return self._http.port if self._http is not None else 0

    @property
    def on_alert_events(self) -> list[AlertCallback]:
        """Callbacks given every cycle's AlertEvents (FIRING/RESOLVED), in order; one
        that raises is logged and counted, and the others still get them."""
        return self.cycle.alerting.on_alert_events

    @property
    def cycles_total(self) -> int:
        return self.cycle.stats.cycles_total

    @property
    def cycle_errors_total(self) -> int:
        return self.cycle.stats.cycle_errors_total

    @property
    def cycles_skipped_total(self) -> int:
        return self.cycle.stats.cycles_skipped_total

    @property
    def last_cycle_seconds(self) -> float:
        return self.cycle.stats.last_cycle_seconds

    # --- start -------------------------------------------------------------------------

    def start(self) -> None:
        """Open the store, run the first cycle, bind HTTP, start the schedule.

        The first cycle runs before the HTTP server and scheduler are even imported,
        so the first sample is stored as early as the store's own imports allow. On a
        SQLite file it is stored before that: collected, written by ``storage/early.py``
        with the standard library, then loaded by the store's replay on open (see
        ``Cycle.run_early``); and ``/metrics`` answers with it right after, before the
        store is opened (``Cycle.publish_early``: the self-metrics of the store and the
        rules are absent until then). Before any of that, the instance lock: a second
        daemon on the same store and node raises :class:`InstanceLocked` having written
        nothing.
        """
        limit_arenas(MALLOC_ARENAS)  # before the threads: see native_memory
        fix_mmap_threshold(MMAP_THRESHOLD_BYTES)
        cycle = self.cycle
        first: FirstCycle | None = None
        store = cycle.store
        if store is None:
            self._lock = wiring.acquire_lock(self.config)
            if stores_first_cycle_early(self.config.storage.url):
                self._build_collectors()
                first = cycle.run_early()
                if first is not None:
                    # /metrics answers from here on with the first cycle's samples, while
                    # the store, the rules and delivery come up (~0.3-0.5 s of imports).
                    cycle.publish_early(first)
                    self._start_http()
                    # Rendered here, before the store's imports: on the HTTP thread the
                    # first scrape's render would share the GIL with them (~2x longer).
                    cycle.exposition.body  # noqa: B018 - renders and caches the text
            store = wiring.open_store(self.config)
            if first is not None and first.stored:
                # Written by this process, if not through Store.write: count them.
                store.samples_written_total += len(first.samples) + len(first.pushed)
            cycle.store = store
        self._build_collectors()
        try:
            cycle.alerting.rule_engine = wiring.build_rule_engine(self.config)
            cycle.alerting.restore(wiring.build_alert_state(store, self.config), self.clock())
        except Exception:  # alerting is down, collection and /metrics are not
            cycle.alerting.rule_failures_total += 1
            log.exception("cannot start the alert rule engine")
        cycle.served_models = wiring.build_served_models(store, self.config)
        cycle.fleet = wiring.build_fleet(store, self.config, cycle.alerting.deliver, self.clock)
        cycle.guarded(first)
        self._start_writer(store)
        self._start_delivery(store)
        if cycle.fleet is not None:
            cycle.fleet.start()

        if self._http is None:
            self._start_http()
        assert self._http is not None
        self._scheduler = start_scheduler(interval=self.config.interval, cycle=self._cycle_job,
                                          retention=self._guarded_retention,
                                          on_skipped=self._on_cycle_skipped)
        self.notifier.ready(f"collecting every {self.config.interval:g}s")
        host, _ = self.config.listen_host_port
        # The bound port (listen may say :0); brackets so an IPv6 address stays a URL.
        base = f"http://[{host}]:{self._http.port}" if ":" in host else \
            f"http://{host}:{self._http.port}"
        collectors = cycle.runner.collectors
        # The one line a newcomer reads: what runs, where it stores, where to look.
        log.info(
            "gpuwarden %s on node %s: %d collector%s (%s), store %s; metrics %s/metrics, "
            "health %s/healthz, alerts %s/api/v1/alerts",
            __version__, self.config.node, len(collectors), "" if len(collectors) == 1 else "s",
            ", ".join(c.name for c in collectors) or "none",
            wiring.redact_url(self.config.storage.url), base, base, base,
        )

    def _start_http(self) -> None:
        """Bind the endpoints (``OSError`` when the address is taken) and serve them."""
        self._http = wiring.build_http_server(self.config, self)
        self._http.start()

    def _build_collectors(self) -> None:
        """The config's collectors, unless given or built already."""
        if not self._collectors_built:
            collectors = wiring.build_collectors(self.config, self._scrape_session)
            self.cycle.runner.replace(collectors)
            self.cycle.gpu_source = wiring.effective_source(collectors, self.config)
            self._collectors_built = True

    def _start_writer(self, store: Store) -> None:
        """From now on every database write of the loop goes through the writer thread."""
        # First: the samples just written (or failed) show on the next scrape, before the
        # other jobs' waits on the database (``Snapshot.live``).
        jobs: list[tuple[str, Callable[[], object]]] = [
            ("metrics refresh", self.cycle.exposition.refresh)]
        alert_state = self.cycle.alerting.state
        if alert_state is not None:
            jobs.append(("alert state", alert_state.flush))
        served_models = self.cycle.served_models
        if served_models is not None:
            served_models.defer_writes = True
            jobs.append(("served models", served_models.flush))
        if self._lock is not None and self._lock.kind == "postgres":
            jobs.append(("instance lock", self._hold_lock))
        if self.cycle.fleet is not None:
            jobs.append(("node heartbeat", self.cycle.fleet.heartbeat))
        writer = wiring.build_writer(store, self.config.interval, jobs)
        writer.start()
        self.cycle.writer = writer

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
            self.request_stop()

    def _start_delivery(self, store: Store) -> None:
        """The dispatcher (guard rails, retries, audit) on its own threads."""
        served_models = self.cycle.served_models
        self.cycle.alerting.start_delivery(
            lambda: wiring.build_dispatcher(self.config, store, self._session, served_models))

    # --- scheduled jobs ------------------------------------------------------------------

    def run_cycle(self, first: FirstCycle | None = None) -> list[Sample]:
        """One cycle now (``Cycle.run``); returns what was collected."""
        return self.cycle.run(first)

    def _cycle_job(self) -> None:
        """What the schedule runs: a cycle, then the freed memory of its peaks handed back
        to the OS every ``TRIM_EVERY_S`` (``native_memory.PeriodicTrim``) and the
        long-lived objects frozen out of the garbage collector's passes (``gc_freeze``)."""
        self.cycle.guarded()
        try:
            self._trim.due(time.monotonic())
        except Exception as exc:  # never worth a failed cycle
            self._log.warning("trim", "handing freed memory back failed: %s", exc)
        if self._gc_freeze is not None:
            try:
                self._gc_freeze.after_cycle(time.monotonic())
            except Exception as exc:  # likewise
                self._log.warning("gc-freeze", "freezing long-lived objects failed: %s", exc)

    def _on_cycle_skipped(self, event: JobEvent) -> None:
        if event.job_id != CYCLE_JOB:
            return
        stats = self.cycle.stats
        stats.cycles_skipped_total += 1
        self._log.warning("skipped", "collection cycle skipped: the previous one is still "
                          "running (%d skipped so far; see gpuwarden_cycles_skipped_total)",
                          stats.cycles_skipped_total)

    def _guarded_retention(self) -> None:
        store = self.cycle.store
        if store is None:
            return
        try:
            deleted = store.apply_retention(self.clock(), self.config.storage.retention)
            if deleted:
                log.info("retention: deleted %d rows older than %gs", deleted,
                         self.config.storage.retention)
        except Exception:
            log.exception("retention job failed")

    # --- signals -------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop, SIGHUP reloads; handled on the main thread, which they
        wake from ``wait_stop`` (module doc). Main thread only."""
        self._wakeup.catch_signals()
        signal.signal(signal.SIGTERM, self._on_stop_signal)
        signal.signal(signal.SIGINT, self._on_stop_signal)
        signal.signal(signal.SIGHUP, self._on_hup)

    def wait_stop(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds (None: for ever) for a stop request; True once
        stopping. A reload asked for (SIGHUP) before or during the wait is done at once,
        on this thread, and the wait goes on. Only one thread may wait."""
        end = None if timeout is None else time.monotonic() + timeout
        self._wakeup.open()  # before looking: a wake-up from now on ends the sleep below
        while True:
            if self._reload.is_set():
                self._reload.clear()
                try:
                    self.reload()
                except Exception:  # the running config stays; the daemon must not die here
                    log.exception("config reload failed; keeping the running config")
                    self.notifier.ready()
            if self._stop.is_set():
                return True
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return False
            self._wakeup.sleep(left)

    def run_forever(self) -> int:
        """Block until SIGTERM/SIGINT; handle SIGHUP reloads. Returns the exit code."""
        self.install_signal_handlers()
        self.wait_stop()
        self.shutdown()
        return self.exit_code

    def _on_stop_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: flushing and stopping", signal.Signals(signum).name)
        self.request_stop()

    def _on_hup(self, _signum: int, _frame: FrameType | None) -> None:
        self._reload.set()
        # set_wakeup_fd woke the sleep already, maybe before this handler ran and the
        # flag was set: one more wake-up so that wait_stop looks again.
        self._wakeup.wake()

    def request_stop(self) -> None:
        """Stop: ``wait_stop`` returns True (from any thread, and signal handlers)."""
        self._stop.set()
        self._wakeup.wake()

    # --- stop ----------------------------------------------------------------------------

    def shutdown(self) -> None:
        self.notifier.stopping()
        self._stop.set()  # a cycle the scheduler has already handed out returns at once
        cycle = self.cycle
        if self._scheduler is not None:
            # Not wait=True: a retention job stuck on a database that does not answer
            # would hold SIGTERM forever. A running cycle never waits on the database,
            # so waiting for it (the cycle lock) is bounded.
            self._scheduler.shutdown(wait=False)
            if cycle.lock.acquire(timeout=SHUTDOWN_FLUSH_S):
                cycle.lock.release()
        cycle.runner.close()
        if cycle.fleet is not None:
            cycle.fleet.stop()  # gives the lead up at once, before delivery stops
        cycle.alerting.stop_delivery(DELIVERY_STOP_S)  # the rest is dead-lettered
        store = cycle.store
        if cycle.writer is not None:
            # The writer's last pass writes what is pending and cuts the head; a database
            # that does not answer in time is given up on (and not closed: that waits too).
            if cycle.writer.stop(SHUTDOWN_FLUSH_S) and store is not None:
                store.close()
        elif store is not None:
            try:
                store.flush()
            except GpuwardenError as exc:
                log.error("final flush failed; unsaved samples stay in the head log: %s", exc)
            store.close()
        if self._lock is not None:
            self._lock.release()
        if self._http is not None:
            self._http.stop()
        self._session.close()
        self._scrape_session.close()
        self.notifier.close()
        self._wakeup.close()
        log.info("stopped")

    # --- reload --------------------------------------------------------------------------

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
        old = self.config
        if new.listen != old.listen:
            log.warning("config reload: listen changed; that takes effect on restart only")
        if new.storage != old.storage:
            log.warning("config reload: storage changed; that takes effect on restart only")
        new = wiring.keep_on_reload(new, old)
        try:  # everything that can fail, before anything of the running config changes
            from gpuwarden.detectors.defaults import effective_rules

            collectors = wiring.build_collectors(new, self._scrape_session)
            rules = effective_rules(new.rules)
        except Exception as exc:
            log.error("config reload rejected, keeping the running config: %s: %s",
                      type(exc).__name__, exc)
            self.notifier.ready()
            return False
        cycle = self.cycle
        with cycle.lock:
            old_collectors = cycle.runner.replace(collectors)
            cycle.gpu_source = wiring.effective_source(collectors, new)
            cycle.config = new
            cycle.alerting.reconfigure(rules, new.interval)  # alerts of kept rules live on
            if cycle.fleet is not None:
                cycle.fleet.reconfigure(new)
        close_collectors(old_collectors)
        if cycle.alerting.dispatcher is not None and old.actions != new.actions:
            # New actions, new guard rails: the new dispatcher reloads cooldowns, budgets
            # and who saw which firing from the audit trail, so nothing is sent twice.
            cycle.alerting.stop_delivery(DELIVERY_STOP_S)
            assert cycle.store is not None
            self._start_delivery(cycle.store)
        if self._scheduler is not None:
            reschedule_cycle(self._scheduler, new.interval)
        if cycle.writer is not None:
            cycle.writer.stall_after = wiring.stall_after(new.interval)
        if self._gc_freeze is not None:  # old collectors and rules: garbage; new: to freeze
            self._gc_freeze.warm_up_again()
        log.info("config reloaded from %s: %d collectors", path, len(collectors))
        self.notifier.ready()
        return True

    # --- what the HTTP endpoints read (api.server.DaemonView) --------------------------------

    def metrics_body(self, client: str = "") -> bytes:
        """``/metrics``; ``client``, the scraper's address, where it is a scrape."""
        if not client:
            return self.cycle.exposition.body
        return self.cycle.exposition.scraped_by(client)

    def health(self) -> tuple[bool, dict[str, object]]:
        return self.cycle.health()

    def alerts_json(self) -> list[dict[str, object]]:
        """Pending and firing alerts as of the last evaluation (``/api/v1/alerts``)."""
        return self.cycle.alerting.alerts_json()

    def budget_json(self) -> tuple[int, dict[str, object]]:
        """``GET /api/v1/budget``: the memory budget of this node over its store
        (``capacity/budget.py``); 503 with the reason when the store cannot answer.

        On the HTTP thread, never the cycle's: every read waits at most the store's read
        deadline (``storage/read_deadline.py``), past which the reason is the answer.
        """
        from gpuwarden.capacity.budget import build_budget

        store = self.cycle.store
        if store is None:
            return 503, {"error": "the store is not open yet"}
        try:
            budget = build_budget(store, self.clock(), node=self.config.node,
                                  interval=self.config.interval)
        except StoreError as exc:
            return 503, {"error": f"store: {exc}"}
        return 200, budget.to_json()

    def push_quality(self, body: bytes, headers: Headers) -> tuple[int, dict[str, object]]:
        """``POST /api/v1/quality``: the scores wait for the next cycle (``pushed.py``)."""
        from gpuwarden.api.quality_push import api_token, handle_quality_post

        return handle_quality_post(body, headers, token=api_token(self.config.api_token_env),
                                   sink=self.cycle.pushed.push, node=self.config.node)
