"""The schedule: the cycle every ``interval``, retention every few minutes (APScheduler).

The cycle job runs with ``max_instances=1`` and ``coalesce=True``: cycles never overlap
and a stalled machine does not replay a backlog of missed runs. A run skipped because
the previous one overran is reported to ``on_skipped`` (the daemon counts it in
``gpuwarden_cycles_skipped_total`` and logs it at most once a minute) instead of
APScheduler's warning per skipped run.

APScheduler 3 has no type stubs; :class:`Scheduler` is the part of its
``BackgroundScheduler`` the daemon uses.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Callable
from typing import Protocol

#: The id of the cycle's job (``JobEvent.job_id``).
CYCLE_JOB = "cycle"
RETENTION_EVERY_S = 300.0


class JobEvent(Protocol):
    """An APScheduler job event (a run skipped or missed)."""

    job_id: str


class Scheduler(Protocol):
    """What the daemon calls on APScheduler's ``BackgroundScheduler``."""

    def add_job(self, func: Callable[[], None], trigger: str, **options: object) -> object: ...

    def add_listener(self, callback: Callable[[JobEvent], None], mask: int) -> None: ...

    def start(self) -> None: ...

    def pause(self) -> None: ...

    def reschedule_job(self, job_id: str, *, trigger: str, seconds: float) -> object: ...

    def shutdown(self, wait: bool = True) -> None: ...


def start_scheduler(*, interval: float, cycle: Callable[[], None],
                    retention: Callable[[], None],
                    on_skipped: Callable[[JobEvent], None]) -> Scheduler:
    """Start the schedule; the first cycle is due one ``interval`` from now."""
    from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
    from apscheduler.schedulers.background import BackgroundScheduler

    scheduler: Scheduler = BackgroundScheduler(
        timezone="UTC",
        job_defaults={"coalesce": True, "max_instances": 1},
    )
    scheduler.add_job(cycle, "interval", seconds=interval, id=CYCLE_JOB,
                      next_run_time=_utcnow(interval),
                      misfire_grace_time=max(1, int(interval)))
    scheduler.add_job(retention, "interval", seconds=RETENTION_EVERY_S, id="retention",
                      misfire_grace_time=60)
    scheduler.add_listener(on_skipped, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
    # APScheduler warns on every skipped run; counted and rate-limited by the daemon instead.
    logging.getLogger("apscheduler.scheduler").addFilter(_drop_skip_warnings)
    scheduler.start()
    return scheduler


def reschedule_cycle(scheduler: Scheduler, interval: float) -> None:
    scheduler.reschedule_job(CYCLE_JOB, trigger="interval", seconds=interval)


def _drop_skip_warnings(record: logging.LogRecord) -> bool:
    """APScheduler's per-run "skipped"/"missed" warnings (counted by the daemon)."""
    msg = str(record.msg)
    return not ("skipped: maximum number of running instances" in msg
                or "was missed by" in msg)


def _utcnow(offset: float = 0.0) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=offset)
