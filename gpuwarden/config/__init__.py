"""The TOML config: one typed, frozen model, validated once at start.

Every problem is collected (not just the first) and reported as one line naming the
key path (``servers[1].metrics_url``) and, where it can be found, the line, so that
``gpuwarden check-config`` tells an operator everything wrong in one go. Unknown keys
are errors: a typo like ``treshold`` must not silently fall back to a default.

What ``check-config`` accepts, ``run`` and a SIGHUP reload must accept too: every
number and duration has a range (the schemas below, over the parsers of ``values.py``;
the README lists them), numbers are finite, and a rule's ``summary`` template is
rendered once at check time with sample values, so a value that would only fail deep
inside a scheduler, an allocation or an alert at 3 a.m. is a one-line config error
instead.

The config builds the specs the parts below it define (``RuleConfig``,
``ActionConfig``) and checks names against their registries (GPU sources, server kinds,
detectors, action types) without importing the implementations. Whether a rule can run
is the detectors' to say (``detectors/validate.py``); which keys an action type needs is
its receiver class's (``Receiver.required``, loaded only for the types a config uses).
"""

from __future__ import annotations

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
from gpuwarden.alerts.receivers.registry import RECEIVERS
from gpuwarden.collector.registry import GPU_SOURCES, SERVER_KINDS
from gpuwarden.config.values import (
    boolean,
    choice,
    duration_in,
    finite,
    fraction,
    gpu_hour_price,
    gpu_list,
    header_table,
    http_url,
    int_in,
    label_table,
    listen_address,
    log_level,
    nonempty,
    storage_url,
    str_list,
    str_table,
    type_name,
)
from gpuwarden.detectors.rule import AGGREGATIONS, RULE_OPS, SCOPES, SEVERITIES, RuleConfig
from gpuwarden.detectors.validate import (
    THRESHOLDED,
    detector_problem,
    rule_problems,
    signal_problem,
    summary_problem,
)
from gpuwarden.errors import ConfigError

MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
# ``auto`` picks among the GPU sources and ``off`` collects none
# (``gpuwarden.collector.gpu_collector``): choices, not sources.
GPU_SOURCE_CHOICES = ("auto", *GPU_SOURCES.names(), "off")


@dataclass(frozen=True, slots=True)
class StorageConfig:
    url: str
    retention: float = 7 * 86400.0


@dataclass(frozen=True, slots=True)
class GpuConfig:
    source: str = "auto"
    dcgm_url: str = "http://127.0.0.1:9400/metrics"
    sim_gpus: int = 4
    sim_load: float = 0.6
    timeout: float = 2.0


@dataclass(frozen=True, slots=True)
class ServerConfig:
    name: str
    kind: str
    metrics_url: str
    api_url: str | None = None
    timeout: float = 2.0
    # The server's GPUs as the ``gpu`` label spells them ("0", "0/5"); empty: found
    # through /proc (collector/attribution.py).
    gpus: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class QualityConfig:
    every: float = 60.0
    canaries: str | None = None
    timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class CostConfig:
    """``[cost]``: what a GPU hour costs, one price for the node's GPUs or one per GPU
    model name (as NVML reports it); None: no cost figures."""

    gpu_hour_usd: float | tuple[tuple[str, float], ...] | None = None


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
    cost: CostConfig = field(default_factory=CostConfig)
    rules: tuple[RuleConfig, ...] = ()
    actions: tuple[ActionConfig, ...] = ()
    source_path: str | None = None

    @property
    def listen_host_port(self) -> tuple[str, int]:
        host, port = split_host_port(self.listen)
        return host, port


# --- section schemas: TOML key -> (dataclass field, parser) ------------------------------
# The ranges are the README's (Configuration reference); a change here belongs there.
# Network timeouts: at least 100 ms, at most 5 min; a longer wait only holds a worker.
_TIMEOUT = duration_in(0.1, 5 * MINUTE)
# Rule and guard-rail spans: a week at most (a week of 1 s samples is what a window
# can read at reasonable cost; a cooldown longer than that is a disabled action).
_SPAN = duration_in(0.0, 7 * DAY)

Schema = dict[str, tuple[str, Callable[[Any], Any]]]

