"""The daemon's own process figures on ``/metrics`` (``gpuwarden_process_*``).

SREs watch the watcher's footprint: virtual and resident memory, start time, CPU
seconds, open and maximum file descriptors, read from ``/proc`` at each render. The
families, their help texts and their values are those of prometheus_client's
``ProcessCollector(namespace="gpuwarden")``, which the daemon used before (the test
in tests/api/test_exposition_reference.py compares the two on a made-up ``/proc``);
written with the standard library so that ``/metrics`` can answer before the heavy
libraries are imported (``Daemon.start``).
"""

from __future__ import annotations

import os
import resource

from gpuwarden.promql.gofloat import go_float

PREFIX = "gpuwarden_process_"


def _gauge(name: str, help_: str, value: float) -> str:
    return f"# HELP {name} {help_}\n# TYPE {name} gauge\n{name} {go_float(value)}\n"


class ProcessMetrics:
    """Renders the process families of process ``pid`` under ``proc``."""

    def __init__(self, proc: str = "/proc", pid: str = "self") -> None:
        self._proc = proc
        self._pid = pid
        self._ticks = float(os.sysconf("SC_CLK_TCK"))
        self._pagesize = resource.getpagesize()
        self._btime = 0.0  # 0: /proc cannot be read, no process families at all
        try:
            with open(os.path.join(proc, "stat"), "rb") as stat:
                for line in stat:
                    if line.startswith(b"btime "):
                        self._btime = float(line.split()[1])
                        break
        except OSError:
            pass

    def text(self) -> str:
        if not self._btime:
            return ""
        pid = os.path.join(self._proc, self._pid)
        out: list[str] = []
        try:
            with open(os.path.join(pid, "stat"), "rb") as stat:
                parts = stat.read().split(b")")[-1].split()
            out.append(_gauge(PREFIX + "virtual_memory_bytes", "Virtual memory size in bytes.",
                              float(parts[20])))
            out.append(_gauge(PREFIX + "resident_memory_bytes", "Resident memory size in bytes.",
                              float(parts[21]) * self._pagesize))
            out.append(_gauge(PREFIX + "start_time_seconds",
                              "Start time of the process since unix epoch in seconds.",
                              float(parts[19]) / self._ticks + self._btime))
            cpu = float(parts[11]) / self._ticks + float(parts[12]) / self._ticks
            name = PREFIX + "cpu_seconds_total"
            out.append(f"# HELP {name} Total user and system CPU time spent in seconds.\n"
                       f"# TYPE {name} counter\n{name} {go_float(cpu)}\n")
        except OSError:
            pass
        try:
            max_fds: float | None = None
            with open(os.path.join(pid, "limits"), "rb") as limits:
                for line in limits:
                    if line.startswith(b"Max open file"):
                        max_fds = float(line.split()[3])
                        break
            open_fds = len(os.listdir(os.path.join(pid, "fd")))
            out.append(_gauge(PREFIX + "open_fds", "Number of open file descriptors.", open_fds))
            if max_fds is not None:
                out.append(_gauge(PREFIX + "max_fds", "Maximum number of open file descriptors.",
                                  max_fds))
        except OSError:
            pass
        return "".join(out)
