"""The early first-cycle writer: the same database, rows and blob as the store's own."""

from __future__ import annotations

import math
import os
import sqlite3
import struct
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import make_url

from gpuwarden.errors import StoreError
from gpuwarden.model import Sample, labels_json, make_labels
from gpuwarden.storage import Store, codec, open_store, schema
from gpuwarden.storage import early as early_store

NODE = "node-a"
T0 = 1_700_000_000.0
I64 = st.integers(-(2**63), 2**63 - 1)


def cycle(ts: float, n_gpus: int = 3, offset: float = 0.0) -> list[Sample]:
    out = []
    for g in range(n_gpus):
        labels = make_labels(node=NODE, gpu=str(g), uuid=f"GPU-{g}", model="H100")
        out.append(Sample("gpu_up", labels, 1.0, ts))
        out.append(Sample("gpu_utilization_ratio", labels, 0.25 * g + offset, ts))
        out.append(Sample("gpu_temperature_celsius", labels, 40.0 + g, ts + 0.004))
    return out


def url_of(path: Path) -> str:
    return f"sqlite:///{path}"


def head_log(path: Path) -> list[tuple[str, int, int, int, bytes]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT writer, t_min, t_max, count, data FROM head_log ORDER BY id"
        ).fetchall()


def master(path: Path) -> list[tuple[str, str, str, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"
        ).fetchall()


def everything(store: Store) -> dict[tuple[str, tuple[tuple[str, str], ...]],
                                                  list[tuple[float, float]]]:
    out = {}
    for signal, _ in store.series():
        for s in store.query(signal):
            out[(signal, s.labels)] = list(zip(s.timestamps.tolist(), s.values.tolist(),
                                               strict=True))
    return out


def ddl_source() -> str:
    """What ``early_store.SQLITE_DDL`` should read (printed when the test below fails)."""
    lines = ["SQLITE_DDL: tuple[str, ...] = ("]
    for statement in schema.sqlite_ddl():
        parts = [p + "\n" for p in statement.split("\n")]
        parts[-1] = parts[-1][:-1]
        if len(parts) == 1 and len(statement) > 92:  # keep within the line length
            head, tail = statement.split(" ON ")
            parts = [head + " ", "ON " + tail]
        if len(parts) == 1:
            lines.append(f'    "{statement}",')
            continue
        lines.append("    (")
        lines += ["        " + repr(p).replace("'", '"') for p in parts]
        lines.append("    ),")
    return "\n".join([*lines, ")"])


# --- one source of truth -------------------------------------------------------------

def test_ddl_is_the_rendering_of_schema_py() -> None:
    assert schema.sqlite_ddl() == early_store.SQLITE_DDL, (
        "storage/schema.py changed: replace SQLITE_DDL in gpuwarden/storage/early.py with\n"
        + ddl_source()
    )
    assert early_store.SCHEMA_VERSION == schema.SCHEMA_VERSION
    assert early_store.IN_BATCH == schema.IN_BATCH
    assert early_store.CYCLE_VERSION == codec.CYCLE_VERSION


def test_schema_is_the_one_the_store_creates(tmp_path: Path) -> None:
    early, by_store = tmp_path / "early.db", tmp_path / "store.db"
    assert early_store.store_first_cycle(url_of(early), NODE, cycle(T0)) == 9
    open_store(url_of(by_store), node=NODE).close()
    assert master(early) == master(by_store)
    with sqlite3.connect(early) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@given(
    st.lists(st.tuples(I64, I64, st.integers(0, 2**64 - 1)), max_size=40),
    st.sampled_from([1, 6]),
)
@settings(max_examples=300, deadline=None)
def test_encoder_is_byte_identical_to_codec(rows: list[tuple[int, int, int]], level: int) -> None:
    ids = [r[0] for r in rows]
    ts = [r[1] for r in rows]
    # Any float64 bit pattern: NaNs with payloads, -0.0, infinities, subnormals.
    values = [struct.unpack("<d", struct.pack("<Q", r[2]))[0] for r in rows]
    want = codec.encode_cycle(np.array(ids, np.int64), np.array(ts, np.int64),
                              np.array(values, np.float64), level)
    assert early_store.encode_cycle(ids, ts, values, level) == want


@given(st.lists(st.tuples(st.integers(1, 10**6), st.integers(0, 2**45)), max_size=30))
def test_blob_decodes_with_the_codec(rows: list[tuple[int, int]]) -> None:
    ids = [r[0] for r in rows]
    ts = [r[1] for r in rows]
    vals = [float(r[0]) / 7 for r in rows]
    got_ids, got_ts, got_vals = codec.decode_cycle(early_store.encode_cycle(ids, ts, vals))
    assert got_ids.tolist() == ids and got_ts.tolist() == ts and got_vals.tolist() == vals


@given(st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=6))
@settings(max_examples=40, deadline=None)
def test_series_identity_is_the_stores(labels: dict[str, str]) -> None:
    """Any label set, in any order: the early write and the store find one series row,
    spelled ``labels_json``, and the store reads the same labels back."""
    key = make_labels(labels)
    with tempfile.TemporaryDirectory() as tmp:
        url = url_of(Path(tmp) / "gw.db")
        early = Sample("gpu_up", tuple(reversed(key)), 1.0, T0)
        assert early_store.store_first_cycle(url, NODE, [early]) == 1
        with open_store(url, node=NODE) as store:
            store.write([Sample("gpu_up", key, 0.0, T0 + 1)])
            (got,) = store.query("gpu_up")
            assert got.labels == key and got.values.tolist() == [1.0, 0.0]
        with sqlite3.connect(Path(tmp) / "gw.db") as conn:
            rows = conn.execute("SELECT signal, labels FROM series").fetchall()
    assert rows == [("gpu_up", labels_json(key))]


