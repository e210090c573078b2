"""One cycle's collection: every collector at once, a deadline, each one timed.

node_exporter's ``execute``, for gpuwarden: every collector runs on a worker of a small
pool, and each one's outcome is kept as ``gpuwarden_collector_success``,
``gpuwarden_collector_duration_seconds`` and ``gpuwarden_collector_errors_total``
(``{collector}``). A collector that raises is logged (rate-limited) and counted; the
others' samples are used (ARCHITECTURE.md, convention 1). The counters of every
configured collector are exported from 0, before anything failed.

A collector that hangs (a scrape of a server that accepts and never answers) is not
waited for past the deadline: it reads as failed for that cycle and is left to finish
in its worker, and it is not started again until it has, so a dead inference server can
never stall GPU sampling or pile up threads.

Scrapes of plain-http servers (:class:`FetchesFirst`, ``scrape.ServerCollector``) do not
take a worker each: their transfers all run at once on the calling thread through one
libcurl multi handle (``curl_fetch.MultiFetch``), and each body is parsed on that thread
as it arrives. A thread hop per scrape cost more CPU than the fetch itself
(``python -m bench http-clients``). Same rules: a transfer still running at the deadline
reads as failed for the cycle, goes on at the next one and is not started again until it
has ended (libcurl and ``MultiFetch`` bound it by the server's timeout); a body that
arrives after the deadline is parsed on a worker, so that a huge payload cannot hold the
cycle either.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from gpuwarden.collector.base import Collector
from gpuwarden.collector.curl_fetch import Fetch, MultiFetch
from gpuwarden.errors import GpuwardenError
from gpuwarden.model import Sample, SelfMetric
from gpuwarden.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

MAX_WORKERS = 8


@dataclass(frozen=True, slots=True)
class CollectorRun:
    """One finished run of one collector."""

    samples: list[Sample]
    duration: float  # seconds of wall time
    error: str | None  # what it raised
    reported_error: str | None = None  # ``Collector.last_error`` after a normal return

    @property
    def succeeded(self) -> bool:
        return self.error is None and self.reported_error is None


@runtime_checkable
class FetchesFirst(Protocol):
    """A collector whose run is a libcurl transfer, then work on its result: the runner
    drives the transfers of all of them at once (module docstring)."""

    name: str
    last_error: str | None

    def begin_fetch(self) -> Fetch | None:
        """The transfer to run for this cycle, reserved; None: run ``collect`` instead."""
        ...

    def finish_fetch(self, fetch: Fetch, code: int, message: str) -> list[Sample]:
        """This cycle's samples from the finished transfer (libcurl's code and message);
        gives the transfer back."""
        ...


@runtime_checkable
class CountsScrapeErrors(Protocol):
    """A collector that counts its failed scrapes by reason (``scrape_errors_total``)."""

    @property
    def scrape_errors_total(self) -> Mapping[str, int]: ...


@runtime_checkable
class DeclaresScrapeErrorReasons(Protocol):
    """A collector that says every reason its ``scrape_errors_total`` can count: each is
    exported at 0 from the start (Prometheus' practice for label sets known in advance;
    an open-ended one, such as a status code, is declared by its known values only)."""

    @property
    def scrape_error_reasons(self) -> tuple[str, ...]: ...


@runtime_checkable
class CountsInvalidLines(Protocol):
    """A collector that counts lines rejected inside payloads it still used."""

    @property
    def parse_errors_total(self) -> int: ...


#: A collector's declared reasons, sorted, each with its label set.
_ZeroReasons = tuple[tuple[str, dict[str, str]], ...]


def _zero_reasons(name: str, collector: object) -> _ZeroReasons:
    if not isinstance(collector, DeclaresScrapeErrorReasons):
        return ()
    return tuple((reason, {"collector": name, "reason": reason})
                 for reason in sorted(set(collector.scrape_error_reasons)))


def _scrape_error_samples(name: str, counters: CountsScrapeErrors, zeros: _ZeroReasons,
                          ) -> list[tuple[dict[str, str], float]]:
    """Every declared reason (0 until counted) and any other reason counted, sorted."""
    counted = dict(counters.scrape_errors_total)  # a copy: scrapes count on other threads
    out = [(labels, float(counted.pop(reason, 0))) for reason, labels in zeros]
    if counted:  # a reason the collector did not declare: still exported, in order
        out += [({"collector": name, "reason": r}, float(n)) for r, n in counted.items()]
        out.sort(key=lambda sample: sample[0]["reason"])
    return out


def run_collector(collector: Collector) -> CollectorRun:
    """Run ``collector`` once, timed; whatever it raises becomes the run's error."""
    return _timed(collector.name, time.perf_counter(), collector.collect,
                  lambda: collector.last_error)


