"""A second ``gpuwarden run`` on a running daemon's store: refused, writes nothing.

Started by mistake (a second unit, a manual run with the production config), it must
exit 1 within seconds, name the running daemon's PID, and leave the store as the
first daemon writes it: no sample twice (the reported corruption: the second instance
replayed the first one's head log and wrote it again on exit), no series of its own.
The first daemon keeps running. On PostgreSQL the lock is per node, so a daemon of
another node on the same database is not refused, and it holds across a server restart.
"""

from __future__ import annotations

import time

import pytest

from tests.faults.conftest import Daemons
from tests.faults.daemon_proc import NODE, DaemonProc, wait_for
from tests.faults.pgcluster import PgCluster
from tests.faults.stored import read_stored

pytestmark = pytest.mark.slow

#: From exec to exit: interpreter start-up and the config are most of it.
REFUSE_WITHIN_S = 10.0
SIGNAL = "gpu_utilization_ratio"


def assert_refused(second: DaemonProc, first: DaemonProc) -> None:
    started = time.monotonic()
    deadline = started + REFUSE_WITHIN_S
    while second.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    took = time.monotonic() - started
    running = second.alive()
    second.kill()
    out = second.log_text()
    assert not running, f"second instance still running after {took:.1f}s:\n{out}"
    assert second.popen.returncode == 1, f"exit {second.popen.returncode}:\n{out}"
    assert f"pid {first.pid}" in out, out
    assert "Traceback" not in out, out


def assert_first_unharmed(first: DaemonProc, url: str) -> None:
    """The first daemon still cycles; the store holds its samples once and nothing else."""
    c = first.cycles()
    first.wait_cycles(c + 3, timeout=15)
    acknowledged = first.cycles()
    assert first.stop() == 0
    stored = read_stored(url)
    assert stored.duplicates() == {}, "samples stored twice"
    # The second instances ran with 3 GPUs: a gpu="2" series would be theirs.
    assert sorted(lab["gpu"] for lab in stored.series_labels(SIGNAL)) == ["0", "1"]
    assert acknowledged <= len(stored.timestamps(SIGNAL, gpu="0", node=NODE)) <= acknowledged + 5


def test_second_instance_on_sqlite(daemons: Daemons) -> None:
    url = f"sqlite:///{daemons.workdir / 'gw.db'}"
    first = daemons.start(url, name="first", gpus=2)
    first.wait_healthy()
    first.wait_cycles(3)

    # The very same config: same store, same port.
    assert_refused(daemons.again(first), first)
    # Same store and node, another port (so the port cannot be what stops it), 3 GPUs.
    assert_refused(daemons.start(url, name="other-port", gpus=3), first)
    assert_first_unharmed(first, url)


@pytest.mark.postgres
def test_second_instance_on_postgres(pg: PgCluster, pg_url: str, daemons: Daemons) -> None:
    first = daemons.start(pg_url, name="first", gpus=2)
    first.wait_healthy()
    first.wait_cycles(3)

    assert_refused(daemons.again(first), first)
    assert_refused(daemons.start(pg_url, name="other-port", gpus=3), first)

    # The lock is per node: another node's daemon shares the database.
    neighbour = daemons.start(pg_url, name="neighbour", node="other-node", gpus=1)
    neighbour.wait_healthy()
    neighbour.wait_cycles(2)
    assert neighbour.stop() == 0

    stored = read_stored(pg_url)
    assert stored.duplicates() == {}, "samples stored twice"
    assert len(stored.timestamps(SIGNAL, gpu="0", node="other-node")) >= 2
    mine = sorted(lab["gpu"] for lab in stored.series_labels(SIGNAL) if lab["node"] == NODE)
    assert mine == ["0", "1"]  # no gpu="2": the refused instances wrote nothing

    # A server restart ends the lock's session; the daemon must take it again.
    pg.stop()
    pg.start()
    wait_for(lambda: first.healthz()[1].get("store") == "ok", 30, "store ok after restart")
    time.sleep(6.0)  # the daemon re-checks its lock at most every 5 s
    assert_refused(daemons.start(pg_url, name="after-restart", gpus=3), first)

    acknowledged = first.cycles()
    assert first.stop() == 0
    stored = read_stored(pg_url)
    assert stored.duplicates() == {}, "samples stored twice"
    assert len(stored.timestamps(SIGNAL, gpu="0", node=NODE)) >= acknowledged