TOP: Schema = {
    "node": ("node", nonempty),
    "interval": ("interval", duration_in(0.1, HOUR)),
    "listen": ("listen", listen_address),
    "log_level": ("log_level", log_level),
    "api_token_env": ("api_token_env", nonempty),
}
STORAGE: Schema = {
    "url": ("url", storage_url),
    "retention": ("retention", duration_in(MINUTE, 3650 * DAY)),
}
GPU: Schema = {
    "source": ("source", choice(*GPU_SOURCE_CHOICES)),
    "dcgm_url": ("dcgm_url", http_url),
    "sim_gpus": ("sim_gpus", int_in(1, 64)),
    "sim_load": ("sim_load", fraction),
    "timeout": ("timeout", _TIMEOUT),
}
SERVER: Schema = {
    "name": ("name", nonempty),
    "kind": ("kind", choice(*SERVER_KINDS.names())),
    "metrics_url": ("metrics_url", http_url),
    "api_url": ("api_url", http_url),
    "timeout": ("timeout", _TIMEOUT),
    "gpus": ("gpus", gpu_list),
}
QUALITY: Schema = {
    "every": ("every", duration_in(1.0, DAY)),
    "canaries": ("canaries", nonempty),
    "timeout": ("timeout", _TIMEOUT),
}
COST: Schema = {
    "gpu_hour_usd": ("gpu_hour_usd", gpu_hour_price),
}
RULE: Schema = {
    "name": ("name", nonempty),
    "signal": ("signal", nonempty),
    "op": ("op", choice(*RULE_OPS)),
    "threshold": ("threshold", finite),
    "clear": ("clear", finite),
    "for": ("for_", _SPAN),
    "keep_firing_for": ("keep_firing_for", _SPAN),
    "window": ("window", duration_in(1.0, 7 * DAY)),
    "aggregation": ("aggregation", choice(*AGGREGATIONS)),
    "severity": ("severity", choice(*SEVERITIES)),
    "actions": ("actions", str_list),
    "enabled": ("enabled", boolean),
    "detector": ("detector", nonempty),
    "labels": ("labels", label_table),
    "annotations": ("annotations", str_table),
    "summary": ("summary", nonempty),
    "limit": ("limit", finite),
    "horizon": ("horizon", duration_in(1.0, 7 * DAY)),
    "min_points": ("min_points", int_in(2, 100_000)),
    "every": ("every", duration_in(0.0, DAY)),
    "scope": ("scope", choice(*SCOPES)),
}
ACTION: Schema = {
    "name": ("name", nonempty),
    "type": ("type", choice(*RECEIVERS.names())),
    "url": ("url", http_url),
    "secret_env": ("secret_env", nonempty),
    "secret_file": ("secret_file", nonempty),
    "bearer_token_env": ("bearer_token_env", nonempty),
    "routing_key_env": ("routing_key_env", nonempty),
    "headers": ("headers", header_table),
    "command": ("command", str_list),
    # An exec hook may restart an inference server, which can take minutes to load.
    "timeout": ("timeout", duration_in(0.1, HOUR)),
    "cooldown": ("cooldown", _SPAN),
    "max_per_hour": ("max_per_hour", int_in(0, 100_000)),
    "dry_run": ("dry_run", boolean),
    "verify": ("verify", _SPAN),
    "escalate_to": ("escalate_to", nonempty),
    "group_wait": ("group_wait", _SPAN),
    "retry_for": ("retry_for", _SPAN),
}
SECTIONS = {"storage": STORAGE, "gpu": GPU, "quality": QUALITY, "cost": COST}
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
        problems.add(path, f"expected a table, got {type_name(raw)}")
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
            problems.add(name, f"expected an array of tables ([[{name}]]), got {type_name(items)}")
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
        cost=CostConfig(**sections["cost"]),
        rules=rules,
        actions=tuple(ActionConfig(**a) for a in arrays["actions"]),
        source_path=None if path == "<defaults>" else path,
    )


def _build_rule(values: Mapping[str, Any]) -> RuleConfig:
    values = dict(values)
    values.setdefault("signal", "")
    return RuleConfig(**values)


def _check_rule_semantics(rules: tuple[RuleConfig, ...], problems: _Problems) -> None:
    """Whether each rule can run (``detectors/validate.py``), then, for a rule that can,
    whether its summary template renders with the fields its alerts will have."""
    for i, rule in enumerate(rules):
        found = rule_problems(rule)
        for problem in found:
            problems.add(f"rules[{i}]", problem)
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


# What a required key holds, where its name alone does not say it.
_REQUIRED_FORM = {"command": " (an argv list)"}


def _check_actions(actions: list[dict[str, Any]], problems: _Problems) -> None:
    names = {a.get("name") for a in actions}
    for i, action in enumerate(actions):
        kind = action.get("type")  # absent when missing or not a known type
        required = RECEIVERS.load(kind).required if kind is not None else ()
        for key in required:
            if not action.get(key):
                problems.add(f"actions[{i}].{key}",
                             f"required for type {kind!r}{_REQUIRED_FORM.get(key, '')}")
        target = action.get("escalate_to")
        if target is not None and target not in names:
            problems.add(f"actions[{i}].escalate_to", f"no action named {target!r}")


def _check_rules(rules: list[dict[str, Any]], actions: set[Any], problems: _Problems) -> None:
    """The keys a rule's table must hold and the names it refers to, each reported at
    its key (with its line); the rest of what makes a rule runnable needs the rule built
    (``_check_rule_semantics``)."""
    for i, rule in enumerate(rules):
        if rule.get("enabled", True) is False and set(rule) <= {"name", "enabled"}:
            continue  # `enabled = false` alone switches a default rule off
        signal = rule.get("signal")
        if signal is None:
            problems.add(f"rules[{i}].signal", "required key is missing")
        elif (unknown := signal_problem(signal)) is not None:
            problems.add(f"rules[{i}].signal", unknown)
        detector = rule.get("detector", "threshold")
        if (unknown := detector_problem(detector)) is not None:
            problems.add(f"rules[{i}].detector", unknown)
        missing = "threshold" not in rule and f"rules[{i}].threshold" not in problems.keys
        if detector in THRESHOLDED and missing:
            problems.add(f"rules[{i}].threshold", "required key is missing")
        for name in rule.get("actions", ()):
            if name not in actions:
                problems.add(f"rules[{i}].actions", f"no action named {name!r} in [[actions]]")
