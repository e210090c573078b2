"""The Prometheus text format (0.0.4) as prometheus_client's ``generate_latest`` prints it.

Values as Go prints floats (``promql/gofloat.py``), names with the runes the classic
format cannot spell turned into '_', label values and help texts escaped, and a family's
``# HELP``/``# TYPE`` lines with the client's munging of types and names. ``exposition.py`` and
``process_metrics.py`` write ``/metrics`` with these; the test in
tests/api/test_exposition_reference.py compares the result with prometheus_client's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

#: The family types prometheus_client's ``Metric`` accepts ("untyped" is "unknown").
_METRIC_TYPES = frozenset(("counter", "gauge", "summary", "histogram", "gaugehistogram",
                           "unknown", "info", "stateset"))
_LEGACY_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LEGACY_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_NOT_METRIC_RUNE = re.compile(r"[^a-zA-Z0-9_:]")
_NOT_LABEL_RUNE = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(name: str) -> str:
    """A metric name as the classic text format spells it: invalid runes become '_'."""
    if not name or _LEGACY_METRIC_NAME.fullmatch(name):
        return name
    first = name[0] if _LEGACY_METRIC_NAME.fullmatch(name[0]) else "_"
    return first + _NOT_METRIC_RUNE.sub("_", name[1:])


def _label_name(name: str) -> str:
    if not name or (_LEGACY_LABEL_NAME.fullmatch(name) and not name.startswith("__")):
        return name
    first = name[0] if _LEGACY_LABEL_NAME.fullmatch(name[0]) else "_"
    return first + _NOT_LABEL_RUNE.sub("_", name[1:])


def _label_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def line_prefix(name: str, labels: Iterable[tuple[str, str]]) -> str:
    """``name{a="x",b="y"} ``: a sample line up to its value (labels sorted, escaped)."""
    pairs = sorted(dict(labels).items())
    if not pairs:
        return _metric_name(name) + " "
    text = ",".join(f'{_label_name(k)}="{_label_value(v)}"' for k, v in pairs)
    return f"{_metric_name(name)}{{{text}}} "


def family_header(name: str, help_: str, kind: str) -> str:
    """The ``# HELP`` and ``# TYPE`` lines of a family (prometheus_client's munging:
    a counter's family is named with ``_total``, an info family is a gauge)."""
    kind = "unknown" if kind == "untyped" else kind
    if kind not in _METRIC_TYPES:
        raise ValueError("Invalid metric type: " + kind)
    if kind == "counter":
        name += "_total"
    elif kind == "info":
        name, kind = name + "_info", "gauge"
    elif kind == "stateset":
        kind = "gauge"
    elif kind == "gaugehistogram":
        kind = "histogram"
    elif kind == "unknown":
        kind = "untyped"
    name = _metric_name(name)
    help_ = help_.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {help_}\n# TYPE {name} {kind}\n"
