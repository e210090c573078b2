"""A small builder for Grafana dashboard JSON: panels, rows, variables, annotations.

Why a small builder rather than ``grafana-foundation-sdk``: that package is versioned
per Grafana release with epoch-prefixed versions (``1769699998!10.1.0``), is a large
generated code base for a job that here is ~40 panels of five types, and would become
a runtime dependency of a node daemon just to write files that are committed anyway.
The JSON written here is the plain, long-stable subset of Grafana's dashboard model
(schemaVersion 39: ``timeseries``, ``stat``, ``status-history``, ``bargauge``,
``table``), for Grafana 10 and later.

Datasource: every panel names ``${DS_PROMETHEUS}``, a *datasource template variable*
(not an ``__inputs`` placeholder), so the same file works when imported by hand, when
provisioned from disk, and on a Grafana whose Prometheus has any name or uid.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 39
DS: dict[str, str] = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}


@dataclass(frozen=True, slots=True)
class Target:
    expr: str
    legend: str = ""
    instant: bool = False


@dataclass(frozen=True, slots=True)
class Panel:
    """One panel; ``lines`` are (value, colour) thresholds drawn on the graph."""

    title: str
    targets: tuple[Target, ...]
    type: str = "timeseries"
    unit: str = "none"
    description: str = ""
    lines: tuple[tuple[float, str], ...] = ()
    min: float | None = None
    max: float | None = None
    width: int = 12
    height: int = 8
    stack: bool = False
    colour: str = "palette-classic"  # or a continuous scheme, e.g. continuous-GrYlRd
    base: str = "green"  # threshold colour below the first line


@dataclass(frozen=True, slots=True)
class Row:
    title: str


@dataclass(frozen=True, slots=True)
class Variable:
    """A ``label_values`` query variable (multi-select, with All = ``.*``)."""

    name: str
    label: str
    query: str


@dataclass(frozen=True, slots=True)
class Annotation:
    name: str
    expr: str
    title: str
    text: str
    colour: str = "purple"


@dataclass(frozen=True, slots=True)
class Dashboard:
    uid: str
    title: str
    description: str
    items: tuple[Panel | Row, ...]
    variables: tuple[Variable, ...] = ()
    annotations: tuple[Annotation, ...] = ()
    tags: tuple[str, ...] = field(default=("gpuwarden",))

    def queries(self) -> list[tuple[str, str]]:
        """(where, expression) for every query the dashboard runs, for tests."""
        out = [(f"variable {v.name}", v.query) for v in self.variables]
        out += [(f"annotation {a.name}", a.expr) for a in self.annotations]
        for item in self.items:
            if isinstance(item, Panel):
                for ref, t in zip(_ref_ids(), item.targets, strict=False):
                    out.append((f"panel {item.title!r} {ref}", t.expr))
        return out


def _ref_ids() -> list[str]:
    return [chr(ord("A") + i) for i in range(26)]


def _field_config(p: Panel) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": p.base, "value": None}]
    steps += [{"color": c, "value": v} for v, c in p.lines]
    defaults: dict[str, Any] = {
        "unit": p.unit,
        "color": {"mode": p.colour},
        "thresholds": {"mode": "absolute", "steps": steps},
        "mappings": [],
    }
    if p.min is not None:
        defaults["min"] = p.min
    if p.max is not None:
        defaults["max"] = p.max
    if p.type == "timeseries":
        defaults["custom"] = {
            "drawStyle": "line", "lineWidth": 1, "fillOpacity": 20 if p.stack else 5,
            "showPoints": "never", "spanNulls": False, "axisSoftMin": 0,
            "stacking": {"mode": "normal" if p.stack else "none", "group": "A"},
            "thresholdsStyle": {"mode": "dashed" if p.lines else "off"},
        }
    elif p.type == "status-history":
        defaults["custom"] = {"lineWidth": 0, "fillOpacity": 80}
    return {"defaults": defaults, "overrides": []}


def _options(p: Panel) -> dict[str, Any]:
    reduce = {"calcs": ["lastNotNull"], "fields": "", "values": False}
    if p.type == "timeseries":
        return {"legend": {"displayMode": "table", "placement": "bottom", "showLegend": True,
                           "calcs": ["lastNotNull", "max"]},
                "tooltip": {"mode": "multi", "sort": "desc"}}
    if p.type == "status-history":
        return {"showValue": "never", "rowHeight": 0.9, "colWidth": 0.9,
                "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True},
                "tooltip": {"mode": "single", "sort": "none"}}
    if p.type == "stat":
        return {"reduceOptions": reduce, "colorMode": "value", "graphMode": "area",
                "justifyMode": "auto", "orientation": "auto", "textMode": "auto"}
    if p.type == "bargauge":
        return {"reduceOptions": reduce, "displayMode": "gradient", "orientation": "horizontal",
                "showUnfilled": True, "minVizHeight": 10, "minVizWidth": 0}
    if p.type == "table":
        return {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    raise ValueError(f"unsupported panel type {p.type!r}")


def _target(ref: str, t: Target, table: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"datasource": DS, "refId": ref, "expr": t.expr, "editorMode": "code",
                           "legendFormat": t.legend or "__auto", "range": not t.instant,
                           "instant": t.instant}
    if table:
        out["format"] = "table"
    return out


def _variable(v: Variable) -> dict[str, Any]:
    return {
        "type": "query", "name": v.name, "label": v.label, "datasource": DS,
        "query": {"query": v.query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "definition": v.query, "refresh": 2, "sort": 1, "multi": True, "includeAll": True,
        "allValue": ".*", "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [], "regex": "", "hide": 0, "skipUrlSync": False,
    }


def render(d: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model, laid out left to right, wrapping at 24 columns."""
    panels: list[dict[str, Any]] = []
    x = y = row_h = 0
    for pid, item in enumerate(d.items, start=1):
        if isinstance(item, Row):
            y, x, row_h = y + row_h, 0, 0
            panels.append({"id": pid, "type": "row", "title": item.title, "collapsed": False,
                           "gridPos": {"h": 1, "w": 24, "x": 0, "y": y}, "panels": []})
            y += 1
            continue
        if x + item.width > 24:
            y, x, row_h = y + row_h, 0, 0
        table = item.type == "table"
        panels.append({
            "id": pid, "type": item.type, "title": item.title, "description": item.description,
            "datasource": DS, "gridPos": {"h": item.height, "w": item.width, "x": x, "y": y},
            "fieldConfig": _field_config(item), "options": _options(item),
            "targets": [_target(ref, t, table)
                        for ref, t in zip(_ref_ids(), item.targets, strict=False)],
            **({"transformations": [{"id": "merge", "options": {}}]} if table else {}),
        })
        x += item.width
        row_h = max(row_h, item.height)
    annotations: list[dict[str, Any]] = [{
        "builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
        "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
        "type": "dashboard",
    }]
    annotations += [{
        "datasource": DS, "enable": True, "hide": False, "iconColor": a.colour, "name": a.name,
        "expr": a.expr, "step": "60s", "titleFormat": a.title, "textFormat": a.text,
        "tagKeys": "node,server,model", "useValueForTime": False,
    } for a in d.annotations]
    ds_var: dict[str, Any] = {
        "type": "datasource", "name": "DS_PROMETHEUS", "label": "Prometheus",
        "query": "prometheus", "current": {}, "options": [], "refresh": 1, "regex": "",
        "hide": 0, "skipUrlSync": False,
    }
    return {
        "uid": d.uid, "title": d.title, "description": d.description, "tags": list(d.tags),
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "time": {"from": "now-1h", "to": "now"}, "refresh": "30s", "timezone": "",
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "timepicker": {}, "id": None,
        "links": [{"type": "dashboards", "tags": ["gpuwarden"], "asDropdown": True,
                   "title": "gpuwarden", "includeVars": True, "keepTime": True}],
        "annotations": {"list": annotations},
        "templating": {"list": [ds_var, *(_variable(v) for v in d.variables)]},
        "panels": panels,
    }


def to_json(d: Dashboard) -> str:
    """Stable text: same input, same bytes (the committed files are compared verbatim)."""
    return json.dumps(render(d), indent=2, ensure_ascii=False) + "\n"
