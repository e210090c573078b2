"""One daemon per store and node: an exclusive lock taken before anything is written.

Why: two daemons writing the same node's samples into one store corrupt it. The second
one replays the first one's head log into its own head and writes it again as chunks on
exit (duplicate timestamps), and both cut and delete each other's head-log rows. So
``Daemon.start`` takes this lock before it collects or writes anything, and a second
instance stops there, naming the running one.

* A SQLite file: ``flock(LOCK_EX | LOCK_NB)`` on ``<database>.lock`` next to it (the
  database's real path, so a symlink or a relative path names the same lock), held
  open for the process's life. The holder writes its PID into it for the second one
  to name. The kernel drops the lock when the holder dies, however it dies (SIGKILL
  included), so a crashed daemon never leaves a stale lock behind. The file itself is
  left in place on release: deleting it would let a third process lock a new file
  while a second still holds the old, deleted one. Standard library only: the SQLite
  path runs before the first stored sample, and importing SQLAlchemy costs most of
  that time budget.
* PostgreSQL: a session-level advisory lock, ``pg_try_advisory_lock(key)`` with a
  stable 64-bit key derived from the node name, held on a connection of its own for the
  process's life. A server restart ends the session and with it the lock;
  :meth:`InstanceLock.ensure` takes it again (call it off the collection loop: it may
  wait up to the connect timeout). The connection's ``application_name`` carries the
  holder's PID and host, which the second instance reads from ``pg_stat_activity``.
* In-memory SQLite: nothing to share, no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import time
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from gpuwarden.errors import InstanceLocked, StoreError

#: Seconds the lock's own PostgreSQL connection may take to connect.
PG_CONNECT_TIMEOUT_S = 5
#: How often :meth:`InstanceLock.ensure` checks the PostgreSQL lock's session.
ENSURE_EVERY_S = 5.0
#: PostgreSQL truncates application_name to NAMEDATALEN - 1 bytes.
_APP_NAME_MAX = 63
_PID_RE = re.compile(r"\bpid (\d+)")


def advisory_key(node: str) -> int:
    """The advisory-lock key of a node: a stable signed 64-bit hash of ``gpuwarden:node``.

    Stable across processes and versions (unlike ``hash()``), so every daemon agrees on it.
    """
    digest = hashlib.sha256(f"gpuwarden:{node}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def sqlite_lock_path(url: str) -> str | None:
    """``<database>.lock`` for a SQLite file URL; None for in-memory or non-SQLite URLs.

    Reads the URL as SQLAlchemy does (``sqlite:///relative``, ``sqlite:////absolute``,
    a ``?query`` after the path, percent-encoding, ``file:`` URIs with ``uri=true``),
    without importing it.
    """
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.split("+", 1)[0] != "sqlite":
        return None
    # Everything after the (empty) host's slash is the database, up to the query.
    path_part, _, query = rest[1:].partition("?") if rest.startswith("/") else ("", "", "")
    database = unquote(path_part)
    if not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # SQLAlchemy passes the URL's query on to the URI
        uri = urlsplit(database)
        memory = "memory" in parse_qs(query).get("mode", []) + parse_qs(uri.query).get("mode", [])
        if memory or uri.path in ("", ":memory:"):
            return None
        database = unquote(uri.path)
    return os.path.realpath(os.path.expanduser(database)) + ".lock"


class InstanceLock:
    """A held instance lock (or none, for a store nobody else can open); see module doc."""

    def __init__(self, kind: str, *, path: str | None = None, fd: int | None = None,
                 conninfo: str | None = None, node: str = "", conn: Any = None) -> None:
        self.kind = kind  # "file" | "postgres" | "none"
        self.path = path
        self.node = node
        self._fd = fd
        self._conninfo = conninfo
        self._conn = conn
        self._checked = time.monotonic()  # when ensure() last looked

    @property
    def held(self) -> bool:
        """Whether this process still holds the lock (as far as it can tell without I/O)."""
        if self.kind == "file":
            return self._fd is not None
        if self.kind == "postgres":
            return self._conn is not None and not self._conn.closed
        return True

    def ensure(self, *, every: float = ENSURE_EVERY_S) -> None:
        """Take the lock again if its PostgreSQL session was lost (a server restart).

        Checks at most once per ``every`` seconds (one ``SELECT 1``), so it can be run
        after every store write. A no-op for a file lock, which only this process's
        death releases. Raises :class:`InstanceLocked` if another instance took the lock
        meanwhile (stop writing: the store is someone else's now), :class:`StoreError`
        if the server cannot be reached (try again later). May block as long as the
        database does (up to ``PG_CONNECT_TIMEOUT_S`` to reconnect): call it off the
        collection loop, e.g. on the store's writer thread.
        """
        if self.kind != "postgres" or self._conninfo is None:
            return
        now = time.monotonic()
        if now - self._checked < every:
            return
        self._checked = now
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.execute("SELECT 1")
                return
            except Exception:  # the session is gone, and the lock with it
                with contextlib.suppress(Exception):
                    self._conn.close()
        self._conn = None
        self._conn = _pg_take(self._conninfo, self.node)

    def release(self) -> None:
        """Give the lock up; idempotent. The process's death releases it as well."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)  # no stale PID for a reader who races the next holder
            os.close(fd)  # closing the last descriptor drops the flock
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                conn.close()  # ends the session, which drops the advisory lock

    def __enter__(self) -> InstanceLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __repr__(self) -> str:
        where = self.path or (f"node {self.node}" if self.node else "")
        return f"InstanceLock({self.kind}{', ' + where if where else ''})"


def acquire_instance_lock(url: str, node: str) -> InstanceLock:
    """Take the instance lock of the store at ``url`` for ``node``, without waiting.

    Raises :class:`InstanceLocked` when another process holds it (its message names
    that process's PID where known) and :class:`StoreError` when the lock cannot be
    taken at all (no such directory, an unreachable server). Writes nothing to the store.
    """
    scheme = url.partition("://")[0].split("+", 1)[0]
    if scheme == "sqlite":
        path = sqlite_lock_path(url)
        if path is None:
            return InstanceLock("none", node=node)
        return InstanceLock("file", path=path, fd=_flock(path), node=node)
    if scheme in ("postgresql", "postgres"):
        conninfo = _pg_conninfo(url)
        return InstanceLock("postgres", conninfo=conninfo, node=node,
                            conn=_pg_take(conninfo, node))
    return InstanceLock("none", node=node)  # open_store rejects the URL with its reason


# ----------------------------------------------------------------------------- SQLite file
def _flock(path: str) -> int:
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise StoreError(f"directory {parent} for the SQLite store does not exist")
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise StoreError(f"cannot open lock file {path}: {exc.strerror}") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = _read_holder(fd)
        os.close(fd)
        who = f"pid {holder}" if holder else "pid unknown"
        raise InstanceLocked(
            f"another gpuwarden ({who}) is running on this store "
            f"({path[: -len('.lock')]}, locked by {path})",
            pid=int(holder) if holder.isdigit() else None,
        ) from None
    except OSError as exc:
        os.close(fd)
        raise StoreError(f"cannot lock {path}: {exc.strerror}") from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def _read_holder(fd: int) -> str:
    """The PID the holder wrote; it writes just after locking, so allow it a moment."""
    for _ in range(10):
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        if text:
            return text.split()[0]
        time.sleep(0.02)
    return ""


# ------------------------------------------------------------------------------ PostgreSQL
def _pg_conninfo(url: str) -> str:
    """A libpq URI for psycopg from a SQLAlchemy URL (``postgresql+psycopg://...``)."""
    from sqlalchemy.engine import make_url  # the PostgreSQL path imports it anyway
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise StoreError(f"invalid storage URL {url!r}: {exc}") from exc
    return str(parsed.set(drivername="postgresql").render_as_string(hide_password=False))


def _app_name() -> str:
    return f"gpuwarden pid {os.getpid()} on {socket.gethostname()}"[:_APP_NAME_MAX]


def _pg_take(conninfo: str, node: str) -> Any:
    import psycopg

    key = advisory_key(node)
    try:
        # Keepalives: a server host that vanishes fails this idle connection (and frees
        # nothing on our side) instead of leaving it open for hours.
        conn = psycopg.connect(conninfo, autocommit=True, connect_timeout=PG_CONNECT_TIMEOUT_S,
                               application_name=_app_name(), keepalives=1,
                               keepalives_idle=10, keepalives_interval=5, keepalives_count=3)
    except psycopg.Error as exc:
        raise StoreError(f"cannot take the instance lock: {_first_line(exc)}") from exc
    try:
        row = conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()
        if row is not None and row[0]:
            return conn
        holder = _pg_holder(conn, key)
    except psycopg.Error as exc:
        conn.close()
        raise StoreError(f"cannot take the instance lock: {_first_line(exc)}") from exc
    conn.close()
    match = _PID_RE.search(holder or "")
    raise InstanceLocked(
        f"another gpuwarden ({holder or 'pid unknown'}) is running on this store "
        f"for node {node}",
        pid=int(match.group(1)) if match else None,
    )


def _pg_holder(conn: Any, key: int) -> str:
    """Who holds the advisory lock ``key``: its application_name, else its backend PID."""
    unsigned = key & 0xFFFF_FFFF_FFFF_FFFF
    row = conn.execute(
        "SELECT a.application_name, l.pid, host(a.client_addr)"
        " FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid"
        " WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1"
        " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND l.classid::int8 = %s AND l.objid::int8 = %s",
        (unsigned >> 32, unsigned & 0xFFFF_FFFF),
    ).fetchone()
    if row is None:
        return ""
    app, backend, client = row
    if app and _PID_RE.search(app):
        text = app[len("gpuwarden "):] if app.startswith("gpuwarden ") else app
        return f"{text}, from {client}" if client else text
    return f"database backend pid {backend}" + (f", from {client}" if client else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
