"""Keeping the garbage collector's full passes off the daemon's long-lived objects.

CPython's cyclic collector now and then makes a full pass over every object it tracks,
holding the GIL throughout. Most of a running daemon's objects live as long as it does:
its imports (~62,000 objects: SQLAlchemy, numpy, APScheduler...) and what its first
cycles build (the scrape memos and mapping plans of each server's layout, series
keys). Measured on a 2-core VM, 8 simulated GPUs + 4 servers of ~280 KB payloads:
a full pass every ~11 s took 37-54 ms, and a scrape of ``/metrics`` that came during
one waited it out. With those objects frozen (``gc.freeze``: moved to a generation no
collection looks at), a full pass took 1-8 ms, the collector ~2.8 ms of CPU a second
instead of ~13.5, and the slowest of ``bench_daemon``'s 307 fresh-snapshot GETs 20-23 ms
instead of 59 (README, "Storage design and figures").

A frozen object is still freed the usual way when its last reference goes; only one
that then lies in a reference cycle is not, as no collection looks at it. So
:class:`GcFreeze` thaws, collects everything and freezes again every ``every_s``
seconds (that full pass is the one ~50 ms pause an hour), and after a config reload,
whose old collectors and rules are garbage and whose new ones should be frozen.

Process-wide: only ``gpuwarden run``, whose process is the daemon's own, freezes (a
test running a daemon in the test runner's process must not freeze the runner's
objects).
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)

#: Cycles after start (or a reload) before the first freeze: the first cycle builds each
#: server layout's memos and plans, and delivery starts after it (``alerting.py``);
#: two more let what those build be in place before it is frozen.
WARM_UP_CYCLES = 3
#: Seconds between two thaw-collect-freeze passes.
REFREEZE_EVERY_S = 3600.0


class GcFreeze:
    """Freezes what is alive after the warm-up cycles, then again every ``every_s``.

    Called by one thread (the daemon's cycle, after each cycle) with the monotonic
    clock; :meth:`warm_up_again` may be called from another (a reload).
    """

    def __init__(self, *, warm_up_cycles: int = WARM_UP_CYCLES,
                 every_s: float = REFREEZE_EVERY_S) -> None:
        self.warm_up_cycles = warm_up_cycles
        self.every_s = every_s
        self._cycles_left = warm_up_cycles
        self._next = 0.0
        self.freezes = 0

    def after_cycle(self, now: float) -> bool:
        """Thaw, collect and freeze if one is due after this cycle; True if it was."""
        if self._cycles_left > 0:
            self._cycles_left -= 1
            if self._cycles_left > 0:
                return False
            self._next = 0.0  # the warm-up just ended: freeze now
        if now < self._next:
            return False
        self._next = now + self.every_s
        gc.unfreeze()  # what was frozen and is cyclic garbage since is collected below
        collected = gc.collect()
        gc.freeze()
        self.freezes += 1
        log.debug("froze %d long-lived objects (%d collected first)", gc.get_freeze_count(),
                  collected)
        return True

    def warm_up_again(self) -> None:
        """Freeze again ``warm_up_cycles`` cycles from now (after a reload)."""
        self._cycles_left = self.warm_up_cycles