@given(st.floats(min_value=-1e12, max_value=1e12, allow_nan=False))
def test_milliseconds_round_as_the_store(ts: float) -> None:
    want = np.rint(np.array([ts], np.float64) * 1000.0).astype(np.int64)[0]
    assert early_store._millis(ts) == want


@given(st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=30))
@example("a%20b.db")
@example("%2Ftmp/x%3F.db")
@example("./rel/x.db")
@example("/abs/x.db")
def test_file_path_is_the_one_sqlalchemy_opens(path: str) -> None:
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        url = prefix + path
        got = early_store.sqlite_file(url)
        if got is not None:
            assert got == os.path.abspath(str(make_url(url).database))


@pytest.mark.parametrize("url", [
    "sqlite://", "sqlite:///:memory:", "sqlite:///file:x.db?mode=memory&uri=true",
    "sqlite:///x.db?timeout=3", "sqlite+aiosqlite:///x.db",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
])
def test_other_urls_take_the_store_path(url: str) -> None:
    assert early_store.sqlite_file(url) is None
    assert early_store.store_first_cycle(url, NODE, cycle(T0)) is None


# --- the cycle, stored once ----------------------------------------------------------

def test_fresh_database_rows_are_the_stores(tmp_path: Path) -> None:
    """Series ids and the head-log row, byte for byte, as Store.write makes them."""
    early, by_store = tmp_path / "early.db", tmp_path / "store.db"
    samples = cycle(T0)
    assert early_store.store_first_cycle(url_of(early), NODE, samples) == len(samples)
    with open_store(url_of(by_store), node=NODE) as store:
        store.write(samples)
    with sqlite3.connect(early) as a, sqlite3.connect(by_store) as b:
        q = "SELECT id, signal, labels FROM series ORDER BY id"
        assert a.execute(q).fetchall() == b.execute(q).fetchall()
    assert head_log(early) == head_log(by_store)
    assert head_log(early)[0][:4] == (NODE, T0 * 1000, T0 * 1000 + 4, 9)


