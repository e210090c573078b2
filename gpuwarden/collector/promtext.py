"""A fast, tolerant parser for the Prometheus text exposition format (and OpenMetrics text).

Why not ``prometheus_client.parser``: it builds a ``Sample`` with a parsed label dict for
every line, walks label strings character by character in Python and runs at a few MB/s.
gpuwarden scrapes every inference server on the node every few seconds and only ever looks
at a few dozen sample names, so this parser

* runs one precompiled, anchored regex over the whole payload with ``re.findall`` (the
  per-line work happens in C); the regex fully validates the common line shape
  ``name{labels} value [timestamp]`` including quoted label values with ``}``, ``,``,
  ``=``, spaces and escapes, so no separate slow tokenizer is needed for those;
* keeps the raw label string (exactly as between the braces) as the series identity and
  parses labels only on demand (:meth:`Exposition.get`, :func:`parse_labels`, cached);
* skips, counts (``invalid_lines``) and records (the first 100, in ``errors``) bad lines
  instead of failing the whole scrape, because one broken line from a third-party
  server must not blind the node's monitoring; a payload with no valid sample at all
  but some invalid lines (an HTML error page, JSON) is an error.
* is linear on any input, because the payload comes from the network: every regex
  repetition is possessive and no two adjacent ones can match the same character (a
  name followed by 20,000 tabs used to cost 3 s of backtracking); a line longer than
  64 KiB is rejected by its length without any regex; runs of blank, comment and junk
  lines are consumed by one match in C. Measured (bench/bench_parser.py): every hostile
  1 MB input of the benchmark parses within ~2x of a valid 1 MB vLLM payload, and an
  input of many short lines within ~2x of a valid payload with as many lines (a line
  costs Python work whatever it holds: 1 MB of ``a 1`` samples takes ~8-15x as long as
  1 MB of vLLM-shaped lines, valid or not).
* holds its time budget: the clock is checked between chunks of at most 64 KiB; when
  it runs out, the samples parsed so far are returned (``truncated``) rather than lost.
* can skip whole families nobody reads (``only=``): a vLLM scrape is ~80 % histograms
  gpuwarden never maps (queue, prefill, decode time, token counts...). Lines are only
  skipped when the family's ``# HELP``/``# TYPE`` section holds nothing but comments and
  lines starting with that family's name, and no wanted name starts with it, so no
  wanted sample can be skipped whatever the payload's layout; the price is that a
  malformed line inside a skipped family is not counted in ``errors``.

Timestamps: Prometheus text carries integer milliseconds, OpenMetrics float seconds; both
are stored as float seconds. The payload is treated as OpenMetrics when it contains a
``# EOF`` or ``# UNIT`` line (or when ``openmetrics=True`` is passed, e.g. from the
response Content-Type). Text-format timestamps are divided by 1000 exactly as
``prometheus_client`` does (``int(ts) / 1000``).

Deliberately unsupported (rejected and recorded in ``errors``): Prometheus 3 quoted UTF-8
metric/label names (``{"my.metric", "a.b"="x"}``) and ``{__name__="..."}`` without a
leading name. Unquoted label names may contain ``-``, ``.`` and ``:`` (dcgm-exporter can
be configured to emit e.g. ``test-uuid``), which is more lenient than Prometheus.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from functools import lru_cache

from gpuwarden.errors import ExpositionParseError

__all__ = ["DEFAULT_MAX_BYTES", "Exposition", "parse", "parse_label_set", "parse_labels"]

DEFAULT_MAX_BYTES = 16 * 1024 * 1024

# A line longer than this is rejected by its length, before any regex runs over it.
# Prometheus has no line limit, but a 64 KiB sample line is garbage in practice (the
# longest line of a real vLLM scrape is ~300 characters); without a cap a single line
# could hold the parser past its time budget. It is also the most text handed to one
# ``findall`` call: the clock is checked between such chunks of whole lines, so the
# work between two checks is bounded (~1 ms of valid lines; see bench/bench_parser.py).
_MAX_LINE_CHARS = 64 * 1024
# ``Exposition.errors`` keeps this many messages; every rejected line is still counted
# in ``Exposition.invalid_lines``. Formatting a message per line of a junk payload
# would cost more than parsing the valid lines around it.
_MAX_ERRORS = 100
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
_LINE_RE = re.compile(
    rf"^(?:[ \t]*+({_METRIC_NAME})"
    rf"(?:[ \t]*+\{{((?:{_FAST_LABELS}(?=\}})|{_LABELS}))\}}[ \t]*+|[ \t]++)"
    rf"({_VALUE})(?:[ \t]++({_TIMESTAMP}))?+[ \t]*+(?:#[^\n]*+)?+\n"
    rf"|{_WS}*+#[ \t]++(HELP|TYPE)(?:[ \t]++(\S++)(?:[ \t]++([^\n]*+))?+)?+{_WS}*+\n"
    rf"|((?:{_WS}*+\n|[^\s#}}][^\s}}]*+\n"
    rf"|(?!{_SAMPLE_LINE}|{_META_LINE}|{_EOF_LINE})[^\n]*+\n)++)"
    r"|([^\n]*+)\n)",
    re.MULTILINE,
)
# In a run (group 8): the lines that are neither blank nor a comment, i.e. invalid.
_INVALID_IN_RUN_RE = re.compile(rf"^{_WS}*+[^\s#][^\n]*+\n", re.MULTILINE)
# Lenient single-line form for the slow path (a last line without its newline).
_SLOW_RE = re.compile(
    rf"[ \t]*+({_METRIC_NAME})(?:[ \t]*+\{{({_LABELS})\}}[ \t]*+|[ \t]++)({_VALUE})"
    rf"(?:[ \t]++({_TIMESTAMP}))?+[ \t]*+(?:#.*+)?+"
)
_LABELS_RE = re.compile(_LABELS)
_PAIR_RE = re.compile(rf'[ \t]*+({_LABEL_NAME})[ \t]*+=[ \t]*+"({_QUOTED_BODY})"')
_META_RE = re.compile(r"#[ \t]++(HELP|TYPE)(?:[ \t]++(\S++)(?:[ \t]++(.*+))?+)?+")
_METRIC_NAME_RE = re.compile(_METRIC_NAME)
_NAME_PREFIX_RE = re.compile(rf"[ \t]*+{_METRIC_NAME}")
_VALUE_ESCAPE_RE = re.compile(r"\\(.)")
_HELP_ESCAPE_RE = re.compile(r"\\([\\n])")
_HELP_ESCAPE_OM_RE = re.compile(r'\\([\\n"])')
_ESCAPES = {"\\": "\\", '"': '"', "n": "\n"}


def _unescape(match: re.Match[str]) -> str:
    """Map one escape; unknown escapes stay verbatim, as prometheus_client keeps them."""
    ch = match.group(1)
    return _ESCAPES.get(ch, "\\" + ch)


@dataclass(slots=True)
class Exposition:
    """One parsed payload.

    ``samples`` maps a sample name (``vllm:time_to_first_token_seconds_bucket``, not the
    family name) to ``(raw_labels, value, timestamp_seconds_or_None)`` in payload order;
    ``raw_labels`` is the text between the braces, verbatim, so it doubles as a cheap
    series key. ``types``/``helps`` are keyed by the family name of ``# TYPE``/``# HELP``.
    ``errors`` has one ``"line N: why"`` entry per rejected line, for the first
    ``_MAX_ERRORS`` (100) of them, plus one entry when the time budget cut the parse
    short; ``invalid_lines`` counts every rejected line; ``truncated`` is True when the
    time budget stopped the parse before the end (what was parsed until then is kept).
    """

    samples: dict[str, list[tuple[str, float, float | None]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    skipped_lines: int = 0  # sample lines of families skipped by ``only=``, not parsed
    invalid_lines: int = 0  # every rejected line, listed in ``errors`` or not
    truncated: bool = False  # the time budget stopped the parse; the rest is unparsed

    def reject(self, line_no: int, why: str) -> None:
        """Count one rejected line; keep its message while fewer than the cap are kept."""
        self.invalid_lines += 1
        if len(self.errors) < _MAX_ERRORS:
            self.errors.append(f"line {line_no}: {why}")

    def get(self, name: str) -> list[tuple[dict[str, str], float]]:
        """Parsed labels and value of every sample called ``name``; ``[]`` when absent.

        A sample whose label string the line regex accepted but that still is not a valid
        label set (only possible with a duplicated label name) is skipped: the fast path
        cannot see duplicates, and a mapper should not crash on one bad series.
        """
        out: list[tuple[dict[str, str], float]] = []
        for raw, value, _ts in self.samples.get(name, ()):
            try:
                labels = parse_labels(raw)
            except ValueError:
                continue
            out.append((labels, value))
        return out


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


def _snippet(line: str) -> str:
    return repr(line[:_MAX_ERROR_SNIPPET] + ("..." if len(line) > _MAX_ERROR_SNIPPET else ""))


def _diagnose(line: str) -> str:
    """Explain why a non-comment line was rejected.

    Runs for the first ``_MAX_ERRORS`` bad lines of a payload only, on lines of at most
    ``_MAX_LINE_CHARS``; every step is linear in the line's length.
    """
    s = line.strip()
    if s[:1] in ("<", "{", "[", '"'):
        return f"not a sample line (HTML/JSON?): {_snippet(s)}"
    m = _NAME_PREFIX_RE.match(line)
    if m is None:
        return f"invalid metric name: {_snippet(s)}"
    name = m.group().lstrip(" \t")
    rest = line[m.end():]
    labels = rest.lstrip(" \t")
    if labels.startswith("{"):
        lm = _LABELS_RE.match(labels, 1)
        end = lm.end() if lm is not None else 1
        if not labels.startswith("}", end):
            return f"malformed or unterminated label set: {_snippet(s)}"
        rest = labels[end + 1:]
    elif rest[:1] not in (" ", "\t", ""):
        return f"invalid metric name: {_snippet(s)}"
    tokens = rest.split(maxsplit=2)
    if not tokens:
        return f"missing value: {_snippet(s)}"
    if len(tokens) > 2:
        return f"unexpected text after value: {_snippet(s)}"
    if len(tokens) == 2:
        return f"invalid value or timestamp: {_snippet(s)}"
    return f"{name}: invalid value {_snippet(tokens[0])}"


def _timestamp(ts: str, openmetrics: bool) -> float:
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


def _add_meta(
    exp: Exposition, line_no: int, kind: str, name: str, rest: str, *, om: bool
) -> None:
    """Record one ``# HELP``/``# TYPE`` line (its name already validated)."""
    rest = rest.strip()
    if kind == "TYPE":
        if rest:
            exp.types[name] = rest
        else:
            exp.reject(line_no, f"# TYPE without a type: {name!r}")
    else:
        if "\\" in rest:
            rest = (_HELP_ESCAPE_OM_RE if om else _HELP_ESCAPE_RE).sub(_unescape, rest)
        exp.helps[name] = rest


