"""Which GPU compute processes belong to which inference server, read from /proc.

NVML lists the compute processes of each GPU by pid (``gpu_process_memory_used_bytes``,
see ``nvml.py``); a ``[[servers]]`` entry names a ``metrics_url``. What joins them is the
process tree: the server's HTTP port is a listening socket owned by some process, and
the processes that hold GPU memory are that process or its descendants.

The rules, in order:

1. The listener. The socket inodes in state LISTEN (``0A``) in ``/proc/net/tcp`` and
   ``/proc/net/tcp6`` whose local port is the server's port (any local address), and the
   pid whose ``/proc/PID/fd`` holds a link ``socket:[inode]`` to one of them. Only
   candidate pids are read: the GPU pids of the cycle and their ancestors (``ppid`` from
   ``/proc/PID/stat``, at most ``MAX_DEPTH`` levels, pid 1 excluded), and, for a server
   whose listener is not among them, the children of those ancestors
   (``/proc/PID/task/*/children``, at most ``MAX_CHILDREN`` in all). Never a scan of
   every process. A child forked after the socket was opened holds it too; every
   holder counts as a listener of the server.
2. Descendants. A GPU pid G belongs to server S when S's listener L is G or an ancestor
   of G; the nearest such listener wins. vLLM (API server -> EngineCore -> workers) and
   SGLang (HTTP server -> scheduler) are this case.
3. Siblings. A GPU pid that rule 2 gave to no server belongs to S when S got no process
   by rule 2 and L's parent P is an ancestor of G, P not pid 1; the nearest such P wins.
   TGI is this case: its launcher spawns the router, which listens, and the shards,
   which hold the GPU, side by side. The condition that S got nothing by rule 2 keeps a
   shell that started a vLLM server and, beside it, some other GPU job from handing that
   job to the vLLM server.

Limits (the README's memory budget says them too):

* Containers. NVML reports host pids. A gpuwarden in a container with its own PID
  namespace cannot see them in its /proc (nor the host's sockets in another network
  namespace), so nothing is attributed: set ``gpus`` on the server. The same holds for
  an inference server in a container watched from the host when its port is only
  published through a proxy process (the listener is then the proxy, not the server).
* Permissions. An unprivileged gpuwarden cannot read another user's ``/proc/PID/fd``:
  when a server could not be attributed and some candidate was unreadable, one
  rate-limited warning says to set ``gpus`` or to give the service the access
  (``CAP_SYS_PTRACE``, or running as the inference server's user).
* The port is matched on this host whatever the ``metrics_url`` host says; a server
  scraped on another machine may match an unrelated local listener of the same port.
* A kernel without ``/proc/PID/task/*/children`` (``CONFIG_PROC_CHILDREN``) has no
  sibling pass: rule 3 then finds nothing.

Reading /proc costs (tens to hundreds of readlink calls per candidate), so
:class:`ProcessAttribution` recomputes only when the set of GPU pids changes or every
``REFRESH_S`` seconds. A process that exits mid-read is skipped.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from gpuwarden.collector.base import ServerSpec
from gpuwarden.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

MAX_DEPTH = 16  # ancestors walked per GPU pid (a deeper tree is not an inference server's)
MAX_CHILDREN = 1024  # children of ancestors read by the sibling pass, in all
REFRESH_S = 60.0  # a cached attribution is recomputed at least this often
_LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp's st column
_GONE = (FileNotFoundError, ProcessLookupError)


@dataclass(frozen=True, slots=True)
class Listener:
    """A server and the TCP port its ``metrics_url`` names."""

    server: str
    port: int


def server_port(url: str) -> int | None:
    """The port of ``url`` (80/443 by scheme when it names none); None when unparseable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return port


def listeners_of(servers: Iterable[ServerSpec]) -> list[Listener]:
    out = []
    for server in servers:
        port = server_port(server.metrics_url)
        if port is not None:
            out.append(Listener(server.name, port))
    return out


def parse_listening(text: str, ports: Collection[int]) -> dict[int, set[int]]:
    """``{port: socket inodes}`` of the sockets listening on ``ports``, from the text of
    ``/proc/net/tcp`` or ``/proc/net/tcp6`` (``local_address`` is ``HEXADDR:HEXPORT``)."""
    out: dict[int, set[int]] = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10 or fields[3] != _LISTEN:
            continue
        try:
            port = int(fields[1].rpartition(":")[2], 16)
            inode = int(fields[9])
        except ValueError:
            continue
        if port in ports and inode:
            out.setdefault(port, set()).add(inode)
    return out


