"""Durations as users write them: ``500ms``, ``30s``, ``5m``, ``2h``, ``7d``, ``1h30m``.

A bare number is rejected on purpose: ``interval = 1`` could mean seconds or minutes,
and a config that guesses wrong pages someone at night.

No duration is longer than ``MAX_DURATION`` (100 years): ``"999999999999999999999d"``
is a finite float, but it overflows every ``timedelta`` and scheduler it reaches, so it
is refused here, as a ValueError, and never becomes an ``OverflowError`` (or ``inf``)
at run time. Each config key narrows this further to its own documented range.
"""

from __future__ import annotations

import math
import re

MAX_DURATION = 100 * 365 * 86400.0
# Seconds per unit, except ms: dividing by 1000 keeps "9ms" exactly 9/1000 (9 * 0.001 is
# not), so that a value written at a range's edge in ms compares as written.
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_WHOLE = re.compile(r"^(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+$")


def parse_duration(text: str) -> float:
    """Return the duration in seconds; raise ValueError with a readable reason."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string with a unit like \"30s\", got {text!r}")
    compact = text.strip().replace(" ", "")
    if not compact or not _WHOLE.match(compact):
        raise ValueError(
            f"bad duration {_shown(text)}: use a number and a unit (ms, s, m, h, d, w), "
            'e.g. "30s"'
        )
    seconds = sum(float(num) / 1000 if unit == "ms" else float(num) * _UNITS[unit]
                  for num, unit in _PART.findall(compact))
    if not math.isfinite(seconds) or seconds > MAX_DURATION:  # float("9" * 400) is inf
        raise ValueError(f"bad duration {_shown(text)}: longer than 100 years")
    return seconds


def _shown(text: str, limit: int = 40) -> str:
    """``repr`` of the user's text, cut short: a 10,000-digit typo fits in one line."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def format_duration(seconds: float) -> str:
    """Shortest exact spelling, for messages and exported rules (``90`` -> ``1m30s``)."""
    if seconds < 1 and seconds > 0:
        return f"{round(seconds * 1000)}ms"
    total = round(seconds)
    if total == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            out.append(f"{count}{unit}")
    return "".join(out)
