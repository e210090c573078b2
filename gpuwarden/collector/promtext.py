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
* skips and records bad lines instead of failing the whole scrape, because one broken
  line from a third-party server must not blind the node's monitoring; a payload with
  no valid sample at all but some invalid lines (an HTML error page, JSON) is an error.
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

# Characters of text handed to one ``findall`` call: the clock is checked between chunks,
# i.e. every ~3000 lines of a typical payload; small enough to honour ``max_seconds``,
# large enough that a normal 50-200 KB scrape is a single C call.
_CHUNK_CHARS = 256 * 1024
_LABEL_CACHE_SIZE = 8192
_MAX_ERROR_SNIPPET = 80

_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL_NAME = r"[a-zA-Z_][a-zA-Z0-9_:.\-]*"
# Unrolled-loop form of "quoted string with backslash escapes": linear, no backtracking blowup.
_QUOTED_BODY = r'[^"\\\n]*(?:\\.[^"\\\n]*)*'
# Fast path label set: pairs without blanks around ``=``, blanks only after commas (what
# every exporter writes: ``a="x",b="y"`` or dcgm-exporter's ``a="x", b="y"``), optional
# trailing comma. Measured ~2x faster in sre than allowing blanks everywhere.
# Possessive quantifiers: the body can never need to give characters back (measured ~8%).
_FAST_BODY = r'[^"\\\n]*+(?:\\.[^"\\\n]*+)*+'
_FAST_LABELS = rf'(?:{_LABEL_NAME}="{_FAST_BODY}"(?:,[ \t]*{_LABEL_NAME}="{_FAST_BODY}")*,?)?'
# Slow path / parse_labels: blanks allowed around every token.
_PAIR = rf'[ \t]*{_LABEL_NAME}[ \t]*=[ \t]*"{_QUOTED_BODY}"[ \t]*'
_LABELS = rf"(?:{_PAIR}(?:,{_PAIR})*,?)?[ \t]*"
_VALUE = r"[-+.0-9a-zA-Z]+"  # no ``_`` or non-ASCII digits, which float() would accept
_TIMESTAMP = r"[-+.0-9eE]+"

# One match per line, run with findall over the whole payload. Groups: name, raw labels,
# value, timestamp (a sample line); kind, family, rest (a ``# HELP``/``# TYPE`` line in
# the canonical single-blank spelling); other (anything else: blank lines, other
# comments, odd spellings for the slow path, garbage). ``(.*)`` guarantees exactly one
# match per line, so the match index is the line number. A ``# ...`` after the value is
# an OpenMetrics exemplar and is ignored.
_FAST_RE = re.compile(
    rf"^(?:({_METRIC_NAME})(?:\{{({_FAST_LABELS})\}}[ \t]*|[ \t]+)({_VALUE})"
    rf"(?:[ \t]+({_TIMESTAMP}))?(?:[ \t]+#.*)?"
    rf"|# (HELP|TYPE) ({_METRIC_NAME})(?: (.*))?"
    r"|(.*))$",
    re.MULTILINE,
)
# Lenient single-line form for the slow path (leading blanks, blanks around ``{``, ``=``).
_SLOW_RE = re.compile(
    rf"[ \t]*({_METRIC_NAME})[ \t]*(?:\{{({_LABELS})\}}[ \t]*|[ \t]+)({_VALUE})"
    rf"(?:[ \t]+({_TIMESTAMP}))?[ \t]*(?:#.*)?"
)
_LABELS_RE = re.compile(_LABELS)
_PAIR_RE = re.compile(rf'[ \t]*({_LABEL_NAME})[ \t]*=[ \t]*"({_QUOTED_BODY})"')
_META_RE = re.compile(r"#[ \t]+(HELP|TYPE)(?:[ \t]+(\S+)(?:[ \t]+(.*))?)?")
_METRIC_NAME_RE = re.compile(_METRIC_NAME)
_NAME_PREFIX_RE = re.compile(rf"[ \t]*{_METRIC_NAME}")
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
    ``errors`` has one ``"line N: why"`` entry per rejected line.
    """

    samples: dict[str, list[tuple[str, float, float | None]]] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    helps: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    skipped_lines: int = 0  # sample lines of families skipped by ``only=``, not parsed

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
    return dict(_parse_labels_cached(raw))


def _snippet(line: str) -> str:
    return repr(line[:_MAX_ERROR_SNIPPET] + ("..." if len(line) > _MAX_ERROR_SNIPPET else ""))


def _diagnose(line: str) -> str:
    """Explain why a non-comment line was rejected (only runs for bad lines: slow is fine)."""
    s = line.strip()
    if s[:1] in ("<", "{", "[", '"'):
        return f"not a sample line (HTML/JSON?): {_snippet(s)}"
    m = _NAME_PREFIX_RE.match(line)
    if m is None:
        return f"invalid metric name: {_snippet(s)}"
    rest = line[m.end():]
    if rest.startswith("{"):
        lm = _LABELS_RE.match(rest, 1)
        end = lm.end() if lm is not None else 1
        if not rest.startswith("}", end):
            return f"malformed or unterminated label set: {_snippet(s)}"
        rest = rest[end + 1:]
    tokens = rest.split()
    if not tokens:
        return f"missing value: {_snippet(s)}"
    if len(tokens) > 2:
        return f"unexpected text after value: {_snippet(s)}"
    if len(tokens) == 2:
        return f"invalid value or timestamp: {_snippet(s)}"
    return f"invalid value: {_snippet(s)}"


def _convert(value: str, ts: str, openmetrics: bool) -> tuple[float, float | None]:
    """Value and timestamp (seconds) of a sample; ValueError when either is not a number.

    Text-format timestamps are milliseconds: ``int(ts) / 1000`` first, like
    prometheus_client, so huge or negative integers convert identically.
    """
    v = float(value)
    if not ts:
        return v, None
    if openmetrics:
        return v, float(ts)
    try:
        return v, int(ts) / 1000
    except ValueError:
        return v, float(ts) / 1000


def _add_meta(
    exp: Exposition, line_no: int, kind: str, name: str, rest: str, *, om: bool
) -> None:
    """Record one ``# HELP``/``# TYPE`` line (its name already validated)."""
    rest = rest.strip()
    if kind == "TYPE":
        if rest:
            exp.types[name] = rest
        else:
            exp.errors.append(f"line {line_no}: # TYPE without a type: {name!r}")
    else:
        if "\\" in rest:
            rest = (_HELP_ESCAPE_OM_RE if om else _HELP_ESCAPE_RE).sub(_unescape, rest)
        exp.helps[name] = rest


