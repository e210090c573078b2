"""The instance lock: one holder per SQLite file, one per node on a PostgreSQL database.

The holder is another process, as in real life (a second ``gpuwarden run``); SIGKILL
of the holder must free the lock, since a crashed daemon is restarted by systemd.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import make_url

from gpuwarden.errors import InstanceLocked, StoreError
from gpuwarden.storage.instance_lock import (
    InstanceLock,
    acquire_instance_lock,
    advisory_key,
    sqlite_lock_path,
)
from tests.storage.conftest import PG_ENV

HOLDER = """
import sys, time
from gpuwarden.storage.instance_lock import acquire_instance_lock
lock = acquire_instance_lock(sys.argv[1], sys.argv[2])
print("locked", flush=True)
time.sleep(60)
"""


class Holder:
    """A process holding the lock of (url, node) until it is killed (by its PID)."""

    def __init__(self, url: str, node: str) -> None:
        self.popen = subprocess.Popen([sys.executable, "-c", HOLDER, url, node],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True)
        assert self.popen.stdout is not None
        line = self.popen.stdout.readline()  # blocks until locked, or EOF if it failed
        if line.strip() != "locked":
            self.kill()
            err = self.popen.stderr.read() if self.popen.stderr else ""
            raise AssertionError(f"holder failed: {err}")
        self.pid = self.popen.pid

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(10)
        for stream in (self.popen.stdout, self.popen.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def holders() -> Iterator[list[Holder]]:
    started: list[Holder] = []
    yield started
    for holder in started:
        holder.kill()


# ------------------------------------------------------------------------------ SQLite
def test_sqlite_second_process_is_refused_naming_the_holder_until_it_dies(
        tmp_path: Path, holders: list[Holder]) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    holder = Holder(url, "node-a")
    holders.append(holder)

    with pytest.raises(InstanceLocked) as refused:
        acquire_instance_lock(url, "node-a")
    assert refused.value.pid == holder.pid
    assert f"pid {holder.pid}" in str(refused.value)
    assert str(tmp_path / "gw.db") in str(refused.value)
    # One lock per file: a daemon of another node would contend for the same database.
    with pytest.raises(InstanceLocked):
        acquire_instance_lock(url, "node-b")
    assert not (tmp_path / "gw.db").exists()  # refused before anything was written

    holder.kill()  # SIGKILL: no clean-up ran, the kernel dropped the lock
    lock = acquire_instance_lock(url, "node-a")
    try:
        assert (tmp_path / "gw.db.lock").read_text().split() == [str(os.getpid())]
    finally:
        lock.release()


def test_sqlite_release_frees_the_lock_in_the_same_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gw.db'}"
    first = acquire_instance_lock(url, "n")
    with pytest.raises(InstanceLocked):  # a second open of the file, even in-process
        acquire_instance_lock(url, "n")
    first.release()
    first.release()  # idempotent
    with acquire_instance_lock(url, "n") as again:
        assert again.held and again.kind == "file"
    assert not again.held


def test_sqlite_paths_that_name_the_same_file_share_one_lock(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    with acquire_instance_lock(f"sqlite:///{tmp_path}/data/gw.db", "n"):
        for other in ("sqlite:///data/gw.db", "sqlite:///link/gw.db",
                      f"sqlite+pysqlite:///{tmp_path}/data/gw.db?timeout=5",
                      f"sqlite:///{tmp_path}/data/gw%2Edb"):
            with pytest.raises(InstanceLocked):
                acquire_instance_lock(other, "n")
    assert sqlite_lock_path("sqlite:///link/gw.db") == f"{tmp_path}/data/gw.db.lock"


def test_in_memory_sqlite_needs_no_lock() -> None:
    for url in ("sqlite://", "sqlite:///:memory:", "sqlite:///file:m?mode=memory&uri=true"):
        a, b = acquire_instance_lock(url, "n"), acquire_instance_lock(url, "n")
        assert a.kind == b.kind == "none"
        a.release()
        b.release()


def test_sqlite_lock_in_a_missing_directory_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        acquire_instance_lock(f"sqlite:///{tmp_path}/no/such/dir/gw.db", "n")


def test_the_sqlite_path_imports_no_sqlalchemy(tmp_path: Path) -> None:
    # It runs before the first stored sample, whose time budget SQLAlchemy's import
    # alone would spend (see storage/early.py).
    code = ("import sys\nfrom gpuwarden.storage.instance_lock import acquire_instance_lock\n"
            f"acquire_instance_lock('sqlite:///{tmp_path}/gw.db', 'n')\n"
            "print([m for m in ('sqlalchemy', 'numpy', 'psycopg') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# -------------------------------------------------------------------------- PostgreSQL
@pytest.fixture
def pg_url() -> str:
    base = os.environ.get(PG_ENV)
    if not base:
        pytest.skip(f"{PG_ENV} is not set (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test)")
    return base


def _lock_holders(url: str, node: str) -> list[int]:
    """Backend PIDs holding the node's advisory lock, as an operator would look them up."""
    key = advisory_key(node) & 0xFFFF_FFFF_FFFF_FFFF
    conninfo = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND classid::int8 = %s AND objid::int8 = %s AND objsubid = 1",
            (key >> 32, key & 0xFFFF_FFFF)).fetchall()
    return [int(r[0]) for r in rows]


@pytest.mark.postgres
def test_postgres_one_holder_per_node_freed_when_the_holder_dies(
        pg_url: str, holders: list[Holder]) -> None:
    node = f"node-{uuid.uuid4().hex[:8]}"  # the shared server may hold other tests' locks
    holder = Holder(pg_url, node)
    holders.append(holder)
    assert len(_lock_holders(pg_url, node)) == 1

    with pytest.raises(InstanceLocked) as refused:
        acquire_instance_lock(pg_url, node)
    assert refused.value.pid == holder.pid
    assert f"pid {holder.pid}" in str(refused.value) and node in str(refused.value)

    other: InstanceLock = acquire_instance_lock(pg_url, node + "-other")  # per node
    other.release()

    holder.kill()  # the server ends the dead client's session, and the lock with it
    lock = acquire_instance_lock(pg_url, node)
    try:
        assert lock.kind == "postgres" and lock.held
        assert len(_lock_holders(pg_url, node)) == 1
    finally:
        lock.release()
    assert _lock_holders(pg_url, node) == []


@pytest.mark.postgres
def test_postgres_ensure_takes_the_lock_again_after_the_session_is_lost(pg_url: str) -> None:
    node = f"node-{uuid.uuid4().hex[:8]}"
    conninfo = make_url(pg_url).set(drivername="postgresql").render_as_string(
        hide_password=False)
    with acquire_instance_lock(pg_url, node) as lock:
        [backend] = _lock_holders(pg_url, node)
        with psycopg.connect(conninfo, autocommit=True) as admin:  # as a server restart would
            admin.execute("SELECT pg_terminate_backend(%s)", (backend,))
        lock.ensure(every=0)
        assert len(_lock_holders(pg_url, node)) == 1
        assert _lock_holders(pg_url, node) != [backend]


def test_advisory_key_is_stable_and_per_node() -> None:
    # Every daemon, of any version, must derive the same key from a node name.
    assert advisory_key("gpu-node-01") == advisory_key("gpu-node-01")
    assert advisory_key("gpu-node-01") != advisory_key("gpu-node-02")
    assert -(2**63) <= advisory_key("x") < 2**63
    # Pinned: a release that changed it would let an old and a new daemon run together.
    assert advisory_key("gpu-node-01") == 1170405174165787839
