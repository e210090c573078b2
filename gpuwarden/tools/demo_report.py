"""What ``gpuwarden demo`` prints: where it listens, the incident's timeline, and every
alert as it goes pending, firing and resolved, with its value in units.

A newcomer runs the demo to see what gpuwarden notices and when; the daemon's own
output (``/metrics``, ``/api/v1/alerts``) answers that only for someone who knows where
to look. So the demo says where it listens, tells the story it is about to play (from
the incident script itself: ``Incident.timeline``), and narrates: each step of the
incident as it starts, each alert's transitions with the seconds since the start and
its value in words and units (``alerts/values.py``).

Two sources, because the daemon has two: FIRING and RESOLVED come from the alert
events of every cycle (``Daemon.on_alert_events``, called on the cycle's thread, so
exact), PENDING (and a pending alert whose condition cleared before its ``for``) from
the published alert list (``Daemon.alerts_json``), read once a second by the demo's
loop. A rule without ``for`` fires in the evaluation that first sees it: it shows as
FIRING only.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, TextIO

from gpuwarden.alerts.values import describe_value
from gpuwarden.durations import format_duration

if TYPE_CHECKING:
    from gpuwarden.alerts.alert import AlertEvent
    from gpuwarden.detectors.rule import RuleConfig

#: What the daemon serves, and what each is for (README, "HTTP endpoints").
ENDPOINTS = (
    ("/metrics", "every signal and alert, what Prometheus scrapes"),
    ("/api/v1/alerts", "pending and firing alerts (JSON); `gpuwarden alerts --url` reads it"),
    ("/healthz", "the daemon's health"),
)
_STATE_WIDTH = 8  # RESOLVED


def base_url(host: str, port: int) -> str:
    """The URL to open for a listen address (a wildcard address: this machine)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _where(labels: Mapping[str, str]) -> str:
    """The part of the node an alert is about, as an operator names it."""
    if labels.get("server"):
        return labels["server"]
    if labels.get("gpu"):
        return f"gpu {labels['gpu']}"
    return labels.get("node", "")


def _epoch(rfc3339: object) -> float | None:
    if not isinstance(rfc3339, str):
        return None
    try:
        return datetime.fromisoformat(rfc3339).timestamp()
    except ValueError:
        return None