def _slow_line(line: str, line_no: int, exp: Exposition, om: bool) -> bool:
    """Handle a line the fast regex did not classify; return True on ``# EOF``.

    Covers comments in unusual spellings (tabs, several blanks), sample lines with
    blanks around ``{``/``=``/``,`` or leading blanks, and otherwise records why the
    line was rejected. Runs only for such lines, so clarity beats speed here.
    """
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
                exp.errors.append(f"line {line_no}: invalid metric name in # {kind}: "
                                  f"{_snippet(s)}")
            else:
                _add_meta(exp, line_no, kind, name, rest or "", om=om)
        return False
    sm = _SLOW_RE.fullmatch(line)
    if sm is not None:
        name, raw, value, ts = sm.groups()
        try:
            v, t = _convert(value, ts or "", om)
        except ValueError:
            exp.errors.append(f"line {line_no}: invalid value or timestamp: {_snippet(s)}")
            return False
        exp.samples.setdefault(name, []).append((raw or "", v, t))
        return False
    exp.errors.append(f"line {line_no}: {_diagnose(line)}")
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
    """Parse one scrape; bad lines are skipped and listed in ``Exposition.errors``.

    Raises :class:`ExpositionParseError` when the payload is larger than ``max_bytes``,
    not UTF-8, takes longer than ``max_seconds`` (checked every chunk of a few thousand
    lines), or is clearly not an exposition (no valid sample and at least one bad line).
    ``openmetrics`` forces the timestamp unit (None: detect from ``# EOF``/``# UNIT``).
    ``only``: the sample names the caller reads; families none of them can belong to are
    skipped unparsed where that is provably safe (see the module docstring) and counted
    in ``skipped_lines``. Every wanted sample is parsed exactly as without it.

    A multi-line payload whose last line has no terminating newline was cut off in
    transit (the format requires the newline); that last line is rejected unless it is
    a comment, because a cut ``123.0`` reads as a plausible but wrong ``12``.
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
    findall = _FAST_RE.findall
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
        if eof:
            break
        if skipped:
            exp.skipped_lines += skipped
            line_no += text.count("\n", first, last)
            continue
        pos = first
        while pos < last and not eof:
            end = last if last - pos <= _CHUNK_CHARS else text.find("\n", pos + _CHUNK_CHARS,
                                                                    last) + 1
            if end <= 0:
                end = last
            chunk = text if (pos == 0 and end == n) else text[pos:end]
            # findall reports one match per line, plus an empty one after the chunk's
            # final newline, which falls through every branch below like a blank line.
            for i, (name, raw, value, ts, kind, fam, rest, other) in enumerate(
                findall(chunk), line_no + 1
            ):
                if name:
                    # Inlined _convert: this is the per-sample hot loop. float() of a str
                    # costs more than a dict hit, and values repeat (bucket counts, 0.0).
                    v = values_get(value)
                    if v is None:
                        try:
                            v = values[value] = float(value)
                        except ValueError:
                            errors.append(f"line {i}: {name}: invalid value {value!r}")
                            continue
                    if not ts:
                        t = None
                    else:
                        try:
                            if openmetrics:
                                t = float(ts)
                            else:
                                try:
                                    t = int(ts) / 1000
                                except ValueError:
                                    t = float(ts) / 1000
                        except ValueError:
                            errors.append(f"line {i}: {name}: invalid timestamp {ts!r}")
                            continue
                    lst = samples_get(name)
                    if lst is None:
                        lst = samples[name] = []
                    lst.append((raw, v, t))
                elif kind:
                    _add_meta(exp, i, kind, fam, rest, om=openmetrics)
                elif other and _slow_line(other, i, exp, openmetrics):
                    eof = True
                    break
            line_no += chunk.count("\n")
            pos = end
            if time.perf_counter() - start > max_seconds:
                raise ExpositionParseError(
                    f"parsing took longer than {max_seconds}s (stopped at line {line_no})"
                )

    if tail is not None and not eof:
        s = tail.strip()
        if s.startswith("#"):
            _slow_line(s, line_no + 1, exp, openmetrics)
        elif s:
            errors.append(f"line {line_no + 1}: no terminating newline, payload looks "
                          f"truncated: {_snippet(s)}")

    if errors and not samples and not exp.skipped_lines:
        raise ExpositionParseError(
            f"not a Prometheus exposition: no valid sample, {len(errors)} bad line(s); "
            f"first: {errors[0]}"
        )
    return exp
