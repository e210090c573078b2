"""Series identity: (signal, labels) <-> the head's local ids <-> the database's ids.

Why two ids: the head indexes its numpy arrays by a dense local id, given the moment a
series is first appended, without a database round trip (the database may be locked or
away); the ``series`` table gives the same (signal, canonical label JSON) one id shared
by every node writing to the database, assigned when the first cycle holding the
series is persisted (get-or-create: other nodes may insert it concurrently). The label
JSON is :func:`gpuwarden.model.labels_json`, the spelling the early first-cycle write
(``storage/early.py``) uses too, so both find the same row.

The registry is not locked on its own: the store changes it under the lock that guards
its head, so that a query sees the series and their samples consistently.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Mapping, Sequence
from sys import intern

import numpy as np
from sqlalchemy import Connection, select

from gpuwarden.model import Labels, labels_json, labels_match
from gpuwarden.storage import schema
from gpuwarden.storage.codec import I64Array
from gpuwarden.storage.engine import dialect_insert

SeriesKey = tuple[str, Labels]


def labels_from_json(text: str, pairs: dict[tuple[str, str], tuple[str, str]] | None = None,
                     ) -> Labels:
    """The label set of a ``series.labels`` value (the inverse of ``labels_json``).

    The registry keeps every series' key for the process's life, and a key read back
    from the database (every series of the first cycle is: ``storage/early.py`` writes
    it before the store opens) would otherwise hold its own copy of ``node``,
    ``server``, its model and bucket bound, and its own (name, value) tuples. So names
    and values are interned, and the keys read in one batch share their pairs through
    ``pairs``: ~1,040 -> ~270 bytes a series in the registry (tests/storage).
    """
    items = ((intern(k), intern(v)) for k, v in json.loads(text).items())
    if pairs is None:
        return tuple(sorted(items))
    return tuple(sorted(pairs.setdefault(p, p) for p in items))


def unique_ids(ids: I64Array) -> I64Array:
    """Sorted distinct ids. Not ``np.unique``: numpy 2 imports ``numpy.ma`` for it (~1.3
    MiB held for the process's life) to check for a masked array we never pass."""
    a = np.sort(ids)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if a.size else a


class SeriesRegistry:
    """Every series this store has seen, by local id (see module doc for the locking)."""

    def __init__(self) -> None:
        self.keys: list[SeriesKey] = []  # by local id, labels sorted
        self.local: dict[SeriesKey, int] = {}  # also under the unsorted spellings seen
        self.by_signal: dict[str, list[int]] = {}
        self.db_ids = np.full(1024, -1, dtype=np.int64)  # by local id; -1: not persisted
        self.local_of_db: dict[int, int] = {}

    def register(self, key: SeriesKey) -> int:
        """The local id of a series key, given one if it is new."""
        lid = self.local.get(key)
        if lid is not None:
            return lid
        labels = tuple(sorted(key[1]))
        # A key already in order is its own canonical key: one tuple kept, not two.
        canon = key if labels == key[1] else (key[0], labels)
        lid = self.local.get(canon)
        if lid is None:
            lid = len(self.keys)
            self.keys.append(canon)
            self.local[canon] = lid
            # In label order, as a read of the database gives them: a read answers in
            # the same order whether its window is in memory or not.
            keys = self.keys
            bisect.insort(self.by_signal.setdefault(canon[0], []), lid,
                          key=lambda i: keys[i][1])
            if lid >= self.db_ids.size:  # replaced, not resized: readers may hold the old
                grown = np.full(self.db_ids.size * 2, -1, dtype=np.int64)
                grown[: self.db_ids.size] = self.db_ids
                self.db_ids = grown
        self.local[key] = lid
        return lid

    def register_stored(self, found: Mapping[int, SeriesKey]) -> None:
        """Series read from the database, by database id (a replay)."""
        for db_id, key in found.items():
            lid = self.register(key)  # may replace db_ids: index it after
            self.db_ids[lid] = db_id
            self.local_of_db[db_id] = lid

    def assign(self, db_ids: Mapping[int, int]) -> None:
        """Database ids just given to local ids (by ``create_series``)."""
        for lid, db_id in db_ids.items():
            self.db_ids[lid] = db_id
            self.local_of_db[db_id] = lid

    def matching(self, signal: str, matchers: Mapping[str, str] | None) -> list[int]:
        """Local ids of the series of ``signal`` whose labels match, in label order."""
        keys = self.keys
        return [lid for lid in self.by_signal.get(signal, ())
                if labels_match(keys[lid][1], matchers)]

    def unassigned(self, ids: Sequence[I64Array]) -> list[int]:
        """The distinct local ids among ``ids`` that have no database id yet."""
        db_ids = self.db_ids
        if not any((db_ids[part] < 0).any() for part in ids):
            return []
        lids = unique_ids(np.concatenate(ids))
        return [int(lid) for lid in lids[db_ids[lids] < 0]]


def create_series(conn: Connection, keys: Mapping[int, SeriesKey]) -> dict[int, int]:
    """Get-or-create the ``series`` rows of ``keys`` (by local id); their database ids."""
    s = schema.series
    spelled = {lid: (signal, labels_json(labels)) for lid, (signal, labels) in keys.items()}
    ins = dialect_insert(conn.dialect.name, s)
    rows = [{"signal": signal, "labels": labels} for signal, labels in spelled.values()]
    conn.execute(ins.on_conflict_do_nothing(index_elements=["signal", "labels"]), rows)
    found: dict[tuple[str, str], int] = {}
    signals = sorted({signal for signal, _ in spelled.values()})
    n = schema.IN_BATCH
    for k in range(0, len(signals), n):
        q = select(s.c.id, s.c.signal, s.c.labels).where(s.c.signal.in_(signals[k : k + n]))
        found.update({(r.signal, r.labels): int(r.id) for r in conn.execute(q)})
    return {lid: found[key] for lid, key in spelled.items()}


def load_series(conn: Connection, db_ids: Sequence[int]) -> dict[int, SeriesKey]:
    """The keys of the ``series`` rows with these database ids (missing ones left out)."""
    s = schema.series
    found: dict[int, SeriesKey] = {}
    pairs: dict[tuple[str, str], tuple[str, str]] = {}
    n = schema.IN_BATCH
    for k in range(0, len(db_ids), n):
        q = select(s.c.id, s.c.signal, s.c.labels).where(s.c.id.in_(db_ids[k : k + n]))
        for r in conn.execute(q):
            found[int(r.id)] = (intern(r.signal), labels_from_json(r.labels, pairs))
    return found


def stored_series(conn: Connection, signal: str | None) -> list[tuple[int, SeriesKey]]:
    """Every ``series`` row (of ``signal``, when given): database id and key."""
    s = schema.series
    q = select(s.c.id, s.c.signal, s.c.labels)
    if signal is not None:
        q = q.where(s.c.signal == signal)
    pairs: dict[tuple[str, str], tuple[str, str]] = {}
    return [(int(r.id), (intern(r.signal), labels_from_json(r.labels, pairs)))
            for r in conn.execute(q)]
