"""Which GPU processes belong to which server (collector/attribution.py), on real processes.

Each test starts real Python processes laid out as the inference servers lay theirs out
-- a listener whose children hold the GPU (vLLM, SGLang), a launcher whose listener and
GPU shards are siblings (TGI) -- and feeds their real pids in as the GPU's processes, as
NVML would list them. Every process started is stopped by its pid.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpuwarden.collector.attribution import (
    ProcessAttribution,
    ProcFs,
    parse_listening,
    parse_ppid,
    server_port,
)
from gpuwarden.config import ServerConfig

# A server: listens on a loopback port, starts a GPU-holding child ("spawn": a new
# interpreter, which does not inherit the socket; "fork": a forked child, which does),
# prints "port child-pid" and waits. Everything exits by itself after a minute.
SERVER = r"""
import os, socket, subprocess, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen()
if sys.argv[1] == "fork":
    child = os.fork()
    if child == 0:
        time.sleep(60)
        os._exit(0)
else:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]).pid
print(s.getsockname()[1], child, flush=True)
time.sleep(60)
"""

# TGI's layout: a launcher starts a router (listens, holds no GPU) and a shard (holds the
# GPU, does not listen) side by side; prints "port router-pid shard-pid".
LAUNCHER = r"""
import subprocess, sys, time
router = subprocess.Popen([sys.executable, "-c", sys.argv[1], "spawn"], stdout=subprocess.PIPE,
                          text=True)
