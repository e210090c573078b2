"""``gpuwarden fleet status``: the fleet as its shared PostgreSQL store sees it.

What an operator checks first when a fleet alert fires or a node looks quiet: which
nodes write, which went silent or were stopped on purpose, what each runs (version,
GPUs, servers), what is firing on each node, which daemon leads (evaluates the fleet
rules) and what the fleet rules say. Everything is read from the database the nodes
share (``nodes``, ``alerts``, ``fleet_alerts`` and the leader's advisory lock,
``gpuwarden/fleet/``), never from a daemon's HTTP API: a dead node's API cannot answer,
which is when this command is needed.

A node's state, from its ``nodes`` row:

* ``stopped``: it was stopped cleanly after its last write (the fleet does not expect
  writes from it; ``NodeSilent`` leaves it alone);
* ``silent``: its last write is more than ``NodeSilent``'s threshold (3 by default) of
  its own intervals old: what ``NodeSilent`` fires on;
* ``writing``: otherwise.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, Table, inspect, select

from gpuwarden.alerts.alert import AlertState, rfc3339
from gpuwarden.detectors.fleet_rules import DEFAULT_FLEET_RULES
from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.errors import StoreError, one_line
from gpuwarden.fleet.leader import current_leader
from gpuwarden.fleet.nodes import NodeRow, read_nodes
from gpuwarden.storage import schema

#: The tables this command reads; a store without them has never had a daemon.
TABLES = (schema.nodes.name, schema.alerts.name, schema.fleet_alerts.name)
WRITING, SILENT, STOPPED = "writing", "silent", "stopped"
_SILENCE_RULE = "NodeSilent"


def silent_after(fleet_rules: Iterable[RuleConfig]) -> float:
    """Intervals without a write after which a node counts as silent: ``NodeSilent``'s
    threshold as the config sets it (so the command and the alert agree)."""
    for rule in (*fleet_rules, *DEFAULT_FLEET_RULES):
        if rule.name == _SILENCE_RULE and rule.threshold is not None:
            return float(rule.threshold)
    return 3.0


@dataclass(frozen=True, slots=True)
class AlertLine:
    """One alert instance as the status shows it (a node's or the fleet's)."""

    alertname: str
    state: str
    severity: str
    labels: dict[str, str]
    value: float | None
    active_at: float | None
    fired_at: float | None
    summary: str

    def to_json(self) -> dict[str, object]:
        return {"alertname": self.alertname, "state": self.state, "severity": self.severity,
                "labels": self.labels, "value": self.value,
                "active_at": _time(self.active_at), "fired_at": _time(self.fired_at),
                "summary": self.summary}


@dataclass(frozen=True, slots=True)
class NodeStatus:
    row: NodeRow
    state: str
    age_seconds: float
    age_intervals: float
    leader: bool
    firing: list[AlertLine] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        r = self.row
        return {"node": r.node, "state": self.state, "leader": self.leader,
                "version": r.version, "interval_seconds": r.interval_s,
                "last_write_at": _time(r.last_write_at),
                "last_write_age_seconds": round(self.age_seconds, 3),
                "last_write_age_intervals": round(self.age_intervals, 2),
                "started_at": _time(r.started_at), "stopped_at": _time(r.stopped_at),
                "gpus": r.gpus, "servers": r.servers,
                "firing_alerts": [a.to_json() for a in self.firing]}


@dataclass(frozen=True, slots=True)
class FleetStatus:
    store: str  # the URL, password hidden
    now: float
    leader: str | None
    silent_after_intervals: float
    nodes: list[NodeStatus]
    fleet_alerts: list[AlertLine]

    def to_json(self) -> dict[str, object]:
        """The ``--json`` document; its keys are listed in the README (keep them stable)."""
        return {"store": self.store, "now": _time(self.now), "leader": self.leader,
                "silent_after_intervals": self.silent_after_intervals,
                "nodes": [n.to_json() for n in self.nodes],
                "fleet_alerts": [a.to_json() for a in self.fleet_alerts]}


def _time(ts: float | None) -> str | None:
    return None if ts is None else rfc3339(ts)


def node_state(row: NodeRow, now: float, silent_after_intervals: float) -> str:
    if row.stopped:
        return STOPPED
    return SILENT if row.silence_intervals(now) > silent_after_intervals else WRITING


def read_fleet_status(engine: Engine, now: float, *,
                      silent_after_intervals: float = 3.0) -> FleetStatus:
    """Everything the command prints, read in one connection. Raises ``StoreError``
    (one line) when the database cannot be reached or has no fleet tables yet."""
    shown = engine.url.render_as_string(hide_password=True)
    try:
        with engine.connect() as conn:
            missing = [t for t in TABLES if not inspect(conn).has_table(t)]
            if missing:
                raise StoreError(f"{shown} has no {', '.join(missing)} table: no gpuwarden "
                                 "daemon has run on this store yet")
            rows = read_nodes(conn)
            leader = current_leader(conn)
            node_alerts = _alerts(conn, schema.alerts, (AlertState.FIRING,))
            fleet_alerts = _alerts(conn, schema.fleet_alerts,
                                   (AlertState.FIRING, AlertState.PENDING))
    except StoreError:
        raise
    except Exception as exc:  # the driver's errors: unreachable, refused, permissions
        raise StoreError(f"cannot read the fleet from {shown}: {one_line(exc)}") from exc
    nodes = []
    for row in rows:
        silence = row.silence_intervals(now)
        nodes.append(NodeStatus(
            row, node_state(row, now, silent_after_intervals), max(0.0, now - row.last_write_at),
            silence, row.node == leader,
            [a for a in node_alerts if a.labels.get("node") == row.node]))
    return FleetStatus(shown, now, leader, silent_after_intervals, nodes, fleet_alerts)


def _alerts(conn: Connection, table: Table, states: Sequence[AlertState]
            ) -> list[AlertLine]:
    out = []
    query = (select(table).where(table.c.state.in_([str(s) for s in states]))
             .order_by(table.c.rule, table.c.fingerprint))
    for r in conn.execute(query):
        labels = {str(k): str(v) for k, v in json.loads(r.labels).items()}
        annotations = json.loads(r.annotations)
        out.append(AlertLine(r.rule, r.state, labels.get("severity", ""), labels,
                             None if r.value is None else float(r.value), r.active_at,
                             r.fired_at, str(annotations.get("summary", ""))))
    return out


def format_text(status: FleetStatus) -> str:
    """The table an operator reads: one line per node, then the fleet alerts."""
    leader = status.leader or "none (no daemon holds the fleet lock: fleet rules are not evaluated)"
    lines = [f"fleet: {len(status.nodes)} node{'s' if len(status.nodes) != 1 else ''} in "
             f"{status.store}; leader: {leader}"]
    cols = ("NODE", "STATE", "LAST WRITE", "VERSION", "GPUS", "SERVERS", "FIRING")
    rows = [(n.row.node + (" *" if n.leader else ""), n.state,
             f"{_age(n.age_seconds)} ago ({n.age_intervals:.1f} intervals)",
             n.row.version, str(n.row.gpus), str(n.row.servers),
             ", ".join(a.alertname for a in n.firing) or "-") for n in status.nodes]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(cols)]
    lines.append("  ".join(c.ljust(w) for c, w in zip(cols, widths, strict=True)).rstrip())
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip()
              for r in rows]
    if status.leader is not None:
        lines.append("(* leads: evaluates the fleet rules)")
    lines.append(f"silent: no write for more than {status.silent_after_intervals:g} of its "
                 "intervals (NodeSilent)")
    if not status.fleet_alerts:
        lines.append("fleet alerts: none firing or pending")
        return "\n".join(lines)
    lines.append(f"fleet alerts ({len(status.fleet_alerts)}):")
    for a in status.fleet_alerts:
        since = a.fired_at if a.state == str(AlertState.FIRING) else a.active_at
        about = " ".join(f"{k}={v}" for k, v in sorted(a.labels.items())
                         if k in ("node", "model"))
        when = f" since {rfc3339(since)[:19].replace('T', ' ')}Z" if since else ""
        lines.append(f"  {a.state:<8} {a.alertname} {about}".rstrip()
                     + f" [{a.severity}]{when}" + (f": {a.summary}" if a.summary else ""))
    return "\n".join(lines)


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def dumps(status: FleetStatus) -> str:
    return json.dumps(status.to_json(), indent=2, sort_keys=False)
