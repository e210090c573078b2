"""systemd's notify socket: a reader that lags must never hold the collection loop."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from gpuwarden.daemon.sdnotify import SystemdNotifier


def test_a_full_notify_queue_drops_pings_instead_of_blocking(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as reader:
        reader.bind(str(path))
        notifier = SystemdNotifier(str(path))
        started = time.monotonic()
        sent = [notifier.watchdog() for _ in range(200)]  # nobody reads meanwhile
        assert time.monotonic() - started < 1.0
        assert sent[0] and not all(sent)  # the queue filled up, the rest were dropped
        reader.setblocking(False)
        received = []
        while True:
            try:
                received.append(reader.recv(64))
            except BlockingIOError:
                break
        assert received and set(received) == {b"WATCHDOG=1"}
        assert notifier.watchdog()  # once read, pings go through again
        notifier.close()


def test_outside_systemd_every_call_is_a_no_op() -> None:
    notifier = SystemdNotifier("")
    assert not notifier.enabled
    assert notifier.watchdog() is False
