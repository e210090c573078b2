"""When the next scrape of ``/metrics`` is expected, so that its text is ready before it.

``/metrics`` is rendered on demand (``exposition.py``): cycles run every second and a
Prometheus scrapes every 15-60 s, so rendering every snapshot would be mostly waste. But
a render on demand runs on the HTTP thread while the next cycle may be running, and the
two share the GIL: at ~300 KB server payloads a render that takes 3 ms alone took up to
17-25 ms when it met a cycle (``python -m bench.bench_daemon --payload-kb 280``).

A scraper asks at a fixed period (Prometheus' ``scrape_interval``), so the cycle that
ends just before its next scrape renders its snapshot then, and the scrape gets the
bytes. Each scraper is told apart by its address and its period read from its last two
scrapes: two Prometheus replicas each keep their own. A scraper that is not yet
predictable (one scrape so far), stops, or comes off its period is served as before,
by a render on demand; a wrong forecast costs one render no scrape reads.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Scrapers remembered; past it the one that scraped least recently is forgotten.
MAX_SCRAPERS = 16
#: A gap shorter than this is a second request of one scrape (a retry, a person with
#: curl), not the scraper's period, which it does not replace.
MIN_PERIOD_S = 0.5


@dataclass(slots=True)
class _Scraper:
    last: float  # when it last scraped
    period: float | None  # the gap between its last two scrapes


class ScrapeForecast:
    """Each scraper's last scrape and period; whether one is due around a given time."""

    def __init__(self) -> None:
        self._scrapers: dict[str, _Scraper] = {}  # by address, least recent first

    def scraped(self, client: str, now: float) -> None:
        """``client`` scraped at ``now`` (seconds, any monotonic clock)."""
        seen = self._scrapers.pop(client, None)
        if seen is None:
            seen = _Scraper(now, None)
        else:
            gap = now - seen.last
            if gap >= MIN_PERIOD_S:
                seen.period = gap
            seen.last = now
        self._scrapers[client] = seen
        if len(self._scrapers) > MAX_SCRAPERS:
            del self._scrapers[next(iter(self._scrapers))]

    def due(self, now: float, within: float) -> bool:
        """Whether a scraper is expected at most ``within`` seconds after ``now``, or
        was at most ``within`` before it and has not come yet: what a snapshot made at
        ``now``, replaced ``within`` later, is the one such a scrape reads."""
        for scraper in self._scrapers.values():
            if scraper.period is not None:
                expected = scraper.last + scraper.period
                if now - within <= expected < now + within:
                    return True
        return False