def finish_collector(collector: FetchesFirst, fetch: Fetch, code: int, message: str,
                     started: float) -> CollectorRun:
    """:func:`run_collector` for the second half of a :class:`FetchesFirst` collector."""
    return _timed(collector.name, started,
                  lambda: collector.finish_fetch(fetch, code, message),
                  lambda: collector.last_error)


def _timed(name: str, started: float, work: Callable[[], Iterable[Sample]],
           reported: Callable[[], str | None]) -> CollectorRun:
    """The run of ``work`` begun at ``started``: its samples and ``reported()`` (the
    collector's ``last_error``) after a normal return, else what it raised."""
    try:
        samples = list(work())
    except GpuwardenError as exc:
        return CollectorRun([], time.perf_counter() - started, str(exc) or type(exc).__name__)
    except Exception as exc:  # a bug in one collector must not stop the others
        log.exception("collector %s raised", name)
        return CollectorRun([], time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    return CollectorRun(samples, time.perf_counter() - started, None, reported())


def close_collectors(collectors: Iterable[Collector]) -> None:
    """Close each collector; one that raises is logged and the others are still closed."""
    for collector in collectors:
        try:
            collector.close()
        except Exception:
            log.exception("closing collector %s failed", collector.name)


class CollectorRunner:
    """Runs a set of collectors once per call of :meth:`run` and keeps how each one did.

    Not thread-safe: one caller (the daemon's cycle, under its lock) runs, replaces and
    reads it.
    """

    def __init__(self, collectors: Sequence[Collector] = (), *,
                 max_workers: int = MAX_WORKERS) -> None:
        self._pool = ThreadPoolExecutor(max_workers, thread_name_prefix="gpuwarden-collect")
        self._in_flight: dict[str, Future[CollectorRun]] = {}
        self._multi = MultiFetch()
        # name -> (collector, its transfer, when its run started) while the transfer runs
        self._fetching: dict[str, tuple[FetchesFirst, Fetch, float]] = {}
        self._log = RateLimitedLog(log)
        self._success: dict[str, float] = {}
        self._duration: dict[str, float] = {}
        self._errors: dict[str, int] = defaultdict(int)
        self._collectors: tuple[Collector, ...] = ()
        # (collector, its counters, the reasons it declares with their label sets at 0)
        self._scrape_counters: tuple[tuple[str, CountsScrapeErrors, _ZeroReasons], ...] = ()
        self._line_counters: tuple[tuple[str, CountsInvalidLines], ...] = ()
        self.replace(collectors)

    @property
    def collectors(self) -> tuple[Collector, ...]:
        return self._collectors

    def replace(self, collectors: Sequence[Collector]) -> tuple[Collector, ...]:
        """Run ``collectors`` from the next :meth:`run` on; returns the ones they replace,
        for the caller to close. Runs still in flight are forgotten.

        The counters of every collector start at 0 here (``collector_errors``, and each
        declared reason of ``scrape_errors``), worked out once per config rather than
        per scrape; a collector kept by name keeps its error count, and the figures of
        a collector that is gone are gone from ``/metrics``, as a target that went away
        is for Prometheus."""
        old, self._collectors = self._collectors, tuple(collectors)
        self._in_flight.clear()
        # The old collectors' transfers stop (the caller closes them); the connection
        # cache stays, for the new collectors of the same servers.
        self._multi.cancel()
        self._multi.set_max_connections(2 * len(self._collectors) + 8)
        self._fetching.clear()
        names = [c.name for c in self._collectors]
        self._success = {n: v for n, v in self._success.items() if n in names}
        self._duration = {n: v for n, v in self._duration.items() if n in names}
        kept = self._errors
        self._errors = defaultdict(int, {n: kept.get(n, 0) for n in names})
        self._scrape_counters = tuple((c.name, c, _zero_reasons(c.name, c))
                                      for c in self._collectors
                                      if isinstance(c, CountsScrapeErrors))
        self._line_counters = tuple((c.name, c) for c in self._collectors
                                    if isinstance(c, CountsInvalidLines))
        return old

    def run(self, timeout: float) -> list[Sample]:
        """Run every collector (those still running are not started again) and return
        the samples of those that finished within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        busy = self._in_flight.keys() | self._fetching.keys()
        for collector in self._collectors:
            if collector.name in busy:
                continue
            if isinstance(collector, FetchesFirst):
                fetch = collector.begin_fetch()
                if fetch is not None:
                    self._multi.add(fetch)
                    self._fetching[collector.name] = (collector, fetch, time.perf_counter())
                    continue
            self._in_flight[collector.name] = self._pool.submit(run_collector, collector)
        done: dict[str, CollectorRun] = {}
        self._drive_fetches(deadline, done)
        wait_futures(list(self._in_flight.values()),
                     timeout=max(0.0, deadline - time.monotonic()))
        for name, future in list(self._in_flight.items()):
            if future.done():
                del self._in_flight[name]
                done[name] = future.result()
        samples: list[Sample] = []
        for collector in self._collectors:
            name = collector.name
            result = done.get(name)
            if result is not None:
                self._record(name, result)
                samples.extend(result.samples)
            elif name in self._in_flight or name in self._fetching:
                # Still running (a hung scrape): count it once per cycle, keep waiting.
                self._success[name] = 0.0
                self._errors[name] += 1
                self._log.warning(f"slow:{name}", "collector %s is still running past the "
                                  "cycle deadline; not starting it again until it returns", name)
        return samples

    def _drive_fetches(self, deadline: float, done: dict[str, CollectorRun]) -> None:
        """Run the transfers until they end or ``deadline``; each finished one is worked
        on here before the deadline, on a worker after it."""
        if not self._fetching:
            return
        owner = {id(fetch): name for name, (_, fetch, _) in self._fetching.items()}

        def on_done(fetch: Fetch) -> None:
            name = owner[id(fetch)]
            collector, _, started = self._fetching.pop(name)
            code, message = self._multi.result_of(fetch)
            if time.monotonic() < deadline:
                done[name] = finish_collector(collector, fetch, code, message, started)
            else:
                self._in_flight[name] = self._pool.submit(finish_collector, collector, fetch,
                                                          code, message, started)

        self._multi.drive(deadline, on_done)

    def _record(self, name: str, result: CollectorRun) -> None:
        self._duration[name] = result.duration
        if result.succeeded:
            self._success[name] = 1.0
            self._log.recovered(f"fail:{name}", "collector %s recovered", name)
            return
        self._success[name] = 0.0
        self._errors[name] += 1
        if result.error is not None:  # a failure reported as data was logged by the collector
            self._log.warning(f"fail:{name}", "collector %s failed: %s", name, result.error)

    def close(self) -> None:
        """Stop the workers (a hung run is not waited for) and close every collector."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._multi.close()
        self._fetching.clear()
        close_collectors(self._collectors)

    def metrics(self) -> tuple[SelfMetric, ...]:
        """Each collector's last outcome, and the scrape counters of those that keep them."""
        def per_collector(values: Mapping[str, float]) -> tuple[tuple[dict[str, str], float], ...]:
            return tuple(({"collector": n}, float(v)) for n, v in sorted(values.items()))

        scrape_errors = tuple(sample for name, c, zeros in self._scrape_counters
                              for sample in _scrape_error_samples(name, c, zeros))
        invalid_lines = tuple(({"collector": name}, float(c.parse_errors_total))
                              for name, c in self._line_counters)
        return (
            SelfMetric("collector_success", "gauge",
                       "1 if the collector's last run succeeded, 0 if it failed or hung",
                       per_collector(self._success)),
            SelfMetric("collector_duration_seconds", "gauge",
                       "Wall time of the collector's last completed run",
                       per_collector(self._duration)),
            SelfMetric("collector_errors", "counter", "Failed or overrunning collector runs",
                       per_collector(self._errors)),
            SelfMetric("scrape_errors", "counter", "Failed scrapes by reason", scrape_errors),
            SelfMetric("scrape_invalid_lines", "counter",
                       "Lines rejected inside payloads that were still used", invalid_lines),
        )