def parse_ppid(stat: str) -> int:
    """The parent pid in ``/proc/PID/stat``: ``pid (comm) state ppid ...``, where comm
    may itself hold spaces and parentheses (so the last ``)`` ends it)."""
    return int(stat[stat.rindex(")") + 1:].split()[1])


class ProcFs:
    """The few /proc reads the attribution makes; ``root`` points tests at a fake tree."""

    def __init__(self, root: str = "/proc") -> None:
        self.root = root

    def _read(self, path: str) -> str:
        with open(f"{self.root}/{path}", encoding="ascii", errors="replace") as f:
            return f.read()

    def listening(self, ports: Collection[int]) -> dict[int, set[int]]:
        out: dict[int, set[int]] = {}
        for table in ("net/tcp", "net/tcp6"):
            try:
                text = self._read(table)
            except OSError:  # no IPv6 on this host, or no /proc/net at all
                continue
            for port, inodes in parse_listening(text, ports).items():
                out.setdefault(port, set()).update(inodes)
        return out

    def ppid(self, pid: int) -> int | None:
        """The parent of ``pid``; None when it is gone or its stat is unreadable."""
        try:
            return parse_ppid(self._read(f"{pid}/stat"))
        except (OSError, ValueError, IndexError):
            return None

    def socket_inodes(self, pid: int) -> set[int]:
        """Inodes of the sockets ``pid`` holds open; PermissionError when its fds are
        another user's; empty when it is gone."""
        fd_dir = f"{self.root}/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except _GONE:
            return set()
        inodes: set[int] = set()
        for name in names:
            try:
                target = os.readlink(f"{fd_dir}/{name}")
            except OSError:  # closed since the listing, or the process exited
                continue
            if target.startswith("socket:[") and target.endswith("]"):
                try:
                    inodes.add(int(target[8:-1]))
                except ValueError:
                    continue
        return inodes

    def children(self, pid: int) -> list[int]:
        """Direct children of ``pid`` (every thread's); empty when the kernel has no
        ``children`` files or the process is gone."""
        out: list[int] = []
        try:
            tasks = os.listdir(f"{self.root}/{pid}/task")
        except OSError:
            return out
        for task in tasks:
            try:
                out.extend(int(c) for c in self._read(f"{pid}/task/{task}/children").split())
            except (OSError, ValueError):
                continue
        return out


@dataclass(frozen=True, slots=True)
class Attribution:
    """What one reading of /proc found."""

    owners: Mapping[int, str]  # GPU pid -> server name
    listeners: Mapping[str, int]  # server name -> pid that opened its listening socket
    unreadable: bool  # some candidate's fds could not be read (permissions)
    # Servers whose port is listening on this host but whose listener was not found.
    missing: frozenset[str] = frozenset()


def attribute(gpu_pids: Collection[int], listeners: Sequence[Listener], proc: ProcFs,
              max_depth: int = MAX_DEPTH) -> Attribution:
    """Apply the module docstring's rules to ``gpu_pids`` (one reading of /proc)."""
    ppids: dict[int, int | None] = {}

    def parent(pid: int) -> int | None:
        if pid not in ppids:
            ppids[pid] = proc.ppid(pid)
        return ppids[pid]

    chains: dict[int, list[int]] = {}
    for gpu_pid in gpu_pids:
        chain: list[int] = []
        pid: int | None = gpu_pid
        while pid is not None and pid > 1 and len(chain) < max_depth:
            chain.append(pid)
            pid = parent(pid)
        chains[gpu_pid] = chain
    inode_server: dict[int, str] = {}
    if any(chains.values()):  # no GPU pid visible here (a container): nothing to read
        listening = proc.listening({lst.port for lst in listeners})
        for lst in listeners:
            for inode in listening.get(lst.port, ()):
                inode_server.setdefault(inode, lst.server)
    if not inode_server:
        return Attribution({}, {}, unreadable=False)

    found: dict[str, set[int]] = {}
    wanted = set(inode_server.values())
    unreadable = False

    def scan(pids: Iterable[int], *, until_found: bool) -> None:
        nonlocal unreadable
        for pid in pids:
            if until_found and wanted <= found.keys():
                return
            try:
                inodes = proc.socket_inodes(pid)
            except PermissionError:
                unreadable = True
                continue
            for inode in inodes & inode_server.keys():
                found.setdefault(inode_server[inode], set()).add(pid)

    # Every candidate is read: a process forked after the socket was opened holds it
    # too (multiprocessing's fork), and each holder is the server's.
    candidates = list(dict.fromkeys(pid for chain in chains.values() for pid in chain))
    scan(candidates, until_found=False)
    if not wanted <= found.keys():  # the sibling pass: children of the ancestors
        seen = set(candidates)
        siblings: list[int] = []
        ancestors = dict.fromkeys(pid for chain in chains.values() for pid in chain[1:])
        for ancestor in ancestors:
            for child in proc.children(ancestor):
                if child not in seen and len(siblings) < MAX_CHILDREN:
                    seen.add(child)
                    siblings.append(child)
        scan(siblings, until_found=True)
    roots = {server: _root(pids, parent) for server, pids in found.items()}
    return Attribution(_owners(chains, found, roots, parent), roots, unreadable,
                       frozenset(wanted - found.keys()))


