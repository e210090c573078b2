"""The daemon's first cycle, on both backends: stored once, in the head, counted, seen.

On SQLite it is written by ``early_store`` before the store is opened (and replayed by
the store); on PostgreSQL the store's own path writes it, as before.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from gpuwarden.collector.base import Collector
from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.model import Sample, make_labels
from gpuwarden.storage import early as early_store
from gpuwarden.storage import open_store, schema
from tests.storage.conftest import Backend, _free_port

NODE = "node-a"


class Fixed(Collector):
    """The same GPUs every cycle, stamped with the time of collection; GPU 1 is lost."""

    name = "gpus"

    def collect(self) -> Iterable[Sample]:
        now = time.time()
        return [
            Sample("gpu_up", make_labels(node=NODE, gpu=str(g), uuid=f"GPU-{g}", model="H100"),
                   0.0 if g == 1 else 1.0, now)
            for g in range(4)
        ]


def make_daemon(url: str) -> Daemon:
    config = parse_config(
        f'node = "{NODE}"\ninterval = "30s"\nlisten = "127.0.0.1:{_free_port()}"\n'
        f'[storage]\nurl = "{url}"\n', "<test>",
    )
    return Daemon(config, collectors=[Fixed()])


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The order of the early write (with what it returned) and the store's opening."""
    import gpuwarden.storage

    seen: list[str] = []
    real_early, real_open = early_store.store_first_cycle, gpuwarden.storage.open_store

    def early(*args: Any, **kwargs: Any) -> int | None:
        got = real_early(*args, **kwargs)
        seen.append(f"early:{got}")
        return got

    def opening(*args: Any, **kwargs: Any) -> Any:
        seen.append("open_store")
        return real_open(*args, **kwargs)

    monkeypatch.setattr(early_store, "store_first_cycle", early)
    monkeypatch.setattr(gpuwarden.storage, "open_store", opening)
    return seen


@pytest.fixture
def running() -> Iterator[list[Daemon]]:
    daemons: list[Daemon] = []
    yield daemons
    for daemon in daemons:
        daemon.shutdown()


def head_log_rows(daemon: Daemon) -> int:
    with daemon.store.engine.connect() as conn:
        hl = schema.head_log
        return int(conn.scalar(select(func.count()).where(hl.c.writer == NODE)) or 0)


def metric(daemon: Daemon, name: str) -> float:
    for line in daemon.metrics_body().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not exported")


def assert_first_cycle_once(daemon: Daemon) -> None:
    assert daemon.cycles_total == 1 and daemon.cycle_errors_total == 0
    assert head_log_rows(daemon) == 1
    store = daemon.store
    # In the head, once: what queries and rules read.
    latest = store.latest("gpu_up")
    assert [s.value for s in latest] == [1.0, 0.0, 1.0, 1.0]
    assert all(len(s) == 1 for s in store.query("gpu_up"))
    # Counted once, as written by this process.
    assert store.samples_written_total == 4 and store.pending_samples == 0
    assert metric(daemon, "gpuwarden_samples_written_total") == 4.0
    assert metric(daemon, "gpuwarden_samples_collected_total") == 4.0
    assert 'gpuwarden_gpu_up{gpu="1"' in daemon.metrics_body().decode()
    # The rules saw it: GPU 1 is lost (GPULost has no ``for``).
    assert [a["labels"]["gpu"] for a in daemon.alerts_json() if a["name"] == "GPULost"] == ["1"]


def test_first_cycle_stored_once(backend: Backend, calls: list[str],
                                 running: list[Daemon]) -> None:
    daemon = make_daemon(backend.url)
    running.append(daemon)
    daemon.start()
    if backend.name == "sqlite":  # stored before SQLAlchemy, then replayed by the store
        assert calls == ["early:4", "open_store"]
    else:  # PostgreSQL: the store's own path, as before
        assert calls == ["open_store"]
    assert_first_cycle_once(daemon)
    daemon.run_cycle()  # later cycles are written by the store writer thread, soon after
    deadline = time.monotonic() + 10
    while daemon.store.samples_written_total < 8 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert head_log_rows(daemon) == 2 and daemon.store.samples_written_total == 8
    daemon.shutdown()
    running.clear()
    store = backend.open(node=NODE)
    assert [len(s) for s in store.query("gpu_up")] == [2, 2, 2, 2]


def test_locked_early_write_leaves_it_to_the_store(
    tmp_path: Path, calls: list[str], running: list[Daemon],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    path = tmp_path / "gw.db"
    url = f"sqlite:///{path}"
    open_store(url, node=NODE).close()  # an existing database, locked at the early write
    locked = early_store.store_first_cycle

    def under_lock(*args: Any, **kwargs: Any) -> int | None:
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            return locked(*args, **{**kwargs, "busy_timeout_ms": 50})
        finally:
            locker.execute("ROLLBACK")
            locker.close()

    monkeypatch.setattr(early_store, "store_first_cycle", under_lock)
    daemon = make_daemon(url)
    running.append(daemon)
    with caplog.at_level(logging.INFO, logger="gpuwarden.storage.early"):
        daemon.start()
    assert calls == ["early:None", "open_store"]
    assert "first cycle not stored early" in caplog.text
    assert_first_cycle_once(daemon)
