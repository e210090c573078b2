"""From a URL to an engine, and the write transaction every writer of the database uses."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from gpuwarden.errors import StoreError
from gpuwarden.storage import schema
from gpuwarden.storage.engine import dialect_insert, open_engine, write_transaction


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("mysql://root@localhost/db", "unsupported storage URL scheme"),
        ("not a url", "invalid storage URL"),
        ("postgresql+psycopg2://u@h/db", "not supported"),
    ],
)
def test_bad_url_is_a_store_error(url: str, message: str) -> None:
    with pytest.raises(StoreError, match=message):
        open_engine(url)


def test_missing_sqlite_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        open_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db")


def test_sqlite_write_transaction_takes_the_lock_at_begin(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE: a second writer waits busy_timeout at its BEGIN and then fails,
    rather than failing later without waiting when it first writes."""
    url = f"sqlite:///{tmp_path}/gw.db"
    first, second = open_engine(url), open_engine(url, busy_timeout_ms=100)
    try:
        schema.create_tables(first)
        entered = threading.Event()
        release = threading.Event()

        def hold() -> None:
            with write_transaction(first):  # no statement: only the BEGIN takes the lock
                entered.set()
                release.wait(5)

        holder = threading.Thread(target=hold)
        holder.start()
        assert entered.wait(5)
        started = time.monotonic()
        with pytest.raises(OperationalError, match="database is locked"), \
                write_transaction(second):
            pass
        assert time.monotonic() - started >= 0.09
        release.set()
        holder.join()
        with write_transaction(second) as conn:
            conn.execute(select(1))
    finally:
        first.dispose()
        second.dispose()


def test_dialect_insert_skips_a_row_that_exists(tmp_path: Path) -> None:
    engine = open_engine(f"sqlite:///{tmp_path}/gw.db")
    try:
        schema.create_tables(engine)
        s = schema.series
        row = {"signal": "gpu_up", "labels": '{"gpu":"0"}'}
        for _ in range(2):
            with write_transaction(engine) as conn:
                ins = dialect_insert(engine.dialect.name, s)
                conn.execute(ins.on_conflict_do_nothing(index_elements=["signal", "labels"]), [row])
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(s)) == 1
    finally:
        engine.dispose()
