"""The scheduled cycle job hands freed memory back; the early snapshot is rendered
before the store opens (its first scrape then copies bytes)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from gpuwarden import native_memory
from gpuwarden.config import parse_config
from gpuwarden.daemon import lifecycle, wiring
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.native_memory import PeriodicTrim
from gpuwarden.storage.store import Store


def _config(tmp_path: Path, port: int = 0) -> object:
    return parse_config(f'node = "n"\ninterval = "10s"\nlisten = "127.0.0.1:{port}"\n'
                        f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
                        '[gpu]\nsource = "sim"\nsim_gpus = 1\n', "<test>")


class _Libc:
    """glibc's malloc_trim and mallopt as native_memory calls them; records the trims,
    or fails them with ``trim_error``."""

    def __init__(self, trim_error: OSError | None = None) -> None:
        self.trims: list[int] = []
        self.trim_error = trim_error

    def malloc_trim(self, pad: int) -> int:
        if self.trim_error is not None:
            raise self.trim_error
        self.trims.append(pad)
        return 1

    def mallopt(self, param: int, value: int) -> int:
        return 1


def test_cycle_job_runs_a_cycle_then_trims_once_per_period(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _Libc()
    monkeypatch.setattr(native_memory, "_libc", lambda: libc)
    daemon = Daemon(_config(tmp_path))  # type: ignore[arg-type]
    daemon.start()
    try:
        before = daemon.cycles_total
        for _ in range(3):  # within one period: the first job trims, the others not
            daemon._cycle_job()
        assert daemon.cycles_total == before + 3
        assert daemon._trim.trims == 1
        daemon._trim = PeriodicTrim(0.0)  # a period shorter than a cycle: every job
        for _ in range(2):
            daemon._cycle_job()
        assert daemon._trim.trims == 2
    finally:
        daemon.shutdown()
    assert len(libc.trims) >= 3  # (a chunk cut may trim on its own too)
    assert lifecycle.TRIM_EVERY_S >= 1.0  # a trim costs 0.2-0.7 ms: not every cycle


def test_cycle_job_survives_a_failing_trim(tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    broken = _Libc(trim_error=OSError("no"))
    monkeypatch.setattr(native_memory, "_libc", lambda: broken)
    daemon = Daemon(_config(tmp_path))  # type: ignore[arg-type]
    daemon.start()
    try:
        before = daemon.cycles_total
        daemon._cycle_job()
        assert daemon.cycles_total == before + 1
        assert daemon.cycle_errors_total == 0
    finally:
        daemon.shutdown()


def test_early_snapshot_is_rendered_before_the_store_opens(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    cfg = _config(tmp_path, port)
    renders: list[int] = []
    real_open = wiring.open_store

    def open_store(config: object) -> Store:
        renders.append(daemon.cycle.exposition.renders_total)
        return real_open(cfg)  # type: ignore[arg-type]

    monkeypatch.setattr(wiring, "open_store", open_store)
    daemon = Daemon(cfg)  # type: ignore[arg-type]
    daemon.start()
    daemon.shutdown()
    assert renders == [1]
