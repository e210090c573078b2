"""The exception hierarchy.

Every error gpuwarden raises on purpose derives from :class:`GpuwardenError`, so the
one catch-all wrapper around each scheduled job can tell "expected, counted failure"
(log one line, count it, carry on) from a programming error (log a traceback, count
it, carry on).
"""

from __future__ import annotations


class GpuwardenError(Exception):
    """Base of every error gpuwarden raises deliberately."""


class ConfigError(GpuwardenError):
    """A config file that cannot be used; carries one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(self.problems) if self.problems else "invalid config")


class StoreError(GpuwardenError):
    """The time-series store failed (locked, unreachable, disk full)."""


class StoreUnavailable(StoreError):
    """The store cannot be written right now; the caller should buffer and retry."""


class CollectorError(GpuwardenError):
    """A collector could not produce samples this cycle."""


class ScrapeError(CollectorError):
    """An HTTP scrape failed: refused, timed out, bad status, oversized or garbage."""


class ExpositionParseError(CollectorError):
    """A Prometheus text payload could not be parsed at all."""


class NvmlUnavailable(CollectorError):
    """No NVIDIA driver / NVML library on this node."""


class InstanceLocked(GpuwardenError):
    """Another gpuwarden holds the instance lock of this store and node.

    Not a :class:`StoreError`: the store is fine and the config is valid; the run fails
    because a daemon is already running on it (exit 1, like a taken port). ``pid`` is
    the running one's PID where it could be found.
    """

    def __init__(self, message: str, *, pid: int | None = None) -> None:
        self.pid = pid
        super().__init__(message)


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one bounded line for a log or a counter's detail: requests' and
    drivers' messages nest whole cause chains over several lines. The type's name when
    the exception says nothing."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."
