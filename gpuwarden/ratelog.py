"""A log line per failure *kind* per minute, not per cycle.

A daemon that logs every failed cycle of a one-hour database outage writes 3,600 lines
at a 1 s interval and buries the one that matters; the first line of a burst is logged,
the rest are counted and the count is reported with the next line of that kind.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

DEFAULT_PERIOD_S = 60.0


class RateLimitedLog:
    """Logs a repeated failure once per ``period`` per key; thread-safe."""

    def __init__(self, logger: logging.Logger, period: float = DEFAULT_PERIOD_S) -> None:
        self.logger = logger
        self.period = period
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = defaultdict(int)

    def warning(self, key: str, message: str, *args: Any) -> None:
        self.log(logging.WARNING, key, message, *args)

    def error(self, key: str, message: str, *args: Any) -> None:
        self.log(logging.ERROR, key, message, *args)

    def log(self, level: int, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.period:
                self._suppressed[key] += 1
                return
            skipped = self._suppressed.pop(key, 0)
            self._last[key] = now
        suffix = f" ({skipped} more like this suppressed)" if skipped else ""
        self.logger.log(level, message + suffix, *args)

    def recovered(self, key: str, message: str, *args: Any) -> None:
        """Log ``message`` once if ``key`` had failed; the next failure logs at once."""
        with self._lock:
            failed = self._last.pop(key, None) is not None
            self._suppressed.pop(key, None)
        if failed:
            self.logger.info(message, *args)
