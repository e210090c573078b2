"""``/metrics`` shows the samples' flow (collected, written, pending) as the store writer
leaves it, not as it stood when the cycle ended: the writer writes each cycle on its own
thread after the cycle's snapshot, and on a loaded node it finished after that snapshot
cycle after cycle, so a store that kept up read as one cycle behind."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon
from gpuwarden.storage.store import Store
from tests.daemon.test_daemon import free_port, wait_for
from tests.storage.test_daemon_first_cycle import Fixed

NODE = "node-a"


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    # 30 s: no scheduled cycle runs during the test, only the ones it runs itself.
    config = parse_config(
        f'node = "{NODE}"\ninterval = "30s"\nlisten = "127.0.0.1:{free_port()}"\n'
        f'[storage]\nurl = "sqlite:///{tmp_path / "gw.db"}"\n', "<test>")
    started = Daemon(config, collectors=[Fixed()])
    started.start()
    try:
        yield started
    finally:
        started.shutdown()


def flow(daemon: Daemon) -> tuple[float, float, float]:
    """(collected, written, pending) as one scrape of ``/metrics`` reads them."""
    values = dict(line.split(" ", 1) for line in daemon.metrics_body().decode().splitlines()
                  if not line.startswith("#"))
    return (float(values["gpuwarden_samples_collected_total"]),
            float(values["gpuwarden_samples_written_total"]),
            float(values["gpuwarden_store_pending_samples"]))


def test_a_write_that_ends_after_its_cycle_shows_on_the_next_scrape(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    wait_for(lambda: flow(daemon) == (4.0, 4.0, 0.0))  # the first cycle, 4 GPUs
    release = threading.Event()
    real_persist = Store.persist

    def held_persist(store: Store) -> int:
        release.wait(10.0)
        return real_persist(store)

    monkeypatch.setattr(Store, "persist", held_persist)
    daemon.run_cycle()  # its write waits: the cycle ends first
    assert flow(daemon) == (8.0, 4.0, 4.0)
    release.set()
    # No further cycle runs: only the writer's own pass can move what a scrape reads.
    wait_for(lambda: flow(daemon)[2] == 0.0, timeout=5.0)
    assert flow(daemon) == (8.0, 8.0, 0.0)


def test_written_never_reads_above_collected(daemon: Daemon) -> None:
    """Scraped while cycles and writes run as fast as they can: written may lag, it
    never leads (a cycle written twice would lead for good)."""
    stop = threading.Event()

    def cycles() -> None:
        for _ in range(100):
            if stop.is_set():
                return
            daemon.run_cycle()
            time.sleep(0.002)  # a new timestamp for each cycle's samples

    runner = threading.Thread(target=cycles)
    runner.start()
    try:
        deadline = time.monotonic() + 10.0
        while runner.is_alive() and time.monotonic() < deadline:
            collected, written, _ = flow(daemon)
            assert written <= collected
    finally:
        stop.set()
        runner.join(30.0)
    wait_for(lambda: flow(daemon)[2] == 0.0, timeout=5.0)
    collected, written, _ = flow(daemon)
    assert written == collected and collected >= 8.0
