"""Each node's row in the shared store's ``nodes`` table: who writes, and when it last did.

A node refreshes its row from its writer thread after every pass that left nothing
pending (``NodeBeat.beat``): "last write" is when everything the node had collected
was in the database, which is what ``NodeSilent`` must watch (a daemon that collects
but cannot write is as silent to the fleet as a dead one). A clean stop sets
``stopped_at``, so a node taken down on purpose is not reported silent; the next start
clears it. One upsert per pass and node: at 1,000 nodes every second that is 1,000
single-row updates a second, which PostgreSQL keeps on the same page (HOT updates:
no indexed column changes).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, select, update

from gpuwarden.storage import schema
from gpuwarden.storage.engine import dialect_insert

_UPDATED = ("version", "interval_s", "last_write_at", "stopped_at", "gpus", "servers")


@dataclass(frozen=True, slots=True)
class NodeRow:
    node: str
    version: str
    interval_s: float
    started_at: float
    last_write_at: float
    stopped_at: float | None
    gpus: int
    servers: int

    @property
    def stopped(self) -> bool:
        """Stopped cleanly after its last write: the fleet expects no writes from it."""
        return self.stopped_at is not None and self.stopped_at >= self.last_write_at

    def silence_intervals(self, now: float) -> float:
        """How many of its intervals ago this node last wrote (0 when it just did)."""
        return max(0.0, now - self.last_write_at) / max(self.interval_s, 1e-3)


class NodeBeat:
    """Keeps this node's ``nodes`` row current; every method raises on a DB error."""

    def __init__(self, engine: Engine, node: str, version: str, interval: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.engine, self.node, self.version, self.interval = engine, node, version, interval
        self._clock = clock
        self._started_at = clock()
        self.gpus = 0
        self.servers = 0
        self._first = True

    def beat(self) -> None:
        """Upsert the row with ``last_write_at`` = now (and ``started_at`` on the first)."""
        now = self._clock()
        row = {"node": self.node, "version": self.version, "interval_s": self.interval,
               "started_at": self._started_at, "last_write_at": now, "stopped_at": None,
               "gpus": self.gpus, "servers": self.servers}
        t = schema.nodes
        ins = dialect_insert(self.engine.dialect.name, t)
        # started_at is kept from the first beat of this process only: a restart moves it.
        keep = _UPDATED + (("started_at",) if self._first else ())
        stmt = ins.on_conflict_do_update(index_elements=[t.c.node],
                                         set_={c: ins.excluded[c] for c in keep})
        with self.engine.begin() as conn:
            conn.execute(stmt, row)
        self._first = False

    def stopped(self) -> None:
        """Mark a clean stop: the fleet stops expecting writes from this node."""
        t = schema.nodes
        with self.engine.begin() as conn:
            conn.execute(update(t).where(t.c.node == self.node)
                         .values(stopped_at=self._clock()))


def read_nodes(conn: Connection) -> list[NodeRow]:
    """Every node that ever wrote to this store, by name."""
    t = schema.nodes
    return [NodeRow(r.node, r.version, float(r.interval_s), float(r.started_at),
                    float(r.last_write_at), None if r.stopped_at is None else float(r.stopped_at),
                    int(r.gpus), int(r.servers))
            for r in conn.execute(select(t).order_by(t.c.node))]
