"""Alert instances and the events the engine hands to delivery.

An alert instance is one rule x one full label set. Its identity is the fingerprint of
that label set, computed exactly like Alertmanager's ``LabelSet.Fingerprint()`` (FNV-1a
64 over sorted name/value pairs separated by 0xff), so a receiver written for
Alertmanager sees the same ``fingerprint`` it would see from Prometheus.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from functools import lru_cache

from gpuwarden.model import Labels

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_MASK = (1 << 64) - 1


def fingerprint(labels: Labels | dict[str, str]) -> str:
    """Alertmanager-compatible fingerprint of a label set (16 hex digits)."""
    pairs = sorted(labels.items() if isinstance(labels, dict) else labels)
    h = _FNV_OFFSET
    for name, value in pairs:
        for part in (name, value):
            for byte in part.encode():
                h = ((h ^ byte) * _FNV_PRIME) & _MASK
            h = ((h ^ 0xFF) * _FNV_PRIME) & _MASK
    return f"{h:016x}"


class AlertState(StrEnum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(slots=True)
class Alert:
    """One alert instance. Labels include ``alertname`` and ``severity``."""

    name: str
    labels: Labels
    annotations: dict[str, str]
    state: AlertState
    value: float
    active_at: float
    fired_at: float | None = None
    resolved_at: float | None = None
    keep_firing_since: float | None = None
    actions: tuple[str, ...] = ()
    fingerprint: str = field(default="")

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.labels)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def to_api(self) -> dict[str, object]:
        """The ``/api/v1/alerts`` shape (README, HTTP endpoints)."""
        return {
            "name": self.name,
            "state": str(self.state),
            "labels": self.label_map,
            "annotations": dict(self.annotations),
            "value": self.value,
            "active_at": rfc3339(self.active_at),
            "fired_at": rfc3339(self.fired_at) if self.fired_at is not None else None,
            "fingerprint": self.fingerprint,
        }


class EventKind(StrEnum):
    FIRING = "firing"  # pending -> firing (once per activation)
    RESOLVED = "resolved"  # firing -> resolved (once)


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """A transition delivery acts on: who to tell is the rule's ``actions``."""

    kind: EventKind
    alert: Alert  # a snapshot; delivery must not mutate it
    at: float


#: What delivery did with an alert, as one audit row's ``result`` says it (the audit
#: trail, ``alerts/audit.py``, writes only these). Kept here, with the other light
#: alert types, for ``gpuwarden audit --result``: the command line's parser must not
#: load SQLAlchemy.
AUDIT_RESULTS = ("sent", "failed", "suppressed", "dry_run", "disabled", "dead_letter",
                 "escalated", "replayed", "no_action", "superseded")


@lru_cache(maxsize=1024)
def rfc3339(ts: float) -> str:
    """``ts`` as RFC 3339 UTC with milliseconds; cached: an alert's ``active_at`` and
    ``fired_at`` are written every time ``/api/v1/alerts`` is republished."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z"
    )
