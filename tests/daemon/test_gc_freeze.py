"""The daemon's long-lived objects are frozen out of the garbage collector's full passes
(``daemon/gc_freeze.py``), and cyclic garbage among them is still collected."""

from __future__ import annotations

import gc
import re
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.config import parse_config
from gpuwarden.daemon.gc_freeze import WARM_UP_CYCLES, GcFreeze
from gpuwarden.daemon.lifecycle import Daemon
from tests.daemon.test_daemon import Proc, write_config


@pytest.fixture(autouse=True)
def _thawed() -> Iterator[None]:
    """Whatever a test froze goes back to the collector (this is the test runner's heap)."""
    gc.unfreeze()
    yield
    gc.unfreeze()


class _Cyclic:
    """An object in a reference cycle with itself: only the cyclic collector frees it."""

    def __init__(self) -> None:
        self.me = self


def test_freezes_after_the_warm_up_cycles_then_once_per_period() -> None:
    freeze = GcFreeze(warm_up_cycles=3, every_s=60.0)
    assert not freeze.after_cycle(0.0)
    assert not freeze.after_cycle(1.0)
    assert gc.get_freeze_count() == 0
    assert freeze.after_cycle(2.0)  # the third cycle
    assert gc.get_freeze_count() > 1000  # at least this test runner's imports
    assert not any(freeze.after_cycle(t) for t in (3.0, 30.0, 61.9))
    assert freeze.after_cycle(62.0)
    assert freeze.freezes == 2


def test_cyclic_garbage_that_was_frozen_is_collected_at_the_next_pass() -> None:
    freeze = GcFreeze(warm_up_cycles=1, every_s=60.0)
    garbage = _Cyclic()
    gone = weakref.ref(garbage)
    assert freeze.after_cycle(0.0)
    del garbage
    gc.collect()
    assert gone() is not None  # frozen: no collection looks at it...
    assert freeze.after_cycle(60.0)
    assert gone() is None  # ...until the next thaw-collect-freeze


def test_garbage_of_the_warm_up_is_collected_not_frozen() -> None:
    garbage = _Cyclic()
    gone = weakref.ref(garbage)
    del garbage
    assert GcFreeze(warm_up_cycles=1).after_cycle(0.0)
    assert gone() is None


def test_a_reload_freezes_again_after_a_new_warm_up() -> None:
    freeze = GcFreeze(warm_up_cycles=2, every_s=3600.0)
    assert [freeze.after_cycle(t) for t in (0.0, 1.0, 2.0)] == [False, True, False]
    freeze.warm_up_again()  # an hour is not over, yet the reload's garbage goes now
    assert [freeze.after_cycle(t) for t in (3.0, 4.0, 5.0)] == [False, True, False]
    assert freeze.freezes == 2


def _config(tmp_path: Path) -> object:
    return parse_config(f'node = "n"\ninterval = "10s"\nlisten = "127.0.0.1:0"\n'
                        f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n'
                        '[gpu]\nsource = "sim"\nsim_gpus = 1\n', "<test>")


@pytest.mark.parametrize("freeze_gc", [True, False])
def test_the_cycle_job_freezes_only_in_a_process_of_its_own(tmp_path: Path,
                                                            freeze_gc: bool) -> None:
    daemon = Daemon(_config(tmp_path), freeze_gc=freeze_gc)  # type: ignore[arg-type]
    daemon.start()
    try:
        for _ in range(WARM_UP_CYCLES):
            daemon._cycle_job()
        assert (gc.get_freeze_count() > 0) is freeze_gc
        assert daemon.cycle_errors_total == 0
    finally:
        daemon.shutdown()


def test_gpuwarden_run_freezes_after_its_first_cycles(tmp_path: Path) -> None:
    config, log = tmp_path / "gw.toml", tmp_path / "daemon.log"
    write_config(config, 0, tmp_path / "gw.db", interval="100ms")
    proc = Proc(config, 0, log, env={"GPUWARDEN_LOG_LEVEL": "DEBUG"})
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = re.search(r"froze (\d+) long-lived objects", log.read_text())
            if found:
                break
            assert proc.popen.poll() is None, log.read_text()
            time.sleep(0.1)
        else:
            raise AssertionError("no freeze logged:\n" + log.read_text())
        assert int(found[1]) > 30_000  # the imports alone (SQLAlchemy, numpy...)
    finally:
        assert proc.stop() == 0
