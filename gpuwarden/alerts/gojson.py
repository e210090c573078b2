"""Go's spellings that Alertmanager's webhook bytes are made of, written in Python.

Alertmanager builds its webhook body with Go's ``encoding/json`` (``json.NewEncoder``)
and its ``groupKey`` with ``fmt``'s ``%q``; a receiver that compares bytes, or keys a
cache on ``groupKey``, sees those spellings. Each function here is one of them, as Go
1.19-1.21 writes it (the Go that Alertmanager 0.25 is built with; see the README's
"Alert delivery" section for what later Go versions write differently):

- :func:`json_string`: a JSON string as ``encoding/json`` escapes it by default
  (``SetEscapeHTML(true)``): ``<``, ``>``, ``&``, U+2028 and U+2029 as ``\\u003c`` ...,
  control characters as ``\\n``, ``\\r``, ``\\t`` or ``\\u00XX``, everything else raw UTF-8.
- :func:`go_json`: a value whose dicts are already in the order Go writes them (struct
  fields in declaration order; maps key-sorted, which the caller does).
- :func:`quote`: ``strconv.Quote``, what ``%q`` writes.
- :func:`quote_meta`: ``regexp.QuoteMeta``.
- :func:`rfc3339_nano`: ``time.Time``'s JSON form, RFC 3339 with the fraction's trailing
  zeros trimmed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

#: The bytes encoding/json writes with a short escape; other controls get ``\u00XX``.
#: (Go 1.22 added ``\b`` and ``\f`` to this list; 1.19-1.21 write ``\u0008``, ``\u000c``.)
_JSON_SHORT = {'"': '\\"', "\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}
_JSON_ESCAPED = re.compile('[\x00-\x1f"\\\\<>&\u2028\u2029\ud800-\udfff]')

#: strconv.Quote's one-letter escapes.
_QUOTE_SHORT = {"\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
                "\t": "\\t", "\v": "\\v", '"': '\\"', "\\": "\\\\"}

#: regexp.QuoteMeta escapes exactly these (Python's re.escape escapes more: - & ~ # space).
_META = re.compile(r"([\\.+*?()|\[\]{}^$])")

_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)$")


def _json_escape(match: re.Match[str]) -> str:
    ch = match.group()
    short = _JSON_SHORT.get(ch)
    if short is not None:
        return short
    if "\ud800" <= ch <= "\udfff":
        return "\\ufffd"  # not text (a lone surrogate): Go writes invalid UTF-8 so
    return f"\\u{ord(ch):04x}"


def json_string(text: str) -> str:
    """``text`` as a JSON string literal, byte for byte as Go's encoding/json writes it."""
    return '"' + _JSON_ESCAPED.sub(_json_escape, text) + '"'


def go_json(value: Any) -> str:
    """Compact JSON of ``value`` with dicts written in their own order (no sorting here:
    a Go struct's fields come in declaration order, a Go map's keys sorted, and which a
    dict stands for is the caller's knowledge)."""
    if isinstance(value, str):
        return json_string(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        return "{" + ",".join(json_string(str(k)) + ":" + go_json(v)
                              for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(go_json(v) for v in value) + "]"
    raise TypeError(f"no Go JSON spelling for {type(value).__name__}")


def quote(text: str) -> str:
    """``strconv.Quote(text)`` (Go's ``%q``): printable characters as they are, the rest
    escaped. Python's ``str.isprintable`` and Go's ``strconv.IsPrint`` share a definition
    (letters, marks, numbers, punctuation, symbols and the ASCII space); they differ only
    on characters one Unicode version has assigned and the other has not."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        short = _QUOTE_SHORT.get(ch)
        if short is not None:
            out.append(short)
        elif 0xD800 <= code <= 0xDFFF:
            out.append("\\ufffd")  # not text; Go would show the bytes, there are none here
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def quote_meta(text: str) -> str:
    """``regexp.QuoteMeta(text)``: each of ``\\.+*?()|[]{}^$`` preceded by a backslash."""
    return _META.sub(r"\\\1", text)


def rfc3339_nano(text: str) -> str:
    """An RFC 3339 time as Go's ``time.Time`` JSON writes it: the fraction of a second
    without trailing zeros, and no fraction at all when it is zero
    (``…05.100Z`` -> ``…05.1Z``, ``…05.000Z`` -> ``…05Z``). Text that is not RFC 3339
    comes back as it is."""
    found = _RFC3339.match(text)
    if found is None:
        return text
    whole, fraction, zone = found.groups()
    fraction = (fraction or "").rstrip("0")
    return whole + ("." + fraction if fraction else "") + zone
