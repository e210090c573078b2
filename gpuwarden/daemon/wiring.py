"""Building the daemon's parts from a ``Config``: collectors, store, rules, delivery, HTTP.

Each builder imports what it builds when it is called, not when this module is
imported: ``gpuwarden run`` imports the daemon before its first cycle is collected and
stored, and that path must not load SQLAlchemy, numpy, prometheus_client or APScheduler
(``tests/test_startup_imports.py``). The types below are for the type checker only.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from gpuwarden import __version__
from gpuwarden.collector.base import Collector
from gpuwarden.config import Config

if TYPE_CHECKING:
    import requests

    from gpuwarden.alerts.dispatch import Dispatcher
    from gpuwarden.alerts.engine import RuleEngine
    from gpuwarden.alerts.served_models import ServedModels
    from gpuwarden.alerts.state import AlertStatePersister
    from gpuwarden.api.server import DaemonView, HttpServer
    from gpuwarden.collector.memory_budget import MemoryBudget
    from gpuwarden.daemon.fleet import FleetMode
    from gpuwarden.fleet.evaluator import EventSink
    from gpuwarden.storage.instance_lock import InstanceLock
    from gpuwarden.storage.store import Store
    from gpuwarden.storage.writer import StoreWriter

#: A database read on the collection loop waits at most this long (storage/read_deadline.py).
STORE_READ_TIMEOUT_S = 0.5


class LazySession:
    """A ``requests.Session`` made on the first call, so a node with only NVML or
    simulated GPUs, plain-http servers (fetched with libcurl) and no receiver never
    imports ``requests`` (ARCHITECTURE.md, convention 7): the daemon has one for its
    scrapes (``for_scrapes``: ``collector/session.py``, one kept connection per target,
    no proxy from the environment) and one for deliveries, which honours the
    environment's proxies as receivers off the node may need."""

    def __init__(self, *, for_scrapes: bool = False) -> None:
        self._session: requests.Session | None = None
        self._for_scrapes = for_scrapes
        # Scrapes that need ``requests`` run on pool workers: the first two must not
        # each make (and one of them leak) a session.
        self._making = threading.Lock()

    def __call__(self) -> requests.Session:
        with self._making:
            if self._session is None:
                self._session = self._make()
            return self._session

    def _make(self) -> requests.Session:
        if self._for_scrapes:
            from gpuwarden.collector.session import scrape_session

            return scrape_session()
        import requests

        session = requests.Session()
        session.headers["User-Agent"] = f"gpuwarden/{__version__}"
        return session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()


def build_collectors(config: Config, session: Callable[[], requests.Session]) -> list[Collector]:
    """The collectors a config asks for: one GPU source, one per server, the canaries.

    ``session`` is called only when a collector makes HTTP requests through
    ``requests``, so a node with only NVML or simulated GPUs and plain-http servers
    (fetched with libcurl) never imports it for collection.
    """
    from gpuwarden.collector import gpu_collector, server_collector

    gpu = config.gpu
    collectors: list[Collector] = []
    gpu_source = gpu_collector(gpu.source, node=config.node, sim_gpus=gpu.sim_gpus,
                               sim_load=gpu.sim_load, dcgm_url=gpu.dcgm_url, timeout=gpu.timeout,
                               session=session() if gpu.source == "dcgm" else None)
    if gpu_source is not None:
        collectors.append(gpu_source)
    collectors.extend(server_collector(s, node=config.node, session=session)
                      for s in config.servers)
    if config.quality.canaries and any(s.api_url for s in config.servers):
        from gpuwarden.collector.quality.canary import quality_collector

        canaries = quality_collector(config, session=session())
        if canaries is not None:
            collectors.append(canaries)
    return collectors


def build_memory_budget(config: Config) -> MemoryBudget:
    """Each cycle's memory budget, server -> GPU join and GPU prices
    (``collector/memory_budget.py``), for the config's servers and ``[cost]``."""
    from gpuwarden.collector.memory_budget import MemoryBudget

    return MemoryBudget(config.node, config.servers, config.cost.gpu_hour_usd)


def memory_budget_inputs(config: Config) -> tuple[object, ...]:
    """What the memory budget is built from: a reload that changes none of it keeps the
    budget (and its cached attribution)."""
    return config.node, config.servers, config.cost


