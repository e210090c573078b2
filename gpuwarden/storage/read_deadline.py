"""Database reads that wait at most a deadline.

Only a database that stopped answering (frozen processes: see ``engine.py``) makes this
matter: its connections stay open and acknowledged, so no driver timeout fires and a
read would block its caller (rules, derived signals on the collection loop) until the
database thaws. A read past its deadline is left to finish on its thread; until it has,
further reads fail at once instead of piling up threads and connections, so the caller
carries on from the store's in-memory head.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

from gpuwarden.errors import StoreUnavailable

T = TypeVar("T")
#: Threads for reads with a deadline; one more than a stuck read needs.
READ_THREADS = 2


class ReadDeadline:
    """Runs reads on a small thread pool, waiting ``timeout`` seconds (None: in the caller)."""

    def __init__(self, timeout: float | None) -> None:
        self.timeout = timeout
        self.timeouts_total = 0  # reads that did not answer within the deadline
        self._reader: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._stuck = 0  # reads past their deadline that have not returned yet

    def run(self, read: Callable[[], T]) -> T:
        """``read()``'s result; :class:`StoreUnavailable` past the deadline, or at once
        while an earlier read is still stuck."""
        timeout = self.timeout
        if timeout is None:
            return read()
        with self._lock:
            if self._stuck:
                raise StoreUnavailable("store not answering: an earlier read is still waiting")
            if self._reader is None:
                self._reader = ThreadPoolExecutor(READ_THREADS,
                                                  thread_name_prefix="gpuwarden-store-read")
            future = self._reader.submit(read)
        try:
            return future.result(timeout=timeout)
        except FutureTimeout:
            with self._lock:
                self._stuck += 1
                self.timeouts_total += 1
            future.add_done_callback(self._returned)
            raise StoreUnavailable(f"store did not answer a read within {timeout:g}s") from None

    def _returned(self, _future: Future[Any]) -> None:
        with self._lock:
            self._stuck -= 1

    def close(self) -> None:
        """Stop the threads without waiting for a stuck read."""
        if self._reader is not None:
            self._reader.shutdown(wait=False, cancel_futures=True)
