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


class CodecError(StoreError, ValueError):
    """A stored blob is truncated, of an unknown version, or otherwise not decodable."""


class NewerSchema(StoreError):
    """The database was created by a newer gpuwarden (its schema version is higher)."""


class CollectorError(GpuwardenError):
    """A collector could not produce samples this cycle."""


class ScrapeError(CollectorError):
    """An HTTP scrape failed: refused, timed out, bad status, oversized or garbage."""


class ScrapeFailure(ScrapeError):
    """A failed scrape with the ``reason`` it is counted under (``refused``, ``timeout``,
    ``http_status``, ``oversize``, ``parse``...) and a one-line ``detail``."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class GpuLost(CollectorError):
    """The GPU being read fell off the bus; its partial samples are abandoned."""


class GpuHidden(CollectorError):
    """NVML counts the GPU but will not hand out its handle (typically ``NoPermission``:
    the GPU is outside this container's device cgroup). Not lost: such a GPU is skipped,
    so that it never raises a false GPULost alert."""


class ExpositionParseError(CollectorError):
    """A Prometheus text payload could not be parsed at all."""


class NvmlUnavailable(CollectorError):
    """No NVIDIA driver / NVML library on this node."""


class AlertError(GpuwardenError):
    """Evaluating a rule or delivering an alert failed in a way the rule or action explains."""


class DuplicateLabelSetError(AlertError, ValueError):
    """Two findings of one rule map to the same alert (Prometheus' ErrDuplicateAlertLabelSet)."""


class SecretError(AlertError, ValueError):
    """A configured secret cannot be read; the message names the variable or file only."""


class ReceiverError(AlertError):
    """A receiver cannot build its request (missing secret, bad config); not retried."""


class BadRequest(GpuwardenError, ValueError):
    """An HTTP request body the API refuses (answered 400, naming the field)."""


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