def effective_source(collectors: list[Collector], config: Config) -> str:
    """The GPU source actually running (``auto`` resolved), for ``gpuwarden_build_info``."""
    names = {c.name for c in collectors}
    for source in ("sim", "nvml", "dcgm"):
        if source in names:
            return source
    return "off" if config.gpu.source in ("off", "auto") else config.gpu.source


def keep_on_reload(new: Config, old: Config) -> Config:
    """``new`` with what a reload cannot change (the listen address, the store) of ``old``."""
    return dataclasses.replace(new, listen=old.listen, storage=old.storage)


def acquire_lock(config: Config) -> InstanceLock:
    """One daemon per store and node (``storage/instance_lock.py``), before any write."""
    from gpuwarden.storage.instance_lock import acquire_instance_lock

    return acquire_instance_lock(config.storage.url, config.node)


def open_store(config: Config) -> Store:
    """The store, with a deadline on the reads the collection loop makes.

    Its cut waits until a boundary is a window-signal window behind (``cut_delay``): the
    rules and window signals that read the last minute every few seconds then read the
    head's columns, not chunks decoded anew for each read in the minute after each cut.
    """
    from gpuwarden.promql.derived import DEFAULT_WINDOW
    from gpuwarden.storage import open_store

    return open_store(config.storage.url, node=config.node, read_timeout=STORE_READ_TIMEOUT_S,
                      cut_delay=DEFAULT_WINDOW)


def stall_after(interval: float) -> float:
    """Seconds a store write may wait before it counts as a timeout: two cycles' worth,
    at least 2 s (a busy SQLite's busy_timeout and a PostgreSQL commit fit well within)."""
    return max(2.0, 2 * interval)


def build_writer(store: Store, interval: float, jobs: list[tuple[str, Callable[[], object]]]
                 ) -> StoreWriter:
    """The writer thread (not started) for the store and the other writes of the loop."""
    from gpuwarden.storage.writer import StoreWriter

    writer = StoreWriter(store, stall_after=stall_after(interval))
    for name, job in jobs:
        writer.add_job(name, job)
    return writer


def build_rule_engine(config: Config) -> RuleEngine:
    """The rule engine over the default rules and the config's."""
    from gpuwarden.alerts.engine import RuleEngine
    from gpuwarden.detectors.defaults import effective_rules

    return RuleEngine(effective_rules(config.rules), node=config.node, interval=config.interval)


def build_alert_state(store: Store, config: Config) -> AlertStatePersister:
    """Alert state persisted in the store, so a restart neither forgets nor re-fires."""
    from gpuwarden.alerts.state import AlertStatePersister, AlertStateStore

    return AlertStatePersister(AlertStateStore(store.engine, config.node))


def build_served_models(store: Store, config: Config) -> ServedModels:
    """Which model each server serves and served before, for rollback annotations."""
    from gpuwarden.alerts.served_models import ServedModels

    return ServedModels(store.engine, node=config.node)


def build_dispatcher(config: Config, store: Store,
                     session: requests.Session | Callable[[], requests.Session],
                     served_models: ServedModels | None) -> Dispatcher:
    """Alert delivery (guard rails, retries, audit), not started. ``session`` may be
    what makes it (a :class:`LazySession`), called by the first HTTP delivery."""
    from gpuwarden.alerts.dispatch import Dispatcher

    return Dispatcher(config.actions, engine=store.engine, session=session, node=config.node,
                      listen=config.listen, interval=config.interval,
                      served_models=served_models)


def build_fleet(store: Store, config: Config, sink: EventSink,
                clock: Callable[[], float]) -> FleetMode | None:
    """Fleet mode's heartbeat and fleet rules (not started), on a PostgreSQL store only."""
    from gpuwarden.daemon.fleet import FleetMode, fleet_capable

    return FleetMode(store, config, sink, clock) if fleet_capable(store) else None


def build_http_server(config: Config, view: DaemonView) -> HttpServer:
    """The HTTP endpoints, bound (``OSError`` when the address is taken), not started."""
    from gpuwarden.api.server import HttpServer

    host, port = config.listen_host_port
    return HttpServer(host, port, view)


def redact_url(url: str) -> str:
    """Never log a database password."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparseable url>"
