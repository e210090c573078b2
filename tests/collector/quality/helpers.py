"""Shared bits of the quality tests: canaries, a settable clock, a driver loop."""

from __future__ import annotations

from gpuwarden.collector.quality.canary import Canary, QualityCollector, canary_id
from gpuwarden.model import Sample

PROMPTS = {
    "ZQX-PROMPT-capital-of-france": (
        "The capital of France is Paris. It is also the country's largest city and sits on "
        "the Seine river in the north of the country."),
    "ZQX-PROMPT-boiling-point": (
        "Water boils at 100 degrees Celsius at sea level. At higher altitudes the air "
        "pressure is lower, so water boils at a lower temperature."),
    "ZQX-PROMPT-reverse-list": (
        "To reverse a list in Python, call my_list.reverse() to reverse it in place, or use "
        "slicing with my_list[::-1] to get a reversed copy."),
    "ZQX-PROMPT-http-404": (
        "HTTP status code 404 means Not Found: the server could not find the requested "
        "resource. It usually indicates a broken link or a mistyped URL."),
}


def canaries(chat_every: int = 2) -> list[Canary]:
    return [Canary(canary_id(p, r), p, r, 64, chat=i % chat_every == 1)
            for i, (p, r) in enumerate(PROMPTS.items())]


class Clock:
    def __init__(self, t: float = 1_700_000_000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def drive(coll: QualityCollector, clock: Clock, seconds: float, step: float = 1.0,
          sink: list[Sample] | None = None) -> list[Sample]:
    """Run the daemon's cycle against a fake clock, letting each request finish."""
    out: list[Sample] = [] if sink is None else sink
    for _ in range(round(seconds / step)):
        clock.t += step
        out.extend(coll.collect())
        assert coll.wait_idle(10.0)
    return out
