"""Which daemon of the fleet evaluates the fleet rules: the holder of an advisory lock.

Why a PostgreSQL session-level advisory lock: the fleet already shares the database,
the lock needs no table, no clock agreement and no lease to renew, and PostgreSQL
releases it the moment the holder's session ends: a leader killed with SIGKILL (its
socket closed by the kernel) frees it at once; one whose host or network dies frees it
when the server notices the dead connection (``tcp_keepalives_*`` on the server, or
``idle_session_timeout``; see the README's fleet section). Every daemon tries
``pg_try_advisory_lock`` once a cycle on a connection it keeps for that purpose; the
one that gets it leads until that connection breaks.

A leader that loses its connection must stop before another can take over. It checks
its connection before each evaluation (:meth:`Leadership.refresh`), and every write of
fleet alert state happens in a transaction that first checks, in ``pg_locks``, that
the lock is still held by this leader's session (:meth:`Leadership.fence`): once the
server has ended that session, and so could have granted the lock to another, the old
leader can write nothing more, whatever it believes.

The lock connection is never returned to the pool (a pooled connection would keep the
lock held for whoever borrowed it next): it is invalidated when leadership ends. Its
``application_name`` is ``gpuwarden-leader:<node>``, so that ``pg_stat_activity`` and
``gpuwarden fleet status`` name the leader. It must reach PostgreSQL directly, not
through a pooler in transaction mode, which would hand the session to others.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, text

from gpuwarden.errors import one_line

log = logging.getLogger(__name__)

#: The advisory lock's key: "gpwfleet" in ASCII, one 64-bit key for every gpuwarden fleet
#: of a database (two fleets sharing one database share one leader, which is harmless:
#: the leader evaluates every node it finds).
LOCK_KEY = int.from_bytes(b"gpwfleet", "big")
_CLASSID, _OBJID = LOCK_KEY >> 32, LOCK_KEY & 0xFFFFFFFF
APPLICATION_PREFIX = "gpuwarden-leader:"

_HOLDER = text(
    "SELECT a.application_name, l.pid FROM pg_locks l "
    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.classid = :c AND l.objid = :o "
    "AND l.objsubid = 1"
)


class NotLeader(Exception):
    """This daemon does not (or no longer) hold the fleet's leader lock."""


class Leadership:
    """Tries to become, and stays, the fleet's leader; see the module docstring."""

    def __init__(self, engine: Engine, node: str) -> None:
        self.engine = engine
        self.node = node
        self._conn: Connection | None = None
        self._pid: int | None = None
        self.terms_total = 0  # how many times this daemon became leader

    @property
    def is_leader(self) -> bool:
        return self._conn is not None

    def refresh(self) -> bool:
        """Check the held lock's connection, or try to take the lock; True when leading."""
        if self._conn is not None:
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except Exception as exc:  # any failure of the lock's session ends the term
                log.warning("fleet leader %s: lost the lock's connection (%s): stepping "
                            "down", self.node, one_line(exc))
                self._drop()
                return False
        conn: Connection | None = None
        try:
            conn = self.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            got = conn.execute(text("SELECT pg_try_advisory_lock(:k), pg_backend_pid()"),
                               {"k": LOCK_KEY}).one()
            if not got[0]:
                conn.close()
                return False
            conn.execute(text("SELECT set_config('application_name', :n, false)"),
                         {"n": APPLICATION_PREFIX + self.node})
        except Exception as exc:
            log.debug("fleet leader election: %s", one_line(exc))
            if conn is not None:
                conn.invalidate()
            return False
        self._conn, self._pid = conn, int(got[1])
        self.terms_total += 1
        log.info("fleet leader: %s now evaluates the fleet rules", self.node)
        return True

    def fence(self, conn: Connection) -> None:
        """Raise :class:`NotLeader` unless this leader's session still holds the lock;
        call inside the transaction whose writes must come from the leader only."""
        if self._pid is None:
            raise NotLeader(self.node)
        rows = conn.execute(_HOLDER, {"c": _CLASSID, "o": _OBJID}).all()
        if not any(pid == self._pid for _, pid in rows):
            raise NotLeader(self.node)

    def step_down(self) -> None:
        """Give the lock up (a clean stop): the next daemon to try leads at once."""
        if self._conn is not None:
            log.info("fleet leader %s: stepping down", self.node)
            try:  # released now, not when the server sees the socket close
                self._conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
            except Exception as exc:  # broken already: closing it releases the lock
                log.debug("releasing the leader lock: %s", one_line(exc))
        self._drop()

    def _drop(self) -> None:
        conn, self._conn, self._pid = self._conn, None, None
        if conn is not None:
            try:
                conn.invalidate()  # closes the session, and with it the lock
            except Exception as exc:  # already broken: nothing more to release
                log.debug("closing the leader connection: %s", one_line(exc))


def current_leader(conn: Connection) -> str | None:
    """The node whose session holds the leader lock now, or None."""
    for name, _pid in conn.execute(_HOLDER, {"c": _CLASSID, "o": _OBJID}).all():
        if isinstance(name, str) and name.startswith(APPLICATION_PREFIX):
            return name[len(APPLICATION_PREFIX):]
        return "?"  # held by a session that has not named itself yet
    return None


__all__ = ["LOCK_KEY", "Leadership", "NotLeader", "current_leader"]
