"""systemd's notify protocol: one datagram to ``$NOTIFY_SOCKET``, no dependency.

``Type=notify`` units wait for ``READY=1``; with ``WatchdogSec=`` systemd restarts the
service when ``WATCHDOG=1`` stops arriving, which is exactly what we want when the
collection loop wedges. Outside systemd every call is a no-op.

The socket is non-blocking: a datagram socket whose reader lags has a short queue
(``net.unix.max_dgram_qlen``, 10 by default), and a blocking send would then hold the
collection loop; a ping that does not fit is dropped (the next cycle sends another).
"""

from __future__ import annotations

import logging
import os
import socket

from gpuwarden.ratelog import RateLimitedLog

log = logging.getLogger(__name__)
_quiet = RateLimitedLog(log)


class SystemdNotifier:
    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET", "")
        if address.startswith("@"):  # abstract namespace socket
            address = "\0" + address[1:]
        self._address = address or None
        self._sock: socket.socket | None = None
        watchdog_usec = os.environ.get("WATCHDOG_USEC", "")
        self.watchdog_seconds = int(watchdog_usec) / 1e6 if watchdog_usec.isdigit() else None

    @property
    def enabled(self) -> bool:
        return self._address is not None

    def notify(self, state: str) -> bool:
        if self._address is None:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
            self._sock.sendto(state.encode(), self._address)
        except OSError as exc:
            name = state.split("=", maxsplit=1)[0]
            _quiet.warning(f"notify:{name}", "sd_notify(%s) failed: %s", name, exc)
            return False
        return True

    def ready(self, status: str = "") -> bool:
        return self.notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.notify("RELOADING=1")

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