def _slow_line(line: str, line_no: int, exp: Exposition, om: bool) -> bool:
    """Handle a line the line regex left to Python; return True on ``# EOF``.

    In a chunk that is only ``# EOF``; it also handles a last line without its newline
    (a comment), so it covers every spelling: comments with tabs or several blanks,
    samples with blanks around ``{``/``=``/``,``, and records why anything else was
    rejected. Lines longer than ``_MAX_LINE_CHARS`` are rejected by length alone.
    """
    if len(line) > _MAX_LINE_CHARS:
        exp.reject(line_no, f"line longer than {_MAX_LINE_CHARS} characters, not parsed: "
                            f"{_snippet(line)}")
        return False
    s = line.strip()
    if not s:
        return False
    if s[0] == "#":
        if s == "# EOF":
            return True
        m = _META_RE.fullmatch(s)
        if m is not None:
            kind, name, rest = m.groups()
            if name is None or _METRIC_NAME_RE.fullmatch(name) is None:
                exp.reject(line_no, f"invalid metric name in # {kind}: {_snippet(s)}")
            else:
                _add_meta(exp, line_no, kind, name, rest or "", om=om)
        return False
    sm = _SLOW_RE.fullmatch(line)
    if sm is None:
        exp.reject(line_no, _diagnose(line))
        return False
    name, raw, value, ts = sm.groups()
    try:
        v = float(value)
        t = None if ts is None else _timestamp(ts, om)
    except ValueError:  # not expected after the regex; a bad line all the same
        exp.reject(line_no, f"invalid value or timestamp: {_snippet(s)}")
        return False
    exp.samples.setdefault(name, []).append((raw or "", v, t))
    return False


