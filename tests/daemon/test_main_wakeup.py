"""The main thread's wait (daemon/lifecycle.py): asleep until a stop request or a signal.

``run_forever`` used to wake every half second to look for a stop or a SIGHUP; now it
sleeps on a socketpair that ``request_stop`` and every handled signal write to. These
run on pytest's main thread (signal handlers can only be installed there), with the
handlers put back afterwards.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gpuwarden.config import parse_config
from gpuwarden.daemon.lifecycle import Daemon

pytestmark = pytest.mark.skipif(threading.current_thread() is not threading.main_thread(),
                                reason="signal handlers need the main thread")


@pytest.fixture
def daemon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Daemon]:
    """A daemon not started: wait_stop, the signals and reload are what is tested."""
    config = parse_config(f'node = "n"\nlisten = "127.0.0.1:0"\n[storage]\n'
                          f'url = "sqlite:///{tmp_path / "gw.db"}"\n', "<test>")
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    d = Daemon(config)
    try:
        yield d
    finally:
        d._wakeup.close()  # gives the previous wake-up fd back
        for s, handler in saved.items():
            signal.signal(s, handler)


def later(seconds: float, fn: Callable[[], object]) -> None:
    """``fn()`` on a thread of its own, ``seconds`` from now."""
    def run() -> None:
        time.sleep(seconds)
        fn()

    threading.Thread(target=run, daemon=True).start()


def sleeps_of(d: Daemon, monkeypatch: pytest.MonkeyPatch) -> list[float | None]:
    """The timeouts of the main thread's sleeps, recorded from now on."""
    seen: list[float | None] = []
    sleep = d._wakeup.sleep

    def recording(timeout: float | None) -> None:
        seen.append(timeout)
        sleep(timeout)

    monkeypatch.setattr(d._wakeup, "sleep", recording)
    return seen


def test_request_stop_from_another_thread_ends_an_untimed_wait(
        daemon: Daemon, monkeypatch: pytest.MonkeyPatch) -> None:
    sleeps = sleeps_of(daemon, monkeypatch)
    later(0.6, daemon.request_stop)
    assert daemon.wait_stop() is True
    # One sleep without a timeout: nothing woke the thread in between (the old loop
    # would have looked at least once more, after 0.5 s).
    assert sleeps == [None]


def test_wait_with_a_timeout_still_returns_false(daemon: Daemon) -> None:
    assert daemon.wait_stop(0.05) is False
    daemon.request_stop()
    assert daemon.wait_stop(0.05) is True


@pytest.mark.parametrize("where", ["process", "other thread"])
def test_sighup_reloads_at_once_and_the_wait_goes_on(daemon: Daemon, where: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHUP wakes the main thread even when the kernel hands it to another thread
    (which does not interrupt the main thread's wait: the wake-up fd does)."""
    reloads: list[str] = []

    def reload() -> bool:
        reloads.append(threading.current_thread().name)
        later(0.2, daemon.request_stop)  # stop once the reload was seen
        return True

    monkeypatch.setattr(daemon, "reload", reload)
    daemon.install_signal_handlers()
    if where == "process":
        later(0.2, lambda: os.kill(os.getpid(), signal.SIGHUP))
    else:
        later(0.2, lambda: signal.pthread_kill(threading.get_ident(), signal.SIGHUP))
    waiter = threading.Timer(20, lambda: os.kill(os.getpid(), signal.SIGTERM))
    waiter.start()  # a bound on the test if the wake-up never comes
    try:
        assert daemon.wait_stop() is True
    finally:
        waiter.cancel()
    assert reloads == [threading.main_thread().name]  # on the main thread, once


def test_sigterm_stops_an_untimed_wait(daemon: Daemon) -> None:
    daemon.install_signal_handlers()
    later(0.2, lambda: os.kill(os.getpid(), signal.SIGTERM))
    assert daemon.wait_stop() is True


def test_close_gives_the_wakeup_fd_back(daemon: Daemon) -> None:
    before = signal.set_wakeup_fd(-1)  # read it: set_wakeup_fd answers the previous one
    signal.set_wakeup_fd(before)
    daemon.install_signal_handlers()
    ours = signal.set_wakeup_fd(before)
    signal.set_wakeup_fd(ours)
    assert ours not in (before, -1)
    daemon._wakeup.close()
    assert signal.set_wakeup_fd(before) == before
    daemon.request_stop()  # a wake-up after close is a no-op, not an error
    assert daemon.wait_stop(0) is True
