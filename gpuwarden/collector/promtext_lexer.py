"""The line grammar of the Prometheus text format, for ``promtext.parse``: the regexes
that recognise a sample, ``# HELP``/``# TYPE`` or other line, label-set parsing, and the
explanation of a rejected line.

``promtext.py`` assembles a payload's lines into an :class:`~promtext.Exposition` (time
budget, ``only=`` family skipping, error counting); this module only knows one line at a
time. Its regexes run on text from the network, so each is linear in its input (see the
comment above them); ``bench/bench_parser.py`` and ``tests/faults/test_hostile_payloads.py``
hold them to it.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "INVALID_IN_RUN_RE",
    "LINE_RE",
    "MAX_LINE_CHARS",
    "MEMO_SAMPLE_RE",
    "META_RE",
    "METRIC_NAME_RE",
    "SECTION_RE",
    "SLOW_RE",
    "VALUES_RE",
    "diagnose",
    "parse_label_set",
    "parse_labels",
    "snippet",
    "timestamp_seconds",
    "unescape_help",
]

# A line longer than this is rejected by its length, before any regex runs over it.
# Prometheus has no line limit, but a 64 KiB sample line is garbage in practice (the
# longest line of a real vLLM scrape is ~300 characters); without a cap a single line
# could hold the parser past its time budget. It is also the most text handed to one
# ``findall`` call: the clock is checked between such chunks of whole lines, so the
# work between two checks is bounded (~1 ms of valid lines; see bench/bench_parser.py).
MAX_LINE_CHARS = 64 * 1024
_LABEL_CACHE_SIZE = 8192
# Longer label strings are parsed uncached: 8192 cached 64 KiB keys would pin 512 MiB.
_MAX_CACHED_LABELS_CHARS = 1024
_MAX_ERROR_SNIPPET = 80

# Every regex below runs on text from the network, so each is linear: repetitions are
# possessive (``*+``, ``++``, ``?+``), so sre never re-scans a run of characters, and no
# two adjacent repetitions can match the same character (``[ \t]*`` next to ``[ \t]+``
# made "name" + 20,000 tabs take seconds: each split of the run was tried).
_WS = r"[^\S\n]"  # whitespace within a line: what str.strip() removes, minus the newline
_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*+"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_:.\-]*+"
# Unrolled-loop form of "quoted string with backslash escapes".
_QUOTED_BODY = r'[^"\\\n]*+(?:\\.[^"\\\n]*+)*+'
# Fast path label set: pairs without blanks around ``=``, blanks only after commas (what
# every exporter writes: ``a="x",b="y"`` or dcgm-exporter's ``a="x", b="y"``), optional
# trailing comma. Measured ~2x faster in sre than allowing blanks everywhere.
_FAST_LABELS = (rf'(?:{_LABEL_NAME}="{_QUOTED_BODY}"'
                rf'(?:,[ \t]*+{_LABEL_NAME}="{_QUOTED_BODY}")*+,?+)?+')
# Lenient form / parse_labels: blanks allowed around every token.
_PAIR = rf'[ \t]*+{_LABEL_NAME}[ \t]*+=[ \t]*+"{_QUOTED_BODY}"[ \t]*+'
_LABELS = rf"(?:{_PAIR}(?:,{_PAIR})*+,?+)?+[ \t]*+"
# Exactly the ASCII spellings float() accepts (no ``_``, no hex): a value that is not a
# number fails the line regex instead of raising in the per-sample loop.
_NUMBER = r"(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)(?:[eE][-+]?+[0-9]++)?+"
_VALUE = rf"[-+]?+(?:{_NUMBER}|(?i:inf(?:inity)?+|nan))"
_TIMESTAMP = rf"[-+]?+{_NUMBER}"
# The lenient sample line (leading blanks, blanks around ``{``/``=``/``,``, trailing
# blanks, a ``#`` comment/exemplar after the value), without groups: ``(?:[ \t]*+\{``
# and ``[ \t]++`` as alternatives, never ``[ \t]*`` followed by ``[ \t]+``.
_SAMPLE_LINE = (rf"[ \t]*+{_METRIC_NAME}(?:[ \t]*+\{{{_LABELS}\}}[ \t]*+|[ \t]++){_VALUE}"
                rf"(?:[ \t]++{_TIMESTAMP})?+[ \t]*+(?:#[^\n]*+)?+\n")
# A ``# HELP``/``# TYPE`` line in any spelling (the name is validated in Python).
_META_LINE = rf"{_WS}*+#[ \t]++(?:HELP|TYPE)(?:[ \t]++\S++(?:[ \t]++[^\n]*+)?+)?+{_WS}*+\n"
_EOF_LINE = rf"{_WS}*+# EOF{_WS}*+\n"

# One match per line, or per run of lines that are neither samples nor HELP/TYPE, run
# with findall over a chunk of whole lines. Groups:
#  1-4  name, raw labels, value, timestamp: a sample line. The label set is tried in
#       the strict spelling first (the common case, ~2x faster in sre), then lenient;
#  5-7  kind, family, rest: a ``# HELP``/``# TYPE`` line in any spelling (the family as
#       any non-blank text: Python validates it);
#  8    a run of other lines: blank lines, comments, and lines that cannot be a sample
#       (each an invalid line unless blank or a comment; counted in Python). Blank lines
#       and lines without a blank or ``}`` (which no sample lacks) skip the lookahead;
#  9    anything else: only ``# EOF``.
# A run is matched by C code in one go, so a payload of a million junk or blank lines
# costs no more than one of as many samples. Every alternative ends with the line's
# newline, so every line of the chunk is in exactly one match, and the number of
# groups is kept low: findall builds one tuple of them per match.
LINE_RE = re.compile(
    rf"^(?:[ \t]*+({_METRIC_NAME})"
    rf"(?:[ \t]*+\{{((?:{_FAST_LABELS}(?=\}})|{_LABELS}))\}}[ \t]*+|[ \t]++)"
    rf"({_VALUE})(?:[ \t]++({_TIMESTAMP}))?+[ \t]*+(?:#[^\n]*+)?+\n"
    rf"|{_WS}*+#[ \t]++(HELP|TYPE)(?:[ \t]++(\S++)(?:[ \t]++([^\n]*+))?+)?+{_WS}*+\n"
    rf"|((?:{_WS}*+\n|[^\s#}}][^\s}}]*+\n"
    rf"|(?!{_SAMPLE_LINE}|{_META_LINE}|{_EOF_LINE})[^\n]*+\n)++)"
    r"|([^\n]*+)\n)",
    re.MULTILINE,
)
# For ``promtext_memo``: a sample line in the one spelling whose value can be swapped
# without changing how ``LINE_RE`` reads the rest (no blanks but the one before the
# value, no timestamp, no comment), and a run of values, one per line.
MEMO_SAMPLE_RE = re.compile(rf"({_METRIC_NAME})(?:\{{({_FAST_LABELS})\}})? ({_VALUE})")
VALUES_RE = re.compile(rf"(?:{_VALUE}\n)*+")
# In a run (group 8): the lines that are neither blank nor a comment, i.e. invalid.
INVALID_IN_RUN_RE = re.compile(rf"^{_WS}*+[^\s#][^\n]*+\n", re.MULTILINE)
# Lenient single-line form for the slow path (a last line without its newline).
SLOW_RE = re.compile(
    rf"[ \t]*+({_METRIC_NAME})(?:[ \t]*+\{{({_LABELS})\}}[ \t]*+|[ \t]++)({_VALUE})"
    rf"(?:[ \t]++({_TIMESTAMP}))?+[ \t]*+(?:#.*+)?+"
)
_LABELS_RE = re.compile(_LABELS)
_PAIR_RE = re.compile(rf'[ \t]*+({_LABEL_NAME})[ \t]*+=[ \t]*+"({_QUOTED_BODY})"')
META_RE = re.compile(r"#[ \t]++(HELP|TYPE)(?:[ \t]++(\S++)(?:[ \t]++(.*+))?+)?+")
METRIC_NAME_RE = re.compile(_METRIC_NAME)
_NAME_PREFIX_RE = re.compile(rf"[ \t]*+{_METRIC_NAME}")
_VALUE_ESCAPE_RE = re.compile(r"\\(.)")
_HELP_ESCAPE_RE = re.compile(r"\\([\\n])")
_HELP_ESCAPE_OM_RE = re.compile(r'\\([\\n"])')
# A ``# HELP``/``# TYPE`` line (group 1: the family name) or ``# EOF``, found by the
# literal "\n# " prefix, which sre searches for at memchr speed.
SECTION_RE = re.compile(rf"\n# (?:(?:HELP|TYPE) ({_METRIC_NAME})[ \n]|EOF\n)")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _unescape(match: re.Match[str]) -> str:
    """Map one escape; unknown escapes stay verbatim, as prometheus_client keeps them."""
    ch = match.group(1)
    return _ESCAPES.get(ch, "\\" + ch)


def parse_label_set(raw: str) -> dict[str, str]:
    """Parse a raw label string into a new dict, uncached (for callers with their own memo).

    Raises ``ValueError`` on a malformed label set or a duplicated label name.
    """
    if _LABELS_RE.fullmatch(raw) is None:
        raise ValueError(f"malformed label set: {raw[:_MAX_ERROR_SNIPPET]!r}")
    labels: dict[str, str] = {}
    for name, escaped in _PAIR_RE.findall(raw):
        if name in labels:
            raise ValueError(f"duplicate label name {name!r}")
        labels[name] = _VALUE_ESCAPE_RE.sub(_unescape, escaped) if "\\" in escaped else escaped
    return labels


# Parse once per distinct label string; the same strings come back every scrape.
_parse_labels_cached = lru_cache(maxsize=_LABEL_CACHE_SIZE)(parse_label_set)


def parse_labels(raw: str) -> dict[str, str]:
    """Parse a raw label string (``a="x",b="y\\"z"``) into a dict, unescaping values.

    Results are cached (bounded LRU) because label strings repeat on every scrape; the
    caller gets a fresh copy so that mutating it cannot corrupt the cache.
    Raises ``ValueError`` on a malformed label set or a duplicated label name.
    """
    if len(raw) > _MAX_CACHED_LABELS_CHARS:
        return parse_label_set(raw)
    return dict(_parse_labels_cached(raw))


def snippet(line: str) -> str:
    """The start of ``line``, quoted, for an error message (a rejected line can be 64 KiB)."""
    return repr(line[:_MAX_ERROR_SNIPPET] + ("..." if len(line) > _MAX_ERROR_SNIPPET else ""))


def diagnose(line: str) -> str:
    """Explain why a non-comment line was rejected.

    Runs for the first bad lines of a payload only (``promtext``'s message cap), on lines of at most
    ``MAX_LINE_CHARS``; every step is linear in the line's length.
    """
    s = line.strip()
    if s[:1] in ("<", "{", "[", '"'):
        return f"not a sample line (HTML/JSON?): {snippet(s)}"
    m = _NAME_PREFIX_RE.match(line)
    if m is None:
        return f"invalid metric name: {snippet(s)}"
    name = m.group().lstrip(" \t")
    rest = line[m.end():]
    labels = rest.lstrip(" \t")
    if labels.startswith("{"):
        lm = _LABELS_RE.match(labels, 1)
        end = lm.end() if lm is not None else 1
        if not labels.startswith("}", end):
            return f"malformed or unterminated label set: {snippet(s)}"
        rest = labels[end + 1:]
    elif rest[:1] not in (" ", "\t", ""):
        return f"invalid metric name: {snippet(s)}"
    tokens = rest.split(maxsplit=2)
    if not tokens:
        return f"missing value: {snippet(s)}"
    if len(tokens) > 2:
        return f"unexpected text after value: {snippet(s)}"
    if len(tokens) == 2:
        return f"invalid value or timestamp: {snippet(s)}"
    return f"{name}: invalid value {snippet(tokens[0])}"


def timestamp_seconds(ts: str, openmetrics: bool) -> float:
    """A timestamp in seconds (``ts`` already matched ``_TIMESTAMP``).

    Text-format timestamps are milliseconds: ``int(ts) / 1000`` first, like
    prometheus_client, so huge or negative integers convert identically; the int() is
    only tried on digits (and under int()'s 4300-digit limit), so that a float-shaped
    timestamp costs no exception per line.
    """
    if openmetrics:
        return float(ts)
    digits = ts[1:] if ts[0] in "+-" else ts
    if digits.isdigit() and len(digits) < 4300:  # int()'s default digit limit
        return int(ts) / 1000
    return float(ts) / 1000


def unescape_help(text: str, *, openmetrics: bool) -> str:
    """A ``# HELP`` text with its escapes resolved (OpenMetrics also escapes ``"``)."""
    return (_HELP_ESCAPE_OM_RE if openmetrics else _HELP_ESCAPE_RE).sub(_unescape, text)
