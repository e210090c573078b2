"""A private PostgreSQL cluster a test can stop, freeze and restart by PID.

The shared server at 127.0.0.1:5432 cannot be taken down by a test; this one can. It is
made with the installed PostgreSQL's ``initdb`` in a temporary directory (trust auth,
no fsync: nothing here needs durability against power loss) and run as a ``postgres``
subprocess on a free loopback port, with its Unix socket in that directory too.

Run as root (CI containers), ``initdb`` and ``postgres`` refuse to start, so both run as
the ``postgres`` OS user (``subprocess.Popen(user=..., group=...)``) in a directory it
owns; pytest's ``tmp_path`` cannot be used for that, being under a root-only ``0700``
directory.

Faults, as an operator or a broken host would cause them:

* :meth:`stop` — fast shutdown (SIGINT to the postmaster): connections are closed,
  new ones refused; :meth:`start` brings it back on the same port and data directory.
* :meth:`freeze` / :meth:`thaw` — SIGSTOP / SIGCONT to the postmaster and every one of
  its children (backends, checkpointer, WAL writer, ...): TCP stays open and the kernel
  keeps acknowledging, but nothing answers — a hung database, not a dead one.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

_PG_USER = "postgres"


def find_pg_bin() -> Path | None:
    """The ``bin`` directory of the newest installed PostgreSQL with initdb, or None."""
    found = []
    for candidate in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = Path(candidate).parent.parent.name
        if version.isdigit():
            found.append((int(version), Path(candidate).parent))
    if found:
        return max(found)[1]
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_pids(parent: int) -> list[int]:
    """Direct children of ``parent``, from /proc (the postmaster's are all direct)."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:  # exited while we looked
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == parent:
            out.append(int(text.split(" ", 1)[0]))
    return out


class PgCluster:
    """One private PostgreSQL cluster (see module doc); always :meth:`destroy` it."""

    def __init__(self, bin_dir: Path) -> None:
        self.bin_dir = bin_dir
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="gw-pg-"))
        self.data = self.root / "data"
        self.log_path = self.root / "postgres.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._frozen: list[int] = []
        self._user: dict[str, object] = {}
        if os.geteuid() == 0:
            pw = pwd.getpwnam(_PG_USER)
            os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._user = {"user": pw.pw_uid, "group": pw.pw_gid, "extra_groups": []}
        self._run([str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres",
                   "--auth=trust", "--no-sync", "-E", "UTF8", "--locale=C"])

    def _run(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              check=False, **self._user)  # type: ignore[call-overload]
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed ({done.returncode}): {done.stderr[-2000:]}")

    # ------------------------------------------------------------------ URLs
    def conninfo(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=3"

    def url(self, dbname: str = "postgres") -> str:
        """The SQLAlchemy URL a gpuwarden config takes."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(self.conninfo(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    # ------------------------------------------------------------ life cycle
    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self, timeout: float = 30.0) -> None:
        """Start the postmaster (same port, same data) and wait until it takes queries."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(  # type: ignore[call-overload]
                [str(self.bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.root), "-c", "listen_addresses=127.0.0.1",
                 "-c", "fsync=off", "-c", "synchronous_commit=off",
                 "-c", "full_page_writes=off", "-c", "max_connections=50"],
                stdout=log, stderr=subprocess.STDOUT, **self._user,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with psycopg.connect(self.conninfo()) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError("postgres did not start:\n" + self.log_tail()) from None
                time.sleep(0.1)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): sessions are ended, the postmaster exits."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.thaw()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGQUIT)  # immediate shutdown
            self.proc.wait(10)

    def freeze(self) -> list[int]:
        """SIGSTOP the postmaster first (no new backends), then each of its children."""
        pids = [self.pid]
        os.kill(self.pid, signal.SIGSTOP)
        pids += child_pids(self.pid)
        for pid in pids[1:]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self._frozen = pids
        return pids

    def thaw(self) -> None:
        """SIGCONT what :meth:`freeze` stopped, children first."""
        pids, self._frozen = self._frozen, []
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def destroy(self) -> None:
        """Stop the server (by its PID) and delete the cluster."""
        try:
            self.stop()
        finally:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""
