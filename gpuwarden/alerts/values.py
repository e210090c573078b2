"""An alert's value as a person reads it: ``KV cache usage 93 %``, ``ITL p95 187 ms``.

Alerts carry bare numbers in base units (``0.93``, ``0.187``), as the signal catalogue
stores them (``signals.py``: ratios in 0..1, seconds, bytes). For people -- the demo's
alert lines, a terminal -- the number gets its unit, scaled: a ratio as a percentage,
seconds as ms / s / min, bytes in binary multiples. The unit comes from the catalogue
(``Signal.unit``), never from a second table here.

What an alert's value *is* depends on its detector: a threshold rule's value is the
signal itself, a trend rule's the seconds until the limit is reached, a falling rule's
the fraction the ratio fell by, a composite's its own figure (each detector's module
says which). ``DETECTOR_VALUES`` says so once per detector name of
``detectors/registry.py``; a detector missing there reads as its bare number.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

from gpuwarden.detectors.rule import RuleConfig
from gpuwarden.durations import format_duration
from gpuwarden.signals import SIGNALS, resolve_rule_signal

#: Name parts written in capitals in a signal's label (``itl_p95_seconds`` -> ``ITL p95``).
ACRONYMS = {"kv": "KV", "gpu": "GPU", "itl": "ITL", "ttft": "TTFT", "e2e": "E2E",
            "xid": "XID", "ecc": "ECC", "sm": "SM", "vram": "VRAM", "usd": "USD"}
#: Name suffixes that only say the unit (or that a counter counts): dropped from labels.
UNIT_SUFFIXES = ("ratio", "seconds", "bytes", "total", "watts", "hertz", "celsius", "bits",
                 "usd", "tokens")
_BINARY = ("B", "KiB", "MiB", "GiB", "TiB", "PiB")
_DECIMAL = ("", "k", "M", "G", "T", "P")


def _number(value: float, digits: int = 3) -> str:
    """``digits`` significant digits, no exponent below a million (``6.99``, ``187``)."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    if magnitude >= 4:  # 12,345 and 1,234,567: whole, grouped
        return f"{round(value):,}"
    decimals = max(0, digits - 1 - magnitude)
    text = f"{round(value, decimals):.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _scaled(value: float, digits: int, base: float, names: tuple[str, ...], unit: str) -> str:
    step = 0
    while abs(value) >= base and step < len(names) - 1:
        value /= base
        step += 1
    return f"{_number(value, digits)} {names[step]}{unit}".rstrip()


def _percent(value: float, digits: int) -> str:
    return f"{_number(value * 100, digits - 1 if abs(value) < 0.1 else digits)} %"


def _seconds(value: float, digits: int) -> str:
    if abs(value) < 1:
        return f"{_number(value * 1000, digits)} ms"
    if abs(value) < 120:
        return f"{_number(value, digits)} s"
    if abs(value) < 7200:
        return f"{_number(value / 60, digits)} min"
    return f"{_number(value / 3600, digits)} h"


#: (value in base units, significant digits) -> text, by the catalogue's unit names
#: (plus ``per_second`` and ``sigma``, which detectors' values have).
FORMATTERS: dict[str, Callable[[float, int], str]] = {
    "": _number,
    "ratio": _percent,
    "seconds": _seconds,
    "bytes": lambda v, d: _scaled(v, d, 1024.0, _BINARY, ""),
    "bytes_per_second": lambda v, d: _scaled(v, d, 1000.0, ("B", "kB", "MB", "GB", "TB", "PB"),
                                             "/s"),
    "hertz": lambda v, d: _scaled(v, d, 1000.0, _DECIMAL, "Hz"),
    "watts": lambda v, d: _scaled(v, d, 1000.0, _DECIMAL, "W"),
    "celsius": lambda v, d: f"{_number(v, d)} °C",
    "bits": lambda v, d: f"{v:,.0f} bits",
    "tokens": lambda v, d: f"{v:,.0f} tokens",
    "usd": lambda v, d: f"${v:,.2f}",
    "per_second": lambda v, d: f"{_number(v, d)}/s",
    "sigma": lambda v, d: f"{_number(v, d)} sigma",
}


def format_quantity(value: float, unit: str, digits: int = 3) -> str:
    """``value`` (base units) with ``unit`` scaled for reading, to ``digits`` significant
    digits: ``0.93, "ratio"`` -> ``93 %``, ``0.187, "seconds"`` -> ``187 ms``,
    ``2.4, "seconds"`` -> ``2.4 s``. A unit with no formatter prints its name."""
    if not math.isfinite(value):
        return f"{value} {unit}".rstrip()
    formatter = FORMATTERS.get(unit)
    if formatter is None:
        return f"{_number(value, digits)} {unit}"
    return formatter(value, digits)


def signal_unit(name: str) -> str:
    """The catalogue's unit of a rule's signal (``itl_p95_seconds``: ``seconds``); ""
    for a name the catalogue does not know."""
    resolved = resolve_rule_signal(name)
    return SIGNALS[resolved[0]].unit if resolved is not None else ""