def _root(holders: set[int], parent: Callable[[int], int | None]) -> int:
    """The holder of a listening socket whose parent does not hold it (the process that
    opened it, where its children inherited it)."""
    tops = sorted(pid for pid in holders if parent(pid) not in holders)
    return tops[0] if tops else min(holders)


def _owners(chains: Mapping[int, list[int]], found: Mapping[str, set[int]],
            roots: Mapping[str, int], parent: Callable[[int], int | None]) -> dict[int, str]:
    """Rules 2 and 3 of the module docstring over the ancestry ``chains``."""
    by_pid: dict[int, str] = {}
    for server, pids in found.items():
        for pid in pids:
            by_pid.setdefault(pid, server)
    owners: dict[int, str] = {}
    for gpu_pid, chain in chains.items():
        for pid in chain:
            if pid in by_pid:
                owners[gpu_pid] = by_pid[pid]
                break
    claimed = set(owners.values())
    launchers: dict[str, int] = {}
    for server, root in roots.items():
        launcher = parent(root)
        if server not in claimed and launcher is not None and launcher > 1:
            launchers[server] = launcher
    for gpu_pid, chain in chains.items():
        if gpu_pid in owners:
            continue
        depth = {pid: i for i, pid in enumerate(chain)}
        near = [(depth[p], s) for s, p in launchers.items() if p in depth and p != gpu_pid]
        if near:
            owners[gpu_pid] = min(near)[1]
    return owners


class ProcessAttribution:
    """The attribution of the configured servers, cached: /proc is read again only when
    the set of GPU pids changes or ``refresh_s`` has passed."""

    def __init__(self, servers: Sequence[ServerSpec], *, proc: ProcFs | None = None,
                 refresh_s: float = REFRESH_S,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.listeners = listeners_of(servers)
        # Servers with configured gpus need no /proc; only the others are warned about.
        self._must_find = {s.name for s in servers if not s.gpus}
        self.proc = proc or ProcFs()
        self.refresh_s = refresh_s
        self._monotonic = monotonic
        self._key: frozenset[int] | None = None
        self._at = float("-inf")
        self._owners: Mapping[int, str] = {}
        self._log = RateLimitedLog(log, period=3600.0)
        self.reads_total = 0  # how often /proc was read (the cache's test, and bench)

    def owners(self, gpu_pids: Collection[int]) -> Mapping[int, str]:
        """``{GPU pid: server name}`` for the pids of this cycle."""
        key = frozenset(gpu_pids)
        now = self._monotonic()
        if key == self._key and now - self._at < self.refresh_s:
            return self._owners
        self._key, self._at = key, now
        self.reads_total += 1
        if not key or not self.listeners:
            self._owners = {}
            return self._owners
        found = attribute(key, self.listeners, self.proc)
        self._owners = found.owners
        lost = self._must_find & found.missing
        if found.unreadable and lost:
            self._log.warning(
                "permission", "cannot tell which GPU processes belong to server(s) %s: "
                "the /proc/PID/fd of some processes is not readable to gpuwarden; set "
                "`gpus = [...]` on the server in [[servers]], or give the service the "
                "access (CAP_SYS_PTRACE, or run it as the inference server's user)",
                ", ".join(sorted(lost)))
        return self._owners
