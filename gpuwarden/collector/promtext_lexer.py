"""The line grammar of the Prometheus text format, for ``promtext.parse``: the regexes
that recognise a sample, ``# HELP``/``# TYPE`` or other line, label-set parsing, and the
explanation of a rejected line.

``promtext.py`` assembles a payload's lines into an :class:`~promtext.Exposition` (time
budget, ``only=`` family skipping, error counting); this module only knows one line at a
time. The line regexes come in two forms, one per format. The Prometheus text format's
(``LINE_RE``, ``SLOW_RE``) is as strict as Prometheus' own parser
(``model/textparse/promparse.go``, ``promlex.l``) about the end of a sample line: a
value, optionally a timestamp of integer milliseconds, and nothing after but blanks.
OpenMetrics' (``LINE_OM_RE``, ``SLOW_OM_RE``) also allows an exemplar
(`` # {trace_id="x"} 0.5``) and float seconds. ``metric_types`` says which ``# TYPE``
words each format knows. The regexes run on text from the network, so each is linear
in its input (see the comment above them); ``bench/bench_parser.py`` and
``tests/faults/test_hostile_payloads.py`` hold them to it.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = [
    "INVALID_IN_RUN_RE",
    "LINE_OM_RE",
    "LINE_RE",
    "MAX_LINE_CHARS",
    "MEMO_SAMPLE_RE",
    "META_RE",
    "METRIC_NAME_RE",
    "SECTION_RE",
    "SLOW_OM_RE",
    "SLOW_RE",
    "VALUES_RE",
    "diagnose",
    "metric_types",
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
_MAX_INT64 = 2**63 - 1

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
# The spellings both Go's strconv.ParseFloat (as Prometheus calls it: no ``_``, no hex)
# and Python's float() accept, so a value that is not a number fails the line regex
# instead of raising in the per-sample loop. Go takes no sign before NaN (``-nan``
# fails), Python does: the regex follows Go.
_NUMBER = r"(?:[0-9]++(?:\.[0-9]*+)?+|\.[0-9]++)(?:[eE][-+]?+[0-9]++)?+"
_VALUE = rf"(?:[-+]?+(?:{_NUMBER}|(?i:inf(?:inity)?+))|(?i:nan))"
# Prometheus text format: integer milliseconds, digits only (promlex.l's ``{D}+``; a
# sign, a fraction or an exponent make the line invalid). OpenMetrics: float seconds.
_TIMESTAMP = r"[0-9]++"
_TIMESTAMP_OM = rf"[-+]?+{_NUMBER}"
# After the value (and timestamp): the text format allows only blanks, OpenMetrics also
# a ``#`` and anything after it (an exemplar: `` # {trace_id="x"} 0.5``).
_TRAILER = r"[ \t]*+"
_TRAILER_OM = r"[ \t]*+(?:#[^\n]*+)?+"
# A ``# HELP``/``# TYPE`` line in any spelling (the name is validated in Python). After
# the name, one blank separates it from the text, which is kept verbatim from there:
# Prometheus compares a type word, blanks and all, with the types it knows.
_META_LINE = rf"{_WS}*+#[ \t]++(?:HELP|TYPE)(?:[ \t]++\S++(?:[ \t][^\n]*+)?+)?+{_WS}*+\n"
_EOF_LINE = rf"{_WS}*+# EOF{_WS}*+\n"


def _sample_line(timestamp: str, trailer: str) -> str:
    r"""The lenient sample line (leading blanks, blanks around ``{``/``=``/``,``, trailing
    blanks), without groups: ``(?:[ \t]*+\{`` and ``[ \t]++`` as alternatives, never
    ``[ \t]*`` followed by ``[ \t]+``."""
    return (rf"[ \t]*+{_METRIC_NAME}(?:[ \t]*+\{{{_LABELS}\}}[ \t]*+|[ \t]++){_VALUE}"
            rf"(?:[ \t]++{timestamp})?+{trailer}\n")

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
def _line_regex(timestamp: str, trailer: str) -> re.Pattern[str]:
    return re.compile(
        rf"^(?:[ \t]*+({_METRIC_NAME})"
        rf"(?:[ \t]*+\{{((?:{_FAST_LABELS}(?=\}})|{_LABELS}))\}}[ \t]*+|[ \t]++)"
        rf"({_VALUE})(?:[ \t]++({timestamp}))?+{trailer}\n"
        rf"|{_WS}*+#[ \t]++(HELP|TYPE)(?:[ \t]++(\S++)(?:[ \t]([^\n]*+))?+)?+{_WS}*+\n"
        rf"|((?:{_WS}*+\n|[^\s#}}][^\s}}]*+\n"
        rf"|(?!{_sample_line(timestamp, trailer)}|{_META_LINE}|{_EOF_LINE})[^\n]*+\n)++)"
        r"|([^\n]*+)\n)",
        re.MULTILINE,
    )


LINE_RE = _line_regex(_TIMESTAMP, _TRAILER)
LINE_OM_RE = _line_regex(_TIMESTAMP_OM, _TRAILER_OM)
# For ``promtext_memo``: a sample line in the one spelling whose value can be swapped
# without changing how ``LINE_RE`` reads the rest (no blanks but the one before the
# value, no timestamp, no comment), and a run of values, one per line.
MEMO_SAMPLE_RE = re.compile(rf"({_METRIC_NAME})(?:\{{({_FAST_LABELS})\}})? ({_VALUE})")
VALUES_RE = re.compile(rf"(?:{_VALUE}\n)*+")
# In a run (group 8): the lines that are neither blank nor a comment, i.e. invalid.
INVALID_IN_RUN_RE = re.compile(rf"^{_WS}*+[^\s#][^\n]*+\n", re.MULTILINE)
# Lenient single-line forms for the slow path (a last line without its newline).
_SLOW = rf"[ \t]*+({_METRIC_NAME})(?:[ \t]*+\{{({_LABELS})\}}[ \t]*+|[ \t]++)({_VALUE})"
SLOW_RE = re.compile(rf"{_SLOW}(?:[ \t]++({_TIMESTAMP}))?+{_TRAILER}")
SLOW_OM_RE = re.compile(rf"{_SLOW}(?:[ \t]++({_TIMESTAMP_OM}))?+[ \t]*+(?:#.*+)?+")
_LABELS_RE = re.compile(_LABELS)
_PAIR_RE = re.compile(rf'[ \t]*+({_LABEL_NAME})[ \t]*+=[ \t]*+"({_QUOTED_BODY})"')
META_RE = re.compile(r"#[ \t]++(HELP|TYPE)(?:[ \t]++(\S++)(?:[ \t](.*+))?+)?+")
METRIC_NAME_RE = re.compile(_METRIC_NAME)
_NAME_PREFIX_RE = re.compile(rf"[ \t]*+{_METRIC_NAME}")
_VALUE_RE = re.compile(_VALUE)
_TIMESTAMP_OM_RE = re.compile(_TIMESTAMP_OM)
_VALUE_ESCAPE_RE = re.compile(r"\\(.)")
_HELP_ESCAPE_RE = re.compile(r"\\([\\n])")
_HELP_ESCAPE_OM_RE = re.compile(r'\\([\\n"])')
# A ``# HELP``/``# TYPE`` line (group 1: the family name) or ``# EOF``, found by the
# literal "\n# " prefix, which sre searches for at memchr speed.
SECTION_RE = re.compile(rf"\n# (?:(?:HELP|TYPE) ({_METRIC_NAME})[ \n]|EOF\n)")
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}
# The ``# TYPE`` words each parser of Prometheus accepts (promparse.go, and
# openmetricsparse.go for OpenMetrics); any other word makes the line invalid.
_TEXT_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "untyped"})
_OM_TYPES = frozenset({"counter", "gauge", "histogram", "gaugehistogram", "summary", "info",
                       "stateset", "unknown"})


def metric_types(openmetrics: bool) -> frozenset[str]:
    """The ``# TYPE`` words valid in the format."""
    return _OM_TYPES if openmetrics else _TEXT_TYPES


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


def diagnose(line: str, *, openmetrics: bool = False) -> str:
    """Explain why a non-comment line was rejected (by the format's line regex).

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
    if not openmetrics and any(t.startswith("#") for t in tokens[1:]):
        return (f"'#' after the value (an exemplar or comment: OpenMetrics only, not in "
                f"the Prometheus text format): {snippet(s)}")
    if len(tokens) > 2:
        return f"unexpected text after value: {snippet(s)}"
    if len(tokens) == 2:
        if (not openmetrics and _VALUE_RE.fullmatch(tokens[0])
                and _TIMESTAMP_OM_RE.fullmatch(tokens[1])):
            return (f"timestamp {snippet(tokens[1])} is not integer milliseconds (the "
                    f"Prometheus text format's only spelling): {snippet(s)}")
        return f"invalid value or timestamp: {snippet(s)}"
    return f"{name}: invalid value {snippet(tokens[0])}"


def timestamp_seconds(ts: str, openmetrics: bool) -> float:
    """A timestamp in seconds (``ts`` already matched the format's timestamp regex).

    Text-format timestamps are integer milliseconds, which Prometheus reads as an int64:
    a larger one raises ``ValueError`` (the line is invalid there too, where a float
    would overflow here). ``int(ts) / 1000``, like prometheus_client, so every int64
    converts identically.
    """
    if openmetrics:
        return float(ts)
    digits = ts.lstrip("0")
    if len(digits) > 19 or (len(digits) == 19 and int(digits) > _MAX_INT64):
        raise ValueError(f"timestamp {snippet(ts)} out of range (int64 milliseconds)")
    return int(ts) / 1000


def unescape_help(text: str, *, openmetrics: bool) -> str:
    """A ``# HELP`` text with its escapes resolved (OpenMetrics also escapes ``"``)."""
    return (_HELP_ESCAPE_OM_RE if openmetrics else _HELP_ESCAPE_RE).sub(_unescape, text)
