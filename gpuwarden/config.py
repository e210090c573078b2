"""The TOML config: one typed, frozen model, validated once at start.

Every problem is collected (not just the first) and reported as one line naming the
key path (``servers[1].metrics_url``) and, where it can be found, the line, so that
``gpuwarden check-config`` tells an operator everything wrong in one go. Unknown keys
are errors: a typo like ``treshold`` must not silently fall back to a default.

What ``check-config`` accepts, ``run`` and a SIGHUP reload must accept too: every
number and duration has a range (the schemas below; the README lists them), numbers
are finite, and a rule's ``summary`` template is rendered once here with sample values
(``detectors.defaults.summary_problem``), so a value that would only fail deep inside a
scheduler, an allocation or an alert at 3 a.m. is a one-line config error instead.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpuwarden.address import DEFAULT_LISTEN, split_host_port
from gpuwarden.alerts.action import ActionConfig
from gpuwarden.detectors.rule import AGGREGATIONS, RULE_OPS, SEVERITIES, RuleConfig
from gpuwarden.durations import format_duration, parse_duration
from gpuwarden.errors import ConfigError
from gpuwarden.signals import resolve_rule_signal

GPU_SOURCES = ("auto", "nvml", "dcgm", "sim", "off")
SERVER_KINDS = ("vllm", "sglang", "tgi", "triton", "llamacpp")
ACTION_TYPES = ("webhook", "alertmanager", "pagerduty", "slack", "exec")
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str
    retention: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class GpuConfig:
    source: str = "auto"
    dcgm_url: str = "http://127.0.0.1:9400/metrics"
    sim_gpus: int = 4
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    name: str
    kind: str
    metrics_url: str
    api_url: str | None = None
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class QualityConfig:
    every: float = 60.0
    canaries: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    node: str
    storage: StorageConfig
    interval: float = 1.0
    listen: str = DEFAULT_LISTEN
    log_level: str = "info"
    api_token_env: str | None = None
    gpu: GpuConfig = field(default_factory=GpuConfig)
    servers: tuple[ServerConfig, ...] = ()
    quality: QualityConfig = field(default_factory=QualityConfig)
    rules: tuple[RuleConfig, ...] = ()
    actions: tuple[ActionConfig, ...] = ()
    source_path: str | None = None

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, port = split_host_port(self.listen)
        return host, port


# --- value parsers: each returns the typed value or raises ValueError(reason) ----------


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a string, got {_tname(value)}")
    return value


def _nonempty(value: Any) -> str:
    text = _str(value)
    if not text.strip():
        raise ValueError("must not be empty")
    return text


def _duration(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, str):
        raise ValueError(f"expected a duration string like \"30s\", got {_tname(value)} {value!r}")
    return parse_duration(value)


def _duration_in(low: float, high: float) -> Callable[[Any], float]:
    """A duration in ``[low, high]`` seconds (the key's documented range)."""

    def parse(value: Any) -> float:
        seconds = _duration(value)
        if not low <= seconds <= high:
            raise ValueError(f"must be between {format_duration(low)} and "
                             f"{format_duration(high)}, got {_shown(value)}")
        return seconds

    return parse


def _finite(value: Any) -> float:
    """A finite number: TOML reads ``inf``, ``nan`` and ``1e400`` (as inf) as floats."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {_tname(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer past 1.8e308
        raise ValueError(f"must be a finite number, got {_shown(value)}") from None
    if not math.isfinite(number):
        raise ValueError(f"must be a finite number, got {number}")
    return number


def _int_in(low: int, high: int) -> Callable[[Any], int]:
    """An integer in ``[low, high]``."""

    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {_tname(value)}")
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {_shown(value)}")
        return value

    return parse


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_tname(value)}")
    return value


def _str_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of strings")
    return tuple(value)


def _str_table(value: Any) -> tuple[tuple[str, str], ...]:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError("expected a table of string values")
    return tuple(sorted(value.items()))


_LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9a-zA-Z]+$")  # an HTTP token (RFC 9110)


def _label_table(value: Any) -> tuple[tuple[str, str], ...]:
    """Alert labels: Alertmanager answers 400 to a name outside [a-zA-Z_][a-zA-Z0-9_]*."""
    table = _str_table(value)
    for name, _ in table:
        if not _LABEL_NAME.match(name):
            raise ValueError(f"label name {_shown(name)} is not [a-zA-Z_][a-zA-Z0-9_]*")
    return table


def _header_table(value: Any) -> tuple[tuple[str, str], ...]:
    """HTTP headers: a line break in one would fail every delivery, not the config."""
    table = _str_table(value)
    for name, text in table:
        if not _HEADER_NAME.match(name):
            raise ValueError(f"header name {_shown(name)} is not a valid HTTP header name")
        if "\r" in text or "\n" in text or "\0" in text:
            raise ValueError(f"header {name!r}: the value has a line break or NUL")
    return table


def _choice(*allowed: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        text = _str(value)
        if text not in allowed:
            raise ValueError(f"must be one of {', '.join(allowed)}; got {text!r}")
        return text

    return parse


def _http_url(value: Any) -> str:
    text = _nonempty(value)
    if not re.match(r"^https?://[^/\s]+", text):
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    return text


def _listen(value: Any) -> str:
    text = _nonempty(value)
    split_host_port(text)
    return text


_SQLITE_URL = re.compile(r"sqlite(\+pysqlite)?://(/[^?]*)?(\?.*)?$")


def _storage_url(value: Any) -> str:
    text = _nonempty(value)
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


def _log_level(value: Any) -> str:
    return _choice("debug", "info", "warning", "error")(_str(value).lower())


def _shown(value: Any, limit: int = 40) -> str:
    """``repr`` of what the user wrote, cut short: a 4,000-digit typo fits in one line."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _tname(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


# --- section schemas: TOML key -> (dataclass field, parser) ------------------------------
# The ranges are the README's (Configuration reference); a change here belongs there.
# Network timeouts: at least 100 ms, at most 5 min; a longer wait only holds a worker.
_TIMEOUT = _duration_in(0.1, 5 * MINUTE)
# Rule and guard-rail spans: a week at most (a week of 1 s samples is what a window
# can read at reasonable cost; a cooldown longer than that is a disabled action).
_SPAN = _duration_in(0.0, 7 * DAY)

Schema = dict[str, tuple[str, Callable[[Any], Any]]]

TOP: Schema = {
    "node": ("node", _nonempty),
    "interval": ("interval", _duration_in(0.1, HOUR)),
    "listen": ("listen", _listen),
    "log_level": ("log_level", _log_level),
    "api_token_env": ("api_token_env", _nonempty),
}
STORAGE: Schema = {
    "url": ("url", _storage_url),
    "retention": ("retention", _duration_in(MINUTE, 3650 * DAY)),
}
GPU: Schema = {
    "source": ("source", _choice(*GPU_SOURCES)),
    "dcgm_url": ("dcgm_url", _http_url),
    "sim_gpus": ("sim_gpus", _int_in(1, 64)),
    "timeout": ("timeout", _TIMEOUT),
}
SERVER: Schema = {
    "name": ("name", _nonempty),
    "kind": ("kind", _choice(*SERVER_KINDS)),
    "metrics_url": ("metrics_url", _http_url),
    "api_url": ("api_url", _http_url),
    "timeout": ("timeout", _TIMEOUT),
}
QUALITY: Schema = {
    "every": ("every", _duration_in(1.0, DAY)),
    "canaries": ("canaries", _nonempty),
    "timeout": ("timeout", _TIMEOUT),
}
RULE: Schema = {
    "name": ("name", _nonempty),
    "signal": ("signal", _nonempty),
    "op": ("op", _choice(*RULE_OPS)),
    "threshold": ("threshold", _finite),
    "clear": ("clear", _finite),
    "for": ("for_", _SPAN),
    "keep_firing_for": ("keep_firing_for", _SPAN),
    "window": ("window", _duration_in(1.0, 7 * DAY)),
    "aggregation": ("aggregation", _choice(*AGGREGATIONS)),
    "severity": ("severity", _choice(*SEVERITIES)),
    "actions": ("actions", _str_list),
    "enabled": ("enabled", _bool),
    "detector": ("detector", _nonempty),
    "labels": ("labels", _label_table),
    "annotations": ("annotations", _str_table),
    "summary": ("summary", _nonempty),
    "limit": ("limit", _finite),
    "horizon": ("horizon", _duration_in(1.0, 7 * DAY)),
    "min_points": ("min_points", _int_in(2, 100_000)),
    "every": ("every", _duration_in(0.0, DAY)),
}
ACTION: Schema = {
    "name": ("name", _nonempty),
    "type": ("type", _choice(*ACTION_TYPES)),
    "url": ("url", _http_url),
    "secret_env": ("secret_env", _nonempty),
    "secret_file": ("secret_file", _nonempty),
    "bearer_token_env": ("bearer_token_env", _nonempty),
    "routing_key_env": ("routing_key_env", _nonempty),
    "headers": ("headers", _header_table),
    "command": ("command", _str_list),
    # An exec hook may restart an inference server, which can take minutes to load.
    "timeout": ("timeout", _duration_in(0.1, HOUR)),
    "cooldown": ("cooldown", _SPAN),
    "max_per_hour": ("max_per_hour", _int_in(0, 100_000)),
    "dry_run": ("dry_run", _bool),
    "verify": ("verify", _SPAN),
    "escalate_to": ("escalate_to", _nonempty),
    "group_wait": ("group_wait", _SPAN),
    "retry_for": ("retry_for", _SPAN),
}
SECTIONS = {"storage": STORAGE, "gpu": GPU, "quality": QUALITY}
ARRAYS = {"servers": SERVER, "rules": RULE, "actions": ACTION}


class _Problems:
    """Collects problems with the key path and, when found in the source, the line."""

    def __init__(self, text: str, path: str) -> None:
        self.lines = text.splitlines()
        self.path = path
        self.items: list[str] = []
        self.keys: set[str] = set()  # key paths with a problem (present, but invalid)

    def add(self, key_path: str, message: str) -> None:
        self.keys.add(key_path)
        line = self._line_of(key_path)
        where = f"{self.path}:{line}: " if line else f"{self.path}: "
        self.items.append(f"{where}{key_path}: {message}")

    def _line_of(self, key_path: str) -> int | None:
        """Best-effort line lookup: the n-th table header, then the key inside it."""
        m = re.match(r"^(?P<table>\w+)(?:\[(?P<idx>\d+)\])?\.(?P<key>[\w-]+)$", key_path)
        start, end = 0, len(self.lines)
        key = key_path
        if m:
            key = m["key"]
            header = re.compile(rf"^\s*\[\[?\s*{re.escape(m['table'])}\s*\]\]?\s*(#.*)?$")
            heads = [i for i, ln in enumerate(self.lines) if header.match(ln)]
            idx = int(m["idx"] or 0)
            if idx >= len(heads):
                return None
            start = heads[idx] + 1
            nxt = [
                i for i, ln in enumerate(self.lines[start:], start) if ln.lstrip().startswith("[")
            ]
            end = nxt[0] if nxt else len(self.lines)
        else:
            first_table = [i for i, ln in enumerate(self.lines) if ln.lstrip().startswith("[")]
            end = first_table[0] if first_table else len(self.lines)
        pattern = re.compile(rf"^\s*\"?{re.escape(key)}\"?\s*=")
        for i in range(start, end):
            if pattern.match(self.lines[i]):
                return i + 1
        return None


def _parse_table(
    raw: Any, schema: Schema, path: str, problems: _Problems, required: tuple[str, ...] = ()
) -> dict[str, Any]:
    if not isinstance(raw, dict):
        problems.add(path, f"expected a table, got {_tname(raw)}")
        return {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else key
        if key not in schema:
            problems.add(key_path, f"unknown key (allowed: {', '.join(sorted(schema))})")
            continue
        attr, parser = schema[key]
        try:
            out[attr] = parser(value)
        except ValueError as exc:
            problems.add(key_path, str(exc))
    for key in required:
        if key not in raw:
            problems.add(f"{path}.{key}" if path else key, "required key is missing")
    return out


def default_storage_url() -> str:
    """SQLite in systemd's state directory when run as a service, else the working dir."""
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    directory = Path(state) if state else Path.cwd()
    return f"sqlite:///{directory / 'gpuwarden.db'}"


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate a config file (or the defaults when ``path`` is None)."""
    if path is None:
        return parse_config("", "<defaults>")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read config file: {exc}"]) from None
    return parse_config(text, str(path))


def parse_config(text: str, path: str = "<config>") -> Config:
    problems = _Problems(text, path)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except ValueError as exc:  # an integer of more than 4,300 digits
        raise ConfigError([f"{path}: not valid TOML: {exc}"]) from None
    except RecursionError:  # arrays nested a thousand deep
        raise ConfigError([f"{path}: not valid TOML: nested too deeply"]) from None

    allowed = set(TOP) | set(SECTIONS) | set(ARRAYS)
    top_raw = {k: v for k, v in raw.items() if k in TOP}
    for key in raw:
        if key not in allowed:
            problems.add(key, f"unknown key (allowed: {', '.join(sorted(allowed))})")
    top = _parse_table(top_raw, TOP, "", problems)

    sections: dict[str, dict[str, Any]] = {
        name: _parse_table(raw.get(name, {}), schema, name, problems)
        for name, schema in SECTIONS.items()
    }
    arrays: dict[str, list[dict[str, Any]]] = {}
    required = {"servers": ("name", "kind", "metrics_url"), "rules": ("name",),
                "actions": ("name", "type")}
    for name, schema in ARRAYS.items():
        items = raw.get(name, [])
        if not isinstance(items, list):
            problems.add(name, f"expected an array of tables ([[{name}]]), got {_tname(items)}")
            items = []
        arrays[name] = [
            _parse_table(item, schema, f"{name}[{i}]", problems, required[name])
            for i, item in enumerate(items)
        ]

    _check_unique(arrays, problems)
    _check_actions(arrays["actions"], problems)
    _check_rules(arrays["rules"], {a.get("name") for a in arrays["actions"]}, problems)
    if problems.items:
        raise ConfigError(problems.items)

    rules = tuple(_build_rule(r) for r in arrays["rules"])
    _check_rule_semantics(rules, problems)
    if problems.items:
        raise ConfigError(problems.items)

    storage = sections["storage"]
    storage.setdefault("url", default_storage_url())
    return Config(
        node=top.get("node") or socket.gethostname(),
        interval=top.get("interval", 1.0),
        listen=top.get("listen", DEFAULT_LISTEN),
        log_level=top.get("log_level", "info"),
        api_token_env=top.get("api_token_env"),
        storage=StorageConfig(**storage),
        gpu=GpuConfig(**sections["gpu"]),
        servers=tuple(ServerConfig(**s) for s in arrays["servers"]),
        quality=QualityConfig(**sections["quality"]),
        rules=rules,
        actions=tuple(ActionConfig(**a) for a in arrays["actions"]),
        source_path=None if path == "<defaults>" else path,
    )


def _build_rule(values: Mapping[str, Any]) -> RuleConfig:
    values = dict(values)
    values.setdefault("signal", "")
    return RuleConfig(**values)


def _check_rule_semantics(rules: tuple[RuleConfig, ...], problems: _Problems) -> None:
    """What only the detectors know: detector names, the fields each one needs, and
    whether the summary template renders with the fields its alerts will have."""
    from gpuwarden.detectors.defaults import summary_problem, validate_rules

    for i, rule in enumerate(rules):
        found = validate_rules([rule])
        for problem in found:
            problems.add(f"rules[{i}]", problem.split(": ", 1)[-1])
        template = summary_problem(rule) if rule.enabled and not found else None
        if template is not None:
            problems.add(f"rules[{i}].summary", template)


def _check_unique(arrays: Mapping[str, list[dict[str, Any]]], problems: _Problems) -> None:
    for name, items in arrays.items():
        seen: set[str] = set()
        for i, item in enumerate(items):
            key = item.get("name")
            if key is None:
                continue
            if key in seen:
                problems.add(f"{name}[{i}].name", f"duplicate name {key!r}")
            seen.add(key)


def _check_actions(actions: list[dict[str, Any]], problems: _Problems) -> None:
    names = {a.get("name") for a in actions}
    for i, action in enumerate(actions):
        kind = action.get("type")
        if kind in ("webhook", "alertmanager", "slack") and "url" not in action:
            problems.add(f"actions[{i}].url", f"required for type {kind!r}")
        if kind == "pagerduty" and "routing_key_env" not in action:
            problems.add(f"actions[{i}].routing_key_env", "required for type 'pagerduty'")
        if kind == "exec" and not action.get("command"):
            problems.add(f"actions[{i}].command", "required for type 'exec' (an argv list)")
        target = action.get("escalate_to")
        if target is not None and target not in names:
            problems.add(f"actions[{i}].escalate_to", f"no action named {target!r}")


def _check_rules(rules: list[dict[str, Any]], actions: set[Any], problems: _Problems) -> None:
    for i, rule in enumerate(rules):
        if rule.get("enabled", True) is False and set(rule) <= {"name", "enabled"}:
            continue  # `enabled = false` alone switches a default rule off
        signal = rule.get("signal")
        if signal is None:
            problems.add(f"rules[{i}].signal", "required key is missing")
        elif resolve_rule_signal(signal) is None:
            problems.add(f"rules[{i}].signal", f"unknown signal {signal!r}")
        missing = "threshold" not in rule and f"rules[{i}].threshold" not in problems.keys
        if rule.get("detector", "threshold") == "threshold" and missing:
            problems.add(f"rules[{i}].threshold", "required key is missing")
        for name in rule.get("actions", ()):
            if name not in actions:
                problems.add(f"rules[{i}].actions", f"no action named {name!r} in [[actions]]")
