"""PagerDuty Events API v2: one trigger or resolve event per alert.

``dedup_key`` is the alert's fingerprint, so every follow-up (resolve, or a retry of a
trigger) lands on the same PagerDuty alert, and a new activation after a resolve opens
a new one, which is PagerDuty's own rule. The routing key is read from the environment
at send time and appears nowhere but in the request body (never in logs, audit rows or
dead letters, which store the alert data only).

Severities: gpuwarden ``page`` -> ``critical``, ``critical`` -> ``error`` (both high
urgency under PagerDuty's default rules), ``warning`` -> ``warning``, ``info`` -> ``info``.
"""

from __future__ import annotations

import os
from typing import Any

from gpuwarden.alerts.payload import json_bytes
from gpuwarden.alerts.receivers.base import Delivery, HttpReceiver
from gpuwarden.errors import ReceiverError

DEFAULT_URL = "https://events.pagerduty.com/v2/enqueue"
SEVERITY = {"page": "critical", "critical": "error", "error": "error",
            "warning": "warning", "info": "info"}
MAX_SUMMARY = 1024


def summary_of(entry: dict[str, Any], node: str) -> str:
    labels, ann = entry["labels"], entry["annotations"]
    name = labels.get("alertname", "alert")
    where = "/".join(v for v in (labels.get("node", node), labels.get("server")) if v)
    text = ann.get("summary") or ann.get("description") or ""
    line = f"{name} on {where}" + (f": {text}" if text else "")
    return line[:MAX_SUMMARY]


class PagerDutyReceiver(HttpReceiver):
    groups = False
    required = ("routing_key_env",)  # the URL has a default: the Events API v2 endpoint

    def url_for(self, delivery: Delivery) -> str:
        return self.action.url or DEFAULT_URL

    def event(self, entry: dict[str, Any], routing_key: str) -> dict[str, Any]:
        labels = entry["labels"]
        event: dict[str, Any] = {
            "routing_key": routing_key,
            "dedup_key": entry["fingerprint"],
            "event_action": "trigger" if entry["status"] == "firing" else "resolve",
            "client": "gpuwarden",
            "client_url": entry["generatorURL"],
        }
        if entry["status"] == "firing":
            event["payload"] = {
                "summary": summary_of(entry, self.ctx.node),
                "source": labels.get("node", self.ctx.node),
                "severity": SEVERITY.get(labels.get("severity", ""), "warning"),
                "timestamp": entry["startsAt"],
                "component": labels.get("server") or labels.get("gpu") or None,
                "group": labels.get("node", self.ctx.node),
                "class": labels.get("alertname"),
                "custom_details": {"labels": labels, "annotations": entry["annotations"]},
            }
            event["payload"] = {k: v for k, v in event["payload"].items() if v is not None}
        return event

    def build(self, delivery: Delivery) -> tuple[bytes, dict[str, str]]:
        env = self.action.routing_key_env
        key = os.environ.get(env) if env else None
        if not key:
            raise ReceiverError(f"environment variable {env} is not set")
        if len(delivery.alerts) != 1:
            raise ReceiverError("a PagerDuty delivery carries exactly one alert")
        return json_bytes(self.event(delivery.alerts[0], key)), self.base_headers()