def signal_label(name: str) -> str:
    """A signal's name as words: ``kv_cache_usage_ratio`` -> ``KV cache usage``,
    ``itl_p95_seconds`` -> ``ITL p95``, ``gpu_xid_errors_total`` -> ``GPU XID errors``."""
    parts = name.split("_")
    while len(parts) > 1 and parts[-1] in UNIT_SUFFIXES:
        parts.pop()
    words = [ACRONYMS.get(part, part) for part in parts]
    words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words)


# --- what each detector's value is ------------------------------------------------------

#: (rule, value, significant digits) -> the value in words.
Phrase = Callable[[RuleConfig, float, int], str]


def _signal_value(rule: RuleConfig, value: float, digits: int) -> str:
    unit = signal_unit(rule.signal)
    return f"{signal_label(rule.signal)} {format_quantity(value, unit, digits)}"


def _spread(rule: RuleConfig, value: float, digits: int) -> str:
    unit = signal_unit(rule.signal)
    return f"{signal_label(rule.signal)} spread {format_quantity(value, unit, digits)}"


def _trend(rule: RuleConfig, value: float, digits: int) -> str:
    unit = signal_unit(rule.signal)
    limit = format_quantity(1.0 if rule.limit is None else rule.limit, unit)
    if value <= 0:
        return f"{signal_label(rule.signal)} at {limit}"
    # A forecast: whole seconds, as a duration is written ("38s", "3m27s").
    return f"{signal_label(rule.signal)} reaches {limit} in {format_duration(max(value, 1.0))}"


def _increase(rule: RuleConfig, value: float, digits: int) -> str:
    return (f"{format_quantity(value, signal_unit(rule.signal), digits)} new "
            f"{signal_label(rule.signal)} in {format_duration(rule.window)}")


def _fell_by(rule: RuleConfig, value: float, digits: int) -> str:
    return f"{signal_label(rule.signal)} fell by {format_quantity(value, 'ratio', digits)}"


class ValueMeaning(NamedTuple):
    """What a detector's alert value is: in words, the unit its rule's threshold is in
    ("signal": the rule signal's), and how the value compares with the threshold where
    that is not the rule's ``op`` (CUSUM fires when its statistic exceeds ``h``; its
    ``op`` says the direction of the drift)."""

    phrase: Phrase
    threshold_unit: str
    op: str | None = None


DETECTOR_VALUES: dict[str, ValueMeaning] = {
    "threshold": ValueMeaning(_signal_value, "signal"),
    "quantile": ValueMeaning(_signal_value, "signal"),
    "spread": ValueMeaning(_spread, "signal"),
    "trend": ValueMeaning(_trend, ""),  # no threshold: a limit and a horizon
    "increase": ValueMeaning(_increase, "signal"),
    "falling": ValueMeaning(_fell_by, "ratio"),
    "composite:PrefixCacheHitFalling": ValueMeaning(_fell_by, "ratio"),
    "composite:KVCacheBottleneck": ValueMeaning(
        lambda r, v, d: f"tokens/s at {format_quantity(v, 'ratio', d)} of the previous "
                        f"{format_duration(r.window)}", "ratio"),
    "composite:PreemptionsRising": ValueMeaning(
        lambda r, v, d: f"preemptions {format_quantity(v, 'per_second', d)}", "per_second"),
    "composite:QueueGrowing": ValueMeaning(
        lambda r, v, d: f"queue grew by {format_quantity(v, '', d)} requests", ""),
    "composite:KVCapacityTooSmall": ValueMeaning(
        lambda r, v, d: f"KV cache holds {format_quantity(v, 'ratio', d)} of the peak "
                        "requests", "ratio"),
    "cusum": ValueMeaning(lambda r, v, d: f"CUSUM {format_quantity(v, 'sigma', d)}", "sigma",
                          ">"),
    "ks": ValueMeaning(lambda r, v, d: f"KS p-value {format_quantity(v, '', d)}", ""),
}


def describe_value(rule: RuleConfig, value: float, *, compare: bool = True) -> str:
    """The alert value of ``rule`` in words with its unit, and (``compare``) the rule's
    threshold in the same unit: ``KV cache usage 93 % > 90 %``,
    ``KV cache usage reaches 100 % in 38s``, ``ITL p95 187 ms > 130 ms``."""
    meaning = DETECTOR_VALUES.get(rule.detector)
    if meaning is None:
        return f"{rule.name} value {_number(value, 4)}"
    digits = 3
    if not compare or rule.threshold is None or rule.detector == "trend":
        return meaning.phrase(rule, value, digits)
    unit = meaning.threshold_unit
    unit = signal_unit(rule.signal) if unit == "signal" else unit
    threshold = format_quantity(rule.threshold, unit)
    # Just past its threshold a value reads as the threshold itself at three digits
    # ("90 % (> 90 %)"): as many more as tell them apart, up to six.
    while (digits < 6 and value != rule.threshold
           and format_quantity(value, unit, digits) == threshold):
        digits += 1
    return f"{meaning.phrase(rule, value, digits)} ({meaning.op or rule.op} {threshold})"
