"""Numbers as Prometheus' text format spells them: Go's float formatting.

Used where gpuwarden writes a number as text that must read exactly as Prometheus (or
prometheus_client's ``floatToGoString``) writes it: every value of ``/metrics``
(``api/textformat.py``) and the ``le`` label of the histogram buckets it stores
(``collector/servers/base.py``), so both spell a bound the same way. Kept here rather
than imported from prometheus_client, whose package import (~1.8 MiB of RSS, its HTTP
server and exposition modules) the daemon would otherwise carry for this one function;
tests/api/test_exposition_reference.py checks it against ``floatToGoString``.
"""

from __future__ import annotations


def go_float(value: float) -> str:
    """A float as Go prints it in the text format (prometheus_client's floatToGoString)."""
    d = float(value)
    s = repr(d)
    if s[-1] in "fn":  # inf, -inf, nan
        return "+Inf" if s == "inf" else "-Inf" if s == "-inf" else "NaN"
    if d > 0 and len(s) > 7 and (dot := s.find(".")) > 6:
        # Go switches to exponents sooner than Python.
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return s
