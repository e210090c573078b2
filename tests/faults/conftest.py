"""Fixtures of the fault-matrix tests: a private PostgreSQL cluster, daemon processes.

The cluster (``pgcluster.py``) is made once per session and shared; each test gets a
database of its own in it, and a test that stopped or froze the server leaves it running
again (the ``pg`` fixture thaws and restarts it in teardown whatever happened).
"""

from __future__ import annotations

import os
import pwd
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.daemon_proc import DaemonProc
from tests.faults.pgcluster import PgCluster, find_pg_bin


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    bin_dir = find_pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, postgres) are not installed "
                    "(Debian: apt-get install postgresql)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root, and there is no 'postgres' OS user to run "
                        "initdb and postgres as (they refuse root)")
    cluster = PgCluster(bin_dir)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg(pg_cluster: PgCluster) -> Iterator[PgCluster]:
    """The private cluster, running; left running after the test whatever it did."""
    pg_cluster.thaw()
    if pg_cluster.proc is None or pg_cluster.proc.poll() is not None:
        pg_cluster.start()
    try:
        yield pg_cluster
    finally:
        pg_cluster.thaw()
        if pg_cluster.proc is None or pg_cluster.proc.poll() is not None:
            pg_cluster.start()


@pytest.fixture
def pg_url(pg: PgCluster) -> str:
    """A fresh database in the private cluster, as a gpuwarden storage URL."""
    return pg.create_database(f"gw_{uuid.uuid4().hex[:12]}")


class Daemons:
    """Starts daemon processes for one test; all are killed by PID in teardown."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.started: list[DaemonProc] = []

    def start(self, url: str, name: str = "daemon", **config: Any) -> DaemonProc:
        """A daemon on ``url`` with a config of its own (free port; ``config`` keys)."""
        return self._add(DaemonProc.on(self.workdir, url, f"{name}-{len(self.started)}",
                                       **config))

    def again(self, running: DaemonProc, name: str = "again") -> DaemonProc:
        """A second daemon with the very config file (and port) of ``running``."""
        log = self.workdir / f"{name}-{len(self.started)}.log"
        return self._add(DaemonProc(running.config, running.port, log))

    def _add(self, proc: DaemonProc) -> DaemonProc:
        self.started.append(proc)
        return proc


@pytest.fixture
def daemons(tmp_path: Path) -> Iterator[Daemons]:
    procs = Daemons(tmp_path)
    yield procs
    for proc in procs.started:
        proc.kill()