class DemoReport:
    """Prints the demo's story to ``out``; thread-safe (events arrive on the cycle's
    thread, the pending list from the demo's loop)."""

    def __init__(self, out: TextIO, rules: Sequence[RuleConfig], started: float) -> None:
        self.out = out
        self.rules = {rule.name: rule for rule in rules}
        self.started = started  # wall clock (the daemon's), t+0
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}  # fingerprint -> alert name, while pending
        self._firing: dict[str, tuple[str, str]] = {}  # fingerprint -> (name, where)
        self._fired: list[tuple[str, str]] = []  # (name, where), in firing order

    # --- before the story -----------------------------------------------------------

    def banner(self, url: str, store: str, *, duration: float, servers: Sequence[str],
               gpus: int, default_port: bool) -> None:
        port_note = ("the daemon's default port: stop a running gpuwarden first, or pass "
                     "--listen" if default_port else "from --listen")
        run = f"for {format_duration(duration)}" if duration > 0 else "until Ctrl-C"
        lines = [
            f"gpuwarden demo: {gpus} simulated GPUs and {len(servers)} simulated vLLM "
            f"servers ({', '.join(servers)}) on loopback, watched by a gpuwarden daemon "
            f"running here {run}",
            f"listening on {url.removeprefix('http://')} ({port_note}); open:",
            *(f"  {url}{path:<16} {what}" for path, what in ENDPOINTS),
            f"store: {store}",
        ]
        self._print(*lines)

    def timeline(self, steps: Sequence[tuple[float, str]], duration: float) -> None:
        end = max((at for at, _ in steps), default=0.0)
        lines = ["", f"the incident (seconds from the start; its last step at t+{end:.0f} s, "
                 "Ctrl-C ends the demo):"]
        for at, text in steps:
            late = "  [after this run ends]" if 0 < duration <= at else ""
            lines.append(f"  t+{at:3.0f} s  {text}{late}")
        lines += ["", "as it happens (PENDING: condition true, waiting out the rule's `for`; "
                  "FIRING: the rule's actions are told; RESOLVED):"]
        self._print(*lines)

    # --- during it --------------------------------------------------------------------

    def step(self, at: float, text: str) -> None:
        self._line(at, "INCIDENT", text)

    def on_events(self, events: list[AlertEvent]) -> None:
        """``Daemon.on_alert_events`` callback: FIRING and RESOLVED, as they happen."""
        from gpuwarden.alerts.alert import EventKind

        for event in events:
            alert = event.alert
            rule = self.rules.get(alert.name)
            where = _where(alert.label_map)
            t = event.at - self.started
            with self._lock:
                self._pending.pop(alert.fingerprint, None)
                if event.kind is EventKind.FIRING:
                    self._firing[alert.fingerprint] = (alert.name, where)
                    self._fired.append((alert.name, where))
                else:
                    self._firing.pop(alert.fingerprint, None)
            if event.kind is EventKind.FIRING:
                value = describe_value(rule, alert.value) if rule else f"value {alert.value:g}"
                self._line(t, "FIRING", f"{alert.name:<22} {where:<10} {value}")
            else:
                since = alert.fired_at if alert.fired_at is not None else alert.active_at
                last = (describe_value(rule, alert.value, compare=False) if rule
                        else f"value {alert.value:g}")
                self._line(t, "RESOLVED", f"{alert.name:<22} {where:<10} after "
                           f"{format_duration(event.at - since)} firing (last: {last})")

    def poll(self, alerts: Sequence[Mapping[str, object]], now: float) -> None:
        """The published pending/firing list: print alerts new in PENDING, and pending
        ones whose condition cleared before they fired."""
        seen: set[str] = set()
        for alert in alerts:
            fp, name, value = alert.get("fingerprint"), alert.get("name"), alert.get("value")
            labels = alert.get("labels")
            if not (isinstance(fp, str) and isinstance(name, str)
                    and isinstance(value, float | int) and isinstance(labels, dict)):
                continue
            seen.add(fp)
            if alert.get("state") != "pending":
                continue
            with self._lock:
                if fp in self._pending or fp in self._firing:
                    continue
                self._pending[fp] = name
            rule = self.rules.get(name)
            since = _epoch(alert.get("active_at"))
            t = (since if since is not None else now) - self.started
            text = describe_value(rule, float(value)) if rule else f"value {value:g}"
            hold = f", fires after {format_duration(rule.for_)} of it" if rule else ""
            self._line(t, "PENDING", f"{name:<22} {_where(labels):<10} {text}{hold}")
        with self._lock:
            cleared = [(fp, name) for fp, name in self._pending.items() if fp not in seen]
            for fp, _ in cleared:
                del self._pending[fp]
        for _, name in cleared:
            self._line(now - self.started, "CLEARED", f"{name:<22} condition gone before "
                       "its `for` ran out: never fired")

    # --- after it ---------------------------------------------------------------------

    def summary(self, elapsed: float) -> None:
        with self._lock:
            fired, firing = list(self._fired), list(self._firing.values())
        if fired:
            names = ", ".join(f"{name} ({where})" for name, where in fired)
            text = f"{len(fired)} alert(s) fired: {names}"
        else:
            text = "no alert fired (run longer: the first fires about 20 s in)"
        still = ("; still firing at the end: "
                 + ", ".join(f"{name} ({where})" for name, where in firing)) if firing else ""
        self._print("", f"demo over at t+{elapsed:.0f} s: {text}{still}")

    # --- output -----------------------------------------------------------------------

    def _line(self, t: float, state: str, text: str) -> None:
        self._print(f"t+{max(t, 0.0):3.0f} s  {state:<{_STATE_WIDTH}}  {text}")

    def _print(self, *lines: str) -> None:
        with self._lock:
            for line in lines:
                print(line, file=self.out)
            self.out.flush()
