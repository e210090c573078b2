"""What is really in a store's database, read the way the store lays it out.

Samples live in two places (see ``gpuwarden/storage/store.py``): ``head_log`` rows (one
packed cycle each, per writing node) and ``chunks`` (one series and time window each).
A sample acknowledged and then lost is missing from both; a sample written twice (a
replayed head log cut again, two writers) shows as a repeated timestamp across them.
So this reads both raw, with the codec, instead of through ``Store.query``, which
might hide a duplicate.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from gpuwarden.storage import codec


@dataclass
class Stored:
    """Timestamps (Unix ms) of every stored sample, per (signal, labels JSON)."""

    by_series: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def timestamps(self, signal: str, **labels: str) -> list[int]:
        """Sorted timestamps of the one series of ``signal`` whose labels include these."""
        found = [ts for (sig, lab), ts in self.by_series.items()
                 if sig == signal and labels.items() <= json.loads(lab).items()]
        assert len(found) <= 1, f"{len(found)} series match {signal} {labels}"
        return sorted(found[0]) if found else []

    def duplicates(self) -> dict[tuple[str, str], int]:
        """Series with a timestamp stored more than once, and how many extra copies."""
        out = {}
        for key, ts in self.by_series.items():
            extra = len(ts) - len(set(ts))
            if extra:
                out[key] = extra
        return out

    def count_since(self, t_ms: int) -> int:
        """Samples of every series with a timestamp at or after ``t_ms``."""
        return sum(sum(1 for t in ts if t >= t_ms) for ts in self.by_series.values())

    def series_labels(self, signal: str) -> list[dict[str, str]]:
        return [json.loads(lab) for sig, lab in self.by_series if sig == signal]


def read_stored(url: str) -> Stored:
    """Every sample in the database at ``url`` (all nodes), by series, in ONE snapshot.

    One read transaction: a chunk cut moves samples from head_log to chunks, and two
    separate reads around it would see them twice (or not at all).
    """
    path = sqlite_file(url)
    if path is not None:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        try:
            conn.execute("BEGIN")
            return _read(conn.execute)
        finally:
            conn.close()
    with psycopg.connect(conninfo(url), autocommit=True) as pg:
        pg.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            return _read(pg.execute)
        finally:
            pg.execute("ROLLBACK")


def row_counts(url: str) -> dict[str, int]:
    """Rows of the sample tables (head_log, chunks, series)."""
    tables = ("head_log", "chunks", "series")
    path = sqlite_file(url)
    if path is not None:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            return {t: int(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0])
                    for t in tables}
        finally:
            conn.close()
    with psycopg.connect(conninfo(url)) as pg:
        return {t: int(_one(pg.execute(f"SELECT count(*) FROM {t}").fetchone()))
                for t in tables}


def sqlite_file(url: str) -> str | None:
    return url[len("sqlite:///"):] if url.startswith("sqlite:///") else None


def conninfo(url: str) -> str:
    """libpq's spelling of a ``postgresql+psycopg://`` URL."""
    return "postgresql://" + url.split("://", 1)[1]


def _one(row: tuple[Any, ...] | None) -> Any:
    assert row is not None
    return row[0]


def _read(execute: Callable[[str], Any]) -> Stored:
    out = Stored()
    keys = {int(i): (str(sig), str(lab))
            for i, sig, lab in execute("SELECT id, signal, labels FROM series").fetchall()}
    for series_id, data in execute("SELECT series_id, data FROM chunks").fetchall():
        ts, _ = codec.decode_chunk(bytes(data))
        out.by_series.setdefault(keys[int(series_id)], []).extend(ts.tolist())
    for (data,) in execute("SELECT data FROM head_log").fetchall():
        ids, ts, _ = codec.decode_cycle(bytes(data))
        for i, t in zip(ids.tolist(), ts.tolist(), strict=True):
            out.by_series.setdefault(keys[i], []).append(t)
    for key in keys.values():
        out.by_series.setdefault(key, [])
    return out