port, _ = router.stdout.readline().split()
shard = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(port, router.pid, shard.pid, flush=True)
time.sleep(60)
"""


class Processes:
    """Processes started by a test, and the pids it learnt of, all stopped at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen[str]] = []
        self.pids: list[int] = []

    def start(self, *args: str) -> list[int]:
        """Run ``python -c ARGS``; the ints of its first line of output."""
        proc = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True)
        self.started.append(proc)
        self.pids.append(proc.pid)
        assert proc.stdout is not None
        numbers = [int(word) for word in proc.stdout.readline().split()]
        self.pids.extend(numbers[1:])
        return numbers

    def stop(self) -> None:
        for pid in reversed(self.pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.started:
            proc.wait(timeout=10)
            if proc.stdout is not None:
                proc.stdout.close()


@pytest.fixture
def procs() -> Iterator[Processes]:
    processes = Processes()
    try:
        yield processes
    finally:
        processes.stop()


def server(name: str, port: int, gpus: tuple[str, ...] = ()) -> ServerConfig:
    return ServerConfig(name, "vllm", f"http://127.0.0.1:{port}/metrics", gpus=gpus)


def test_the_listeners_descendants_are_the_servers(procs: Processes) -> None:
    port, child = procs.start(SERVER, "spawn")
    api_server = procs.pids[0]
    other_port, other_child = procs.start(SERVER, "spawn")
    attribution = ProcessAttribution([server("vllm-0", port), server("vllm-1", other_port)])
    owners = attribution.owners({child, api_server, other_child, os.getpid()})
    assert owners == {child: "vllm-0", api_server: "vllm-0", other_child: "vllm-1"}


def test_children_that_inherited_the_socket_are_the_servers_too(procs: Processes) -> None:
    port, forked = procs.start(SERVER, "fork")
    attribution = ProcessAttribution([server("sglang", port)])
    assert attribution.owners({forked}) == {forked: "sglang"}
    found = attribution.proc.socket_inodes(forked) & attribution.proc.socket_inodes(
        procs.pids[0])
    assert found  # both hold the listening socket: the forked child inherited it


def test_tgi_layout_the_listeners_siblings_under_its_launcher(procs: Processes) -> None:
    port, router, shard = procs.start(LAUNCHER, SERVER)
    attribution = ProcessAttribution([server("tgi", port)])
    assert attribution.owners({shard}) == {shard: "tgi"}
    # The listener is found among the children of the shard's ancestors.
    assert ProcFs().ppid(router) == ProcFs().ppid(shard) == procs.pids[0]


def test_a_sibling_job_is_not_given_to_a_server_whose_children_hold_the_gpu(
        procs: Processes) -> None:
    """This test process started the server and holds a GPU itself (as a shell that
    started vLLM and another job would): the server's own child is its, this is not."""
    port, child = procs.start(SERVER, "spawn")
    attribution = ProcessAttribution([server("vllm-0", port)])
    assert attribution.owners({child, os.getpid()}) == {child: "vllm-0"}


def test_nothing_listening_on_the_port_attributes_nothing(procs: Processes) -> None:
    port, child = procs.start(SERVER, "spawn")
    attribution = ProcessAttribution([server("elsewhere", port + 1 if port < 65535 else 1)])
    assert attribution.owners({child}) == {}


def test_a_process_gone_mid_cycle_is_skipped(procs: Processes) -> None:
    port, child = procs.start(SERVER, "spawn")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait(timeout=10)
    attribution = ProcessAttribution([server("vllm-0", port)])
    assert attribution.owners({child, gone.pid}) == {child: "vllm-0"}


def test_proc_is_read_again_only_when_the_pids_change_or_a_minute_passed(
        procs: Processes) -> None:
    port, child = procs.start(SERVER, "spawn")
    now = [0.0]
    attribution = ProcessAttribution([server("vllm-0", port)], monotonic=lambda: now[0])
    for _ in range(5):
        assert attribution.owners({child}) == {child: "vllm-0"}
        now[0] += 1.0
    assert attribution.reads_total == 1
    attribution.owners({child, procs.pids[0]})
    assert attribution.reads_total == 2
    now[0] += 60.0
    attribution.owners({child, procs.pids[0]})
    assert attribution.reads_total == 3


class NoPermission(ProcFs):
    """What an unprivileged gpuwarden meets reading another user's /proc/PID/fd."""

    def socket_inodes(self, pid: int) -> set[int]:
        raise PermissionError(13, "Permission denied", f"/proc/{pid}/fd")


def test_unreadable_fds_warn_once_saying_what_to_do(
        procs: Processes, caplog: pytest.LogCaptureFixture) -> None:
    port, child = procs.start(SERVER, "spawn")
    attribution = ProcessAttribution([server("vllm-0", port), server("tgi", 1, gpus=("1",))],
                                     proc=NoPermission())
    with caplog.at_level(logging.WARNING, logger="gpuwarden.collector.attribution"):
        assert attribution.owners({child}) == {}
        assert attribution.owners({child, procs.pids[0]}) == {}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1, warnings
    assert "server(s) vllm-0:" in warnings[0] and "gpus = [...]" in warnings[0]


def test_no_warning_where_permission_was_not_what_failed(
        procs: Processes, caplog: pytest.LogCaptureFixture) -> None:
    port, child = procs.start(SERVER, "spawn")
    attribution = ProcessAttribution([server("vllm-0", port + 1 if port < 65535 else 1)],
                                     proc=NoPermission())
    with caplog.at_level(logging.WARNING, logger="gpuwarden.collector.attribution"):
        assert attribution.owners({child}) == {}
    assert caplog.records == []  # no listener on that port here: not a permission matter


# --- parsing, on a fake /proc ----------------------------------------------------------------

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F40 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1
   1: 0100007F:1F40 0100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 4343 1
   2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 99 1
"""
TCP6 = (
    "  sl  local_address                         remote_address                        st"
    " tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000000000000000000000000000:1F40 00000000000000000000000000000000:0000 0A"
    " 00000000:00000000 00:00000000 00000000  1000        0 5151 1\n"
)


def test_listening_sockets_from_tcp_and_tcp6_any_address(tmp_path: Path) -> None:
    assert parse_listening(TCP, {8000}) == {8000: {4242}}  # the established one is not
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").write_text(TCP)
    (tmp_path / "net" / "tcp6").write_text(TCP6)
    assert ProcFs(str(tmp_path)).listening({8000, 80}) == {8000: {4242, 5151}, 80: {99}}


def test_ppid_of_a_command_with_spaces_and_parentheses(tmp_path: Path) -> None:
    assert parse_ppid("4711 (python3) S 4700 4711 4700 0 -1") == 4700
    assert parse_ppid("4712 (a) (b c)) R 1 4712 1 0 -1") == 1
    (tmp_path / "9").mkdir()
    (tmp_path / "9" / "stat").write_text("9 (x y) S 7 9 9 0")
    assert ProcFs(str(tmp_path)).ppid(9) == 7
    assert ProcFs(str(tmp_path)).ppid(10) is None  # gone


def test_socket_inodes_from_fd_links(tmp_path: Path) -> None:
    fd = tmp_path / "9" / "fd"
    fd.mkdir(parents=True)
    (fd / "3").symlink_to("socket:[4242]")
    (fd / "4").symlink_to("/dev/nvidia0")
    (fd / "5").symlink_to("pipe:[77]")
    assert ProcFs(str(tmp_path)).socket_inodes(9) == {4242}
    assert ProcFs(str(tmp_path)).socket_inodes(10) == set()


@pytest.mark.parametrize(("url", "port"), [
    ("http://127.0.0.1:8000/metrics", 8000), ("http://[::1]:9000/metrics", 9000),
    ("http://localhost/metrics", 80), ("https://node/metrics", 443),
    ("http://host:99999/metrics", None),
])
def test_the_port_a_metrics_url_names(url: str, port: int | None) -> None:
    assert server_port(url) == port
