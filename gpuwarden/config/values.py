"""TOML values -> typed values: each parser returns the value or raises ValueError(reason).

The config's schemas (``gpuwarden/config/__init__.py``) pair each key with one of these;
the reason becomes the problem line for that key. Ranges are arguments (``duration_in``,
``int_in``) so that each key's documented range is written once, in its schema.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

from gpuwarden.address import split_host_port
from gpuwarden.durations import format_duration, parse_duration


def string(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {type_name(value)}")
    return value


def nonempty(value: Any) -> str:
    text = string(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(
            f"expected a duration string like \"30s\", got {type_name(value)} {value!r}")
    return parse_duration(value)


def duration_in(low: float, high: float) -> Callable[[Any], float]:
    """A duration in ``[low, high]`` seconds (the key's documented range)."""

    def parse(value: Any) -> float:
        seconds = duration(value)
        if not low <= seconds <= high:
            raise ValueError(f"must be between {format_duration(low)} and "
                             f"{format_duration(high)}, got {shown(value)}")
        return seconds

    return parse


def finite(value: Any) -> float:
    """A finite number: TOML reads ``inf``, ``nan`` and ``1e400`` (as inf) as floats."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {type_name(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer past 1.8e308
        raise ValueError(f"must be a finite number, got {shown(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {number}")
    return number


def fraction(value: Any) -> float:
    """A number from 0 to 1 (a ratio, as every ratio signal is)."""
    number = finite(value)
    if not 0.0 <= number <= 1.0:
        raise ValueError(f"must be between 0 and 1, got {shown(value)}")
    return number


def int_in(low: int, high: int) -> Callable[[Any], int]:
    """An integer in ``[low, high]``."""

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {type_name(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {shown(value)}")
        return value

    return parse


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {type_name(value)}")
    return value


def str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def str_table(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("expected a table of string values")
    return tuple(sorted(value.items()))


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$")  # an HTTP token (RFC 9110)


def label_table(value: Any) -> tuple[tuple[str, str], ...]:
    """Alert labels: Alertmanager answers 400 to a name outside [a-zA-Z_][a-zA-Z0-9_]*."""
    table = str_table(value)
    for name, _ in table:
        if not _LABEL_NAME.match(name):
            raise ValueError(f"label name {shown(name)} is not [a-zA-Z_][a-zA-Z0-9_]*")
    return table


def header_table(value: Any) -> tuple[tuple[str, str], ...]:
    """HTTP headers: a line break in one would fail every delivery, not the config."""
    table = str_table(value)
    for name, text in table:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"header name {shown(name)} is not a valid HTTP header name")
        if "\r" in text or "\n" in text or "\0" in text:
            raise ValueError(f"header {name!r}: the value has a line break or NUL")
    return table


_GPU_NAME = re.compile(r"^(0|[1-9][0-9]*)(/(0|[1-9][0-9]*))?$")


def gpu_list(value: Any) -> tuple[str, ...]:
    """A server's GPUs as the ``gpu`` label spells them: ``[0, 1]`` or ``["0/5"]`` (a MIG
    instance: GPU index / GPU instance id); integers become their decimal string."""
    if not isinstance(value, list):
        raise ValueError(f"expected a list of GPU indexes, got {type_name(value)}")
    out: list[str] = []
    for item in value:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(f"expected GPU indexes (0, 1 or \"0/5\" for a MIG instance), "
                             f"got {type_name(item)} {shown(item)}")
        name = str(item)
        if not _GPU_NAME.match(name):
            raise ValueError(f"{shown(item)} is not a GPU index (0, 1, ...) or a MIG "
                             "instance (\"0/5\": GPU index / GPU instance id)")
        if name in out:
            raise ValueError(f"GPU {name!r} is listed twice")
        out.append(name)
    return tuple(out)


def price(value: Any) -> float:
    """A price: a finite number, 0 or more."""
    number = finite(value)
    if number < 0:
        raise ValueError(f"must not be negative, got {shown(value)}")
    return number


def gpu_hour_price(value: Any) -> float | tuple[tuple[str, float], ...]:
    """``[cost] gpu_hour_usd``: one price for every GPU of the node, or a table of prices
    keyed by GPU model name as NVML reports it (``"NVIDIA H100 80GB HBM3" = 3.9``)."""
    if isinstance(value, dict):
        table: list[tuple[str, float]] = []
        for model, amount in value.items():
            if not model.strip():
                raise ValueError("a GPU model name must not be empty")
            try:
                table.append((model, price(amount)))
            except ValueError as exc:
                raise ValueError(f"{model!r}: {exc}") from None
        return tuple(sorted(table))
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a price per GPU hour (a number) or a table of prices by "
                         f"GPU model, got {type_name(value)}")
    return price(value)


def choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = string(value)
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {text!r}")
        return text

    return parse


def http_url(value: Any) -> str:
    text = nonempty(value)
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text


def listen_address(value: Any) -> str:
    text = nonempty(value)
    split_host_port(text)
    return text


_SQLITE_URL = re.compile(r"sqlite(\+pysqlite)?://(/[^?]*)?(\?.*)?$")


def storage_url(value: Any) -> str:
    text = nonempty(value)
    if _SQLITE_URL.match(text):
        # Any path is a valid SQLite URL, and importing SQLAlchemy just to say so costs
        # ~0.25 s of the daemon's start-up, before the first sample can be stored.
        return text
    from sqlalchemy.engine import make_url  # deferred: see above
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except ArgumentError as exc:
        raise ValueError(f"not a database URL: {text!r} ({exc})") from None
    if url.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(
            f"unsupported database {url.get_backend_name()!r}: use sqlite:///PATH or "
            "postgresql+psycopg://USER@HOST/DB"
        )
    if url.get_backend_name() == "postgresql" and url.get_driver_name() not in ("psycopg",):
        raise ValueError("PostgreSQL URLs must use the psycopg driver: postgresql+psycopg://...")
    return text


def log_level(value: Any) -> str:
    return choice("debug", "info", "warning", "error")(string(value).lower())


def shown(value: Any, limit: int = 40) -> str:
    """``repr`` of what the user wrote, cut short: a 4,000-digit typo fits in one line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