def _decode(data: bytes | str, max_bytes: int) -> str:
    """Size-check before decoding (a huge payload must not cost a decode), then decode."""
    if isinstance(data, str):
        too_big = len(data) > max_bytes or (
            not data.isascii() and len(data) * 4 > max_bytes
            and len(data.encode("utf-8", "surrogatepass")) > max_bytes
        )
        if too_big:
            raise ExpositionParseError(f"payload larger than {max_bytes} bytes")
        text = data
    else:
        if len(data) > max_bytes:
            raise ExpositionParseError(f"payload of {len(data)} bytes exceeds {max_bytes}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ExpositionParseError(f"payload is not UTF-8: {exc}") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    return text


# A ``# HELP``/``# TYPE`` line (group 1: the family name) or ``# EOF``, found by the
# literal "\n# " prefix, which sre searches for at memchr speed.
_SECTION_RE = re.compile(rf"\n# (?:(?:HELP|TYPE) ({_METRIC_NAME})[ \n]|EOF\n)")


@lru_cache(maxsize=4096)
def _family_unread(only: frozenset[str], family: str) -> bool:
    """True when no wanted sample name starts with ``family``: its lines can go unparsed."""
    return not any(name.startswith(family) for name in only)


def _plan(text: str, only: frozenset[str]) -> list[tuple[int, int, int]]:
    """Split ``text`` (every line newline-terminated) into ``(start, end, skipped)`` ranges.

    ``skipped`` is 0 for a range to parse, else the number of sample lines in a family
    section that can go unparsed: one whose name no wanted name starts with, and whose
    every line is one of its ``# HELP``/``# TYPE`` lines or starts with the family name
    (checked by counting, so no line of another family can hide in it). Everything else,
    including text before the first section and from ``# EOF`` on, is parsed.
    """
    at_start = text.startswith("# ")
    starts: list[int] = []  # where each section's first line starts
    families: list[str | None] = []  # None: the ``# EOF`` line
    metas: list[int] = []  # its HELP/TYPE lines
    for m in _SECTION_RE.finditer("\n" + text if at_start else text):
        family = m.group(1)
        if family is not None and families and families[-1] == family:
            metas[-1] += 1  # HELP and TYPE of one family open one section
            continue
        starts.append(m.start() + (0 if at_start else 1))
        families.append(family)
        metas.append(1)
        if family is None:
            break
    plan: list[tuple[int, int, int]] = []
    pos = 0
    for i, (start, family) in enumerate(zip(starts, families, strict=True)):
        if family is None:
            break
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        if not _family_unread(only, family):
            continue
        own = text.count("\n" + family, start, end)
        if text.count("\n", start, end) != metas[i] + own:
            continue  # something else lives in this section: parse it all
        if start > pos:
            plan.append((pos, start, 0))
        plan.append((start, end, own))
        pos = end
    if pos < len(text):
        plan.append((pos, len(text), 0))
    return plan


def parse(
    data: bytes | str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_seconds: float = 1.0,
    openmetrics: bool | None = None,
    only: frozenset[str] | None = None,
) -> Exposition:
    """Parse one scrape; bad lines are skipped, counted and listed in ``Exposition.errors``.

    Raises :class:`ExpositionParseError` when the payload is larger than ``max_bytes``,
    not UTF-8, or is clearly not an exposition (no valid sample and at least one bad
    line). ``max_seconds`` is a time budget, checked between chunks of at most 64 KiB of
    whole lines (a longer line is rejected unparsed), so the work between two checks is
    bounded: when it runs out, parsing stops and what was parsed so far is returned,
    with ``truncated=True`` and an error saying where it stopped; only when nothing
    usable was parsed by then is it an ``ExpositionParseError``.
    ``openmetrics`` forces the timestamp unit (None: detect from ``# EOF``/``# UNIT``).
    ``only``: the sample names the caller reads; families none of them can belong to are
    skipped unparsed where that is provably safe (see the module docstring) and counted
    in ``skipped_lines``. Every wanted sample is parsed exactly as without it.

    A multi-line payload whose last line has no terminating newline was cut off in
    transit (the format requires the newline); that last line is rejected unless it is
    a comment, because a cut ``123.0`` reads as a plausible but wrong ``12``.
    Cost: linear in the payload's size, and per line no more than a valid line's (runs
    of blank, comment or junk lines are skipped by one regex call, the first 100 bad
    lines get a message, the rest only a count).
    """
    start = time.perf_counter()
    text = _decode(data, max_bytes)
    if openmetrics is None:
        openmetrics = (
            text.startswith(("# EOF", "# UNIT "))
            or "\n# EOF" in text or "\n# UNIT " in text
        )
    exp = Exposition()
    samples = exp.samples
    errors = exp.errors
    samples_get = samples.get
    findall = _LINE_RE.findall
    values: dict[str, float] = {}
    values_get = values.get

    tail: str | None = None
    if not text:
        return exp
    if not text.endswith("\n"):
        if "\n" in text:
            text, _, tail = text.rpartition("\n")
        text += "\n"  # every range below ends with its newline
    n = len(text)

    line_no = 0  # number of the last line before the current range or chunk
    eof = False
    for first, last, skipped in [(0, n, 0)] if only is None else _plan(text, only):
        if eof or exp.truncated:
            break
        if skipped:
            exp.skipped_lines += skipped
            line_no += text.count("\n", first, last)
            continue
        pos = first
        while pos < last and not eof:
            if pos > 0 and time.perf_counter() - start > max_seconds:
                exp.truncated = True
                exp.errors.append(
                    f"line {line_no + 1}: parsing stopped, time budget of {max_seconds}s "
                    f"spent; the remaining {n - pos} characters were not parsed")
                break
            end = _chunk_end(text, pos, last)
            if end <= pos:  # a line longer than _MAX_LINE_CHARS starts at pos
                end = text.find("\n", pos, last) + 1 or last
                line_no += 1
                exp.reject(line_no, f"line longer than {_MAX_LINE_CHARS} characters "
                                    f"({end - pos - 1}), not parsed: {_snippet(text[pos:end])}")
                pos = end
                continue
            chunk = text if (pos == 0 and end == n) else text[pos:end]
            extra = 0  # lines of runs beyond their first, so far in this chunk
            for i, (name, raw, value, ts, kind, fam, rest, run, other) in enumerate(
                findall(chunk), line_no + 1
            ):
                if not name:
                    if kind:
                        if _METRIC_NAME_RE.fullmatch(fam) is None:
                            exp.invalid_lines += 1  # no message past the cap: no f-string
                            if len(errors) < _MAX_ERRORS:
                                errors.append(f"line {i + extra}: invalid metric name in "
                                              f"# {kind}: {_snippet(f'# {kind} {fam} {rest}')}")
                        else:
                            _add_meta(exp, i + extra, kind, fam, rest, om=openmetrics)
                    elif run:
                        more = run.count("\n") - 1
                        if more or len(errors) < _MAX_ERRORS:
                            _run(exp, run, i + extra)
                            extra += more
                        elif run.lstrip()[:1] not in ("#", ""):  # one line, past the cap
                            exp.invalid_lines += 1
                    elif _slow_line(other, i + extra, exp, openmetrics):
                        eof = True
                        break
                    continue
                # The per-sample hot loop: float() of a str costs more than a dict hit,
                # and values repeat (bucket counts, 0.0). The regex admits only what
                # float() accepts, so no exception is expected here.
                v = values_get(value)
                if v is None:
                    try:
                        v = values[value] = float(value)
                    except ValueError:  # pragma: no cover - excluded by _VALUE
                        exp.reject(i + extra, f"{name}: invalid value {_snippet(value)}")
                        continue
                t = None if not ts else _timestamp(ts, openmetrics)
                lst = samples_get(name)
                if lst is None:
                    lst = samples[name] = []
                lst.append((raw, v, t))
            line_no += chunk.count("\n")
            pos = end

    if tail is not None and not eof and not exp.truncated:
        s = tail.strip()
        if s.startswith("#"):
            _slow_line(s, line_no + 1, exp, openmetrics)
        elif s:
            exp.reject(line_no + 1, f"no terminating newline, payload looks truncated: "
                                    f"{_snippet(s)}")

    if not samples and not exp.skipped_lines and (exp.invalid_lines or exp.truncated):
        if exp.truncated:
            raise ExpositionParseError(
                f"parsing took longer than {max_seconds}s before any valid sample "
                f"(stopped at line {line_no + 1})")
        raise ExpositionParseError(
            f"not a Prometheus exposition: no valid sample, {exp.invalid_lines} bad "
            f"line(s); first: {exp.errors[0]}"
        )
    return exp


def _chunk_end(text: str, pos: int, last: int) -> int:
    """End of the next chunk: the whole lines from ``pos`` within ``_MAX_LINE_CHARS``.

    Returns ``pos`` when the line starting at ``pos`` is longer than that (the caller
    rejects it without running a regex over it). The window is the line limit itself,
    so every line of a returned chunk is within the limit.
    """
    if last - pos <= _MAX_LINE_CHARS:
        return last
    return text.rfind("\n", pos, pos + _MAX_LINE_CHARS) + 1 or pos


def _run(exp: Exposition, run: str, first_line: int) -> None:
    """Count the invalid lines of a run of non-sample lines; explain the first ones.

    Blank and comment lines of the run cost nothing in Python: only the invalid lines
    are visited, and only until ``_MAX_ERRORS`` messages are kept; the rest are counted.
    """
    at, line = 0, first_line
    for m in _INVALID_IN_RUN_RE.finditer(run):
        if len(exp.errors) >= _MAX_ERRORS:
            exp.invalid_lines += len(_INVALID_IN_RUN_RE.findall(run, m.start()))
            return
        line += run.count("\n", at, m.start())
        at = m.start()
        exp.reject(line, _diagnose(m.group()[:-1]))