def test_replayed_once_then_stored_once(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    first, second = cycle(T0), cycle(T0 + 1, offset=0.01)
    assert early_store.store_first_cycle(url_of(path), NODE, first) == 9
    store = open_store(url_of(path), node=NODE, chunk_span=60)
    try:
        assert len(head_log(path)) == 1
        assert store.samples_written_total == 0  # replay counts nothing: the daemon does
        # In the head (answered without the database), once.
        assert [s.value for s in store.latest("gpu_up")] == [1.0, 1.0, 1.0]
        util = store.query("gpu_utilization_ratio", {"gpu": "1"})
        assert util[0].timestamps.tolist() == [T0] and util[0].values.tolist() == [0.25]
        store.write(second)
        assert len(head_log(path)) == 2
        store.flush()  # cut into chunks: each sample exactly once in the database
        assert head_log(path) == []
    finally:
        store.close()
    with open_store(url_of(path), node=NODE) as again:
        got = everything(again)
    want: dict[tuple[str, tuple[tuple[str, str], ...]], list[tuple[float, float]]] = {}
    for s in first + second:
        want.setdefault((s.signal, s.labels), []).append((round(s.ts * 1000) / 1000, s.value))
    assert got == want


def test_restart_on_older_data_reuses_series(tmp_path: Path) -> None:
    """A restart after SIGKILL (head-log rows left) and after a clean stop (chunks)."""
    path = tmp_path / "gw.db"
    with open_store(url_of(path), node=NODE) as store:  # clean stop: chunks
        store.write(cycle(T0 - 20))
        store.flush()
    killed = open_store(url_of(path), node=NODE)  # no flush, no close: rows stay
    killed.write(cycle(T0 - 10))
    killed.engine.dispose()
    with sqlite3.connect(path) as conn:
        series_before = conn.execute("SELECT count(*) FROM series").fetchone()[0]
    extra = Sample("gpu_power_watts", make_labels(node=NODE, gpu="0"), 300.0, T0)
    assert early_store.store_first_cycle(url_of(path), NODE, [extra, *cycle(T0)[::-1]]) == 10
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT count(*) FROM series").fetchone()[0] == series_before + 1
        assert conn.execute("SELECT count(*) FROM schema_version").fetchone()[0] == 1
    assert len(head_log(path)) == 2
    ids, _, _ = codec.decode_cycle(head_log(path)[-1][4])
    assert ids.tolist() == sorted(ids.tolist())  # series order, as the store writes it
    with open_store(url_of(path), node=NODE) as store:
        got = store.query("gpu_up", {"gpu": "2"})
        assert got[0].timestamps.tolist() == [T0 - 20, T0 - 10, T0]
        assert store.query("gpu_power_watts")[0].values.tolist() == [300.0]


def test_repeated_series_in_a_cycle_as_store_write(tmp_path: Path) -> None:
    labels = make_labels(node=NODE, gpu="0")
    samples = [Sample("gpu_up", labels, 1.0, T0), Sample("gpu_up", labels, 0.0, T0 + 0.5),
               Sample("gpu_power_watts", labels, 5.0, T0), Sample("gpu_up", labels, 1.0, T0 + 0.7)]
    early, by_store = tmp_path / "early.db", tmp_path / "store.db"
    assert early_store.store_first_cycle(url_of(early), NODE, samples) == 4
    with open_store(url_of(by_store), node=NODE) as store:
        store.write(samples)
        want = everything(store)
    with open_store(url_of(early), node=NODE) as store:
        assert everything(store) == want


# --- stepping aside ------------------------------------------------------------------

def test_locked_database_steps_aside_then_store_writes(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    open_store(url_of(path), node=NODE).close()
    locker = sqlite3.connect(path, isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        assert early_store.store_first_cycle(url_of(path), NODE, cycle(T0),
                                             busy_timeout_ms=100) is None
        assert time.monotonic() - started < 2.0
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    assert head_log(path) == []
    with open_store(url_of(path), node=NODE) as store:
        assert store.write(cycle(T0)) == 9
        assert len(head_log(path)) == 1


def test_lock_released_within_busy_timeout_is_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    open_store(url_of(path), node=NODE).close()
    locker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")
    release = threading.Timer(0.1, lambda: locker.execute("ROLLBACK"))
    release.start()
    try:
        assert early_store.store_first_cycle(url_of(path), NODE, cycle(T0),
                                             busy_timeout_ms=2000) == 9
    finally:
        release.join()
        locker.close()


def test_newer_schema_is_left_to_the_store(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO schema_version VALUES (99)")
    before = master(path)
    assert early_store.store_first_cycle(url_of(path), NODE, cycle(T0)) is None
    assert master(path) == before  # nothing created in someone else's database
    with pytest.raises(StoreError, match="schema version 99 is newer"):
        open_store(url_of(path), node=NODE)


def test_missing_directory_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "gw.db"
    assert early_store.store_first_cycle(url_of(path), NODE, cycle(T0)) is None
    assert not path.parent.exists()


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_bad_timestamp_steps_aside(tmp_path: Path, bad: float) -> None:
    path = tmp_path / "gw.db"
    samples = [*cycle(T0), Sample("gpu_up", make_labels(gpu="9"), 1.0, bad)]
    assert early_store.store_first_cycle(url_of(path), NODE, samples) is None
    assert not path.exists()


def test_no_samples_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "gw.db"
    assert early_store.store_first_cycle(url_of(path), NODE, []) is None
    assert not path.exists()


def test_imports_neither_sqlalchemy_nor_numpy() -> None:
    import subprocess
    import sys

    code = ("import sys, gpuwarden.storage.early, gpuwarden.model; "
            "print(sorted(m for m in ('sqlalchemy', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
