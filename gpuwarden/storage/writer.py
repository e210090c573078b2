"""Every database write of the daemon, on one thread of its own.

Why: a deadline cannot bound every wait on a database. A PostgreSQL whose processes are
stopped (SIGSTOP, a paused VM, a stuck storage layer) keeps its TCP connections open
and acknowledged, so neither ``statement_timeout`` (the server enforces it) nor TCP
keepalives fire, and a call into it blocks until it thaws. Were that call on the
collection loop, the node would go blind: no GPU samples, no alerts, ``/healthz`` down
and the systemd watchdog restarting the daemon in a loop.

So the collection loop only ever puts a cycle in the store's memory (``Store.append``)
and wakes this writer; the writer writes the pending backlog in order
(``Store.persist``), then runs the other writers' jobs (alert state, model history),
each of which keeps its changes in memory until written. When the database hangs, the
writer hangs with it, and nothing else does: the loop keeps cycling, rules evaluate from
the head, the pending buffer (bounded, see ``Store``) holds the samples, and the writer
writes them all in order when the database answers.

On a SQLite store the writer also checkpoints the ``-wal`` file into the database:
after every chunk cut (the cut's chunks are most of what the WAL ever holds) and at
least every :data:`CHECKPOINT_EVERY_S`, with a PASSIVE checkpoint (it never waits on a
reader or a writer) and ``journal_size_limit`` cutting the file back once SQLite
starts it over (``engine.checkpoint_wal``). SQLite's own automatic checkpoint waits for
1,000 pages and never shrinks the file, which kept 1-4 MB of WAL on disk, several
times the database itself during the first hours. The checkpoint runs here, never on
the collection loop, and a failed one is logged and left to the next.

A write that has not finished ``stall_after`` seconds after it started is counted as
``store_write_errors_total{reason="timeout"}`` (once per ``stall_after`` it goes on
hanging) and makes the store ``degraded`` in ``/healthz`` and ``status()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from gpuwarden.errors import StoreError, one_line
from gpuwarden.native_memory import release_freed_memory
from gpuwarden.ratelog import RateLimitedLog
from gpuwarden.storage.db_errors import DB_ERRORS, db_error_text
from gpuwarden.storage.engine import checkpoint_wal
from gpuwarden.storage.store import Store

log = logging.getLogger(__name__)

#: How often the writer runs when nobody wakes it (jobs with their own backlog).
IDLE_PERIOD_S = 1.0
#: Added to IDLE_PERIOD_S after a pass a cycle woke: at a 1 s interval the next cycle's
#: wake-up is due about then, and a timer firing just before it would run a pass of its
#: own (1.2 passes a cycle, measured) for nothing.
KICKED_GRACE_S = 0.5
#: Longest time between two WAL checkpoints of a SQLite store (see module doc): the
#: ``-wal`` file holds at most about this long's cycles. Each checkpoint rewrites the
#: few pages every cycle touches (the head log's last leaf, its parent, the header),
#: so a shorter period costs bytes written for a smaller file.
CHECKPOINT_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class WriterStatus:
    """What ``/healthz`` and the self-metrics say about the store."""

    degraded: bool
    pending_samples: int
    stalled_seconds: float  # how long the current write has been waiting; 0 when none
    last_error: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "store": "degraded" if self.degraded else "ok",
            "store_pending_samples": self.pending_samples,
            "store_stalled_seconds": round(self.stalled_seconds, 3),
            "store_last_error": self.last_error,
        }


class StoreWriter:
    """Runs ``Store.persist`` and the registered jobs on a daemon thread (module doc)."""

    def __init__(self, store: Store, *, stall_after: float = 2.0) -> None:
        self.store = store
        self.stall_after = stall_after
        self._jobs: list[tuple[str, Callable[[], object]]] = []
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._busy_since: float | None = None  # monotonic start of the running pass
        self._stall_counted = 0  # stall_after periods of the running pass counted
        self._failing: str | None = None  # last persist error, None once one succeeded
        self._checkpointed = time.monotonic()  # when the WAL was last checkpointed
        self.checkpoints_total = 0
        self._log = RateLimitedLog(log)

    def add_job(self, name: str, job: Callable[[], object]) -> None:
        """Run ``job`` after each write of the samples; it must keep what it could not
        write and try again next time (it is called again at least every
        IDLE_PERIOD_S + KICKED_GRACE_S seconds)."""
        self._jobs.append((name, job))

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpuwarden-store-writer",
                                            daemon=True)
            self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def kick(self) -> None:
        """A cycle was appended: write it now."""
        self._wake.set()

    def stop(self, timeout: float) -> bool:
        """Write what is pending (and cut the head into chunks) within ``timeout``.

        Returns False when the database did not answer in time: the writer thread is
        left behind (a daemon thread) and what was not written is reported.
        """
        if self._thread is None:
            return True
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.error("the store did not answer within %gs of stopping: %d samples not "
                      "written (cycles already in the head log are safe)", timeout,
                      self.store.pending_samples)
            return False
        return True

    def check(self) -> None:
        """Count a write that hangs; called by the collection loop every cycle."""
        since = self._busy_since
        if since is None:
            return
        periods = int((time.monotonic() - since) // self.stall_after)
        if periods > self._stall_counted:
            for _ in range(periods - self._stall_counted):
                self.store.count_write_error("timeout")
            self._stall_counted = periods
            self._log.warning("stall", "store has not answered for %.0fs; %d samples kept in "
                              "memory, written in order when it answers",
                              time.monotonic() - since, self.store.pending_samples)

    def status(self) -> WriterStatus:
        since = self._busy_since
        stalled = 0.0 if since is None else time.monotonic() - since
        hanging = stalled > self.stall_after
        return WriterStatus(degraded=hanging or self._failing is not None,
                            pending_samples=self.store.pending_samples,
                            stalled_seconds=stalled if hanging else 0.0,
                            last_error="not answering" if hanging else self._failing)

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        kicked = False
        while not self._stopping.is_set():
            kicked = self._wake.wait(IDLE_PERIOD_S + (KICKED_GRACE_S if kicked else 0.0))
            self._wake.clear()
            if self._stopping.is_set():
                break
            self._pass()
        self._pass(final=True)

    def _pass(self, *, final: bool = False) -> None:
        self._busy_since = time.monotonic()
        self._stall_counted = 0
        try:
            cut = self._persist(final)
            for name, job in self._jobs:
                try:
                    job()
                except Exception as exc:  # convention 9: log, count, carry on
                    self._log.warning(f"job:{name}", "store writer: %s failed: %s", name,
                                      one_line(exc, 200))
            if not final and (cut or time.monotonic() - self._checkpointed >= CHECKPOINT_EVERY_S):
                self._checkpoint()
        finally:
            self._busy_since = None
            if self._stall_counted:
                self._log.recovered("stall", "store answers again")

    def _checkpoint(self) -> None:
        """Checkpoint a SQLite store's WAL (module doc); a failure waits for the next."""
        self._checkpointed = time.monotonic()
        try:
            if checkpoint_wal(self.store.engine) is not None:
                self.checkpoints_total += 1
        except DB_ERRORS as exc:
            self._log.warning("checkpoint", "WAL checkpoint failed (retried later): %s",
                              db_error_text(exc))
        else:
            self._log.recovered("checkpoint", "WAL checkpoint works again")

    def _persist(self, final: bool) -> bool:
        """Write the backlog (and cut); whether a chunk cut happened."""
        chunks = self.store.chunks_written_total
        try:
            if final:
                self.store.flush()
            else:
                self.store.persist()
            if self.store.chunks_written_total != chunks:
                # A cut freed the uncut cycles it compressed (at 100 ms, 2,400 cycles):
                # hand the pages back rather than let this thread's arena keep them.
                release_freed_memory()
        except StoreError as exc:
            self._failing = one_line(exc, 200)
            self._log.warning("persist", "store write failed (%d samples pending, kept in "
                              "memory and retried): %s", self.store.pending_samples, exc)
        except Exception as exc:  # a bug must not kill the writer: the loop relies on it
            self._failing = one_line(exc, 200)
            self.store.count_write_error("error")
            log.exception("store writer failed unexpectedly")
        else:
            if self._failing is not None:
                self._failing = None
                self._log.recovered("persist", "store writable again; buffered samples "
                                    "written")
        return self.store.chunks_written_total != chunks
