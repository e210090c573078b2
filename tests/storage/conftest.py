"""The ``backend`` fixture: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``GPUWARDEN_TEST_POSTGRES_URL`` (e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/test``); without it those params are
skipped with the reason, and CI (``GPUWARDEN_FAIL_ON_SKIP=1``) fails on such skips.
Each PostgreSQL test gets a fresh schema (``search_path`` via libpq ``options``),
dropped afterwards, so tests never see each other's tables.
"""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import Store, open_store, schema

PG_ENV = "GPUWARDEN_TEST_POSTGRES_URL"
T0 = 1_700_000_000.0  # a multiple of every chunk span used in the tests


@dataclass
class Backend:
    """Where a test's store lives, and how to get in its way."""

    name: str
    url: str
    bad_url: str  # same backend, but a URL that cannot be opened
    lock_writes: Callable[[], AbstractContextManager[None]]
    opened: list[Store] = field(default_factory=list)

    def open(self, node: str = "node-a", **options: Any) -> Store:
        store = open_store(self.url, node=node, **options)
        self.opened.append(store)
        return store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sqlite_backend(tmp_path: Path) -> Backend:
    path = tmp_path / "store.db"

    @contextmanager
    def lock_writes() -> Iterator[None]:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            conn.execute("ROLLBACK")
            conn.close()

    return Backend(
        "sqlite", f"sqlite:///{path}", f"sqlite:///{tmp_path}/no/such/dir/x.db", lock_writes
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        b = _sqlite_backend(tmp_path)
        yield b
        for store in b.opened:
            store.close()
        return
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    schema = f"gw_test_{uuid.uuid4().hex[:12]}"
    url = make_url(base)
    conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
    scoped = url.update_query_dict({"options": f"-csearch_path={schema}"})

    @contextmanager
    def lock_writes() -> Iterator[None]:
        with psycopg.connect(conninfo, options=f"-csearch_path={schema}") as conn:
            conn.execute("LOCK TABLE head_log, chunks, series IN ACCESS EXCLUSIVE MODE")
            try:
                yield
            finally:
                conn.rollback()

    bad = url.set(host="127.0.0.1", port=_free_port()).render_as_string(hide_password=False)
    b = Backend("postgres", scoped.render_as_string(hide_password=False), bad, lock_writes)
    try:
        yield b
    finally:
        for store in b.opened:
            store.close()
        with psycopg.connect(conninfo, autocommit=True) as admin:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


def make_legacy(backend: Backend) -> None:
    """The tables as gpuwarden made them before ``chunks`` was partitioned on PostgreSQL
    (``schema.metadata`` as it stands: a rowid ``chunks``), with their version row."""
    engine = create_engine(backend.url)
    try:
        schema.metadata.create_all(engine)
        with engine.begin() as conn:
            conn.execute(schema.schema_version.insert().values(version=schema.SCHEMA_VERSION))
    finally:
        engine.dispose()


def gpu_cycle(k: int, gpus: int = 4, signal: str = "gpu_utilization_ratio") -> list[Sample]:
    """Cycle ``k`` (at T0 + k seconds): value (k + gpu) / 100 for each GPU."""
    return [
        Sample(signal, make_labels(node="node-a", gpu=str(g)), (k + g) / 100, T0 + k)
        for g in range(gpus)
    ]


class TcpProxy:
    """A loopback TCP forwarder that can be cut and restored: a real database outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = _free_port()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.start()

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen()
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Refuse new connections and drop the established ones."""
        if self._listener is not None:
            with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._socks.clear()
