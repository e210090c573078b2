"""Which model each inference server serves, and which it served before.

Why: a checkpoint-rollback hook needs to know what to roll back *to*. An alert such as
QualityDrift fires minutes after a deploy; by then the only trace of the previous
checkpoint is what the server reported before. So every cycle the daemon hands its
samples to :meth:`ServedModels.observe`, which reads the ``model`` label of the
per-server gauges (KV cache, running/waiting requests), and the dispatcher adds
``current_model`` / ``previous_model`` annotations to alerts carrying a ``server``
label (and exec hooks get them as ``GPUWARDEN_ALERT_CURRENT_MODEL`` / ``_PREVIOUS_MODEL``).

A server serving several models at once (LoRA adapters, multi-model llama.cpp) is
tracked as the sorted, comma-joined set: a change of that set is a change of model.

Persistence (table ``model_history``): one row per change, so the history survives
restarts; ``last_seen`` of the current row is refreshed at most every
``touch_every`` seconds. :meth:`observe` only updates memory and notes what to write;
:meth:`flush` writes it, on the store's writer thread in the daemon (right away when
``defer_writes`` is off), so a database that hangs never holds up collection. Database
errors are logged once a minute and the write is retried on the next flush: knowing the
model is a nicety, collection must not suffer for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from gpuwarden.model import Sample
from gpuwarden.storage import schema
from gpuwarden.storage.engine import write_transaction as write_tx

log = logging.getLogger(__name__)

#: Per-server signals whose ``model`` label names the served model (GPU signals also
#: have a ``model`` label, the GPU product name, and are not looked at).
MODEL_SIGNALS = frozenset({"kv_cache_usage_ratio", "requests_running", "requests_waiting"})


@dataclass(slots=True)
class _Current:
    model: str
    first_seen: float
    last_seen: float
    row_id: int | None  # None until persisted
    touched: float  # last_seen as written to the database
    previous: str | None


class ServedModels:
    """Which model each server of one node serves, and the one it served before."""

    def __init__(self, engine: Engine | None, *, node: str, touch_every: float = 60.0) -> None:
        self.engine = engine
        self.node = node
        self.touch_every = touch_every
        self._lock = threading.Lock()
        self._servers: dict[str, _Current] = {}
        self._last_error_log = 0.0
        self._dirty: set[str] = set()  # servers whose row must be written
        self.defer_writes = False  # True: the caller runs flush() (on another thread)
        if engine is not None:
            self._load()

    def _load(self) -> None:
        assert self.engine is not None
        mh = schema.model_history
        q = (select(mh).where(mh.c.node == self.node)
             .order_by(mh.c.server, mh.c.first_seen, mh.c.id))
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(q).all()
        except SQLAlchemyError as exc:
            self._log_error("load", exc)
            return
        for r in rows:
            cur = self._servers.get(r.server)
            previous = cur.model if cur is not None and cur.model != r.model else (
                cur.previous if cur is not None else None)
            self._servers[r.server] = _Current(r.model, float(r.first_seen), float(r.last_seen),
                                               int(r.id), float(r.last_seen), previous)

    def observe(self, samples: Iterable[Sample], now: float | None = None) -> None:
        """Note the models seen in one cycle's samples; persist changes."""
        now = time.time() if now is None else now
        seen: dict[str, set[str]] = {}
        for s in samples:
            if s.signal not in MODEL_SIGNALS:
                continue
            server = model = ""
            for k, v in s.labels:
                if k == "server":
                    server = v
                elif k == "model":
                    model = v
            if server and model:
                seen.setdefault(server, set()).add(model)
        for server, models in seen.items():
            self._update(server, ",".join(sorted(models)), now)
        if not self.defer_writes:
            self.flush()

    def _update(self, server: str, model: str, now: float) -> None:
        with self._lock:
            cur = self._servers.get(server)
            if cur is not None and cur.model == model:
                cur.last_seen = now
                if cur.row_id is not None and now - cur.touched < self.touch_every:
                    return
            else:
                previous = cur.model if cur is not None else None
                if cur is not None:
                    log.info("server %s now serves %s (was %s)", server, model, cur.model)
                self._servers[server] = _Current(model, now, now, None, now, previous)
            self._dirty.add(server)

    def flush(self) -> None:
        """Write the rows :meth:`observe` noted; keep them for the next flush on error."""
        with self._lock:
            todo = [(server, self._servers[server]) for server in sorted(self._dirty)
                    if server in self._servers]
            self._dirty.clear()
        if self.engine is None:
            return
        mh = schema.model_history
        for i, (server, cur) in enumerate(todo):
            with self._lock:
                row_id, last_seen = cur.row_id, cur.last_seen
            try:
                with write_tx(self.engine) as conn:
                    if row_id is None:
                        res = conn.execute(insert(mh).values(
                            node=self.node, server=server, model=cur.model,
                            first_seen=cur.first_seen, last_seen=last_seen))
                        pk = res.inserted_primary_key
                        row_id = int(pk[0]) if pk is not None else None
                    else:
                        conn.execute(update(mh).where(mh.c.id == row_id)
                                     .values(last_seen=last_seen))
            except SQLAlchemyError as exc:
                self._log_error("write", exc)
                with self._lock:
                    self._dirty.update(s for s, _ in todo[i:])
                return
            with self._lock:
                if self._servers.get(server) is cur:
                    cur.row_id = row_id
                    cur.touched = last_seen

    def current_model(self, server: str) -> str | None:
        with self._lock:
            cur = self._servers.get(server)
            return cur.model if cur is not None else None

    def previous_model(self, server: str) -> str | None:
        with self._lock:
            cur = self._servers.get(server)
            return cur.previous if cur is not None else None

    def annotations(self, server: str) -> dict[str, str]:
        """``current_model`` / ``previous_model`` for an alert on ``server`` (known ones)."""
        with self._lock:
            cur = self._servers.get(server)
            if cur is None:
                return {}
            out = {"current_model": cur.model}
            if cur.previous:
                out["previous_model"] = cur.previous
            return out

    def _log_error(self, what: str, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= 60:
            self._last_error_log = now
            log.warning("served models: %s failed: %s", what, type(exc).__name__)
