"""Alertmanager: ``POST /api/v2/alerts`` with an explicit ``endsAt``, as Prometheus does.

Alertmanager expects clients to re-send firing alerts regularly and resolved ones for a
while after they resolve (its restart loses nothing then). We mimic Prometheus exactly:
each send of a firing alert says ``endsAt = now + 4 x max(interval, resend)`` ("allow
for two eval or Alertmanager send failures"), so if this daemon dies Alertmanager
resolves the alert by itself; the dispatcher re-sends every ``resend`` seconds (60 s)
while the alert fires and for 5 minutes after it resolved (resolved alerts carry the
time they resolved). Deduplication and grouping are Alertmanager's job: the labels are
the identity.
"""

from __future__ import annotations

from typing import Any

from gpuwarden.alerts.payload import json_bytes, postable_alert
from gpuwarden.alerts.receivers.base import Delivery, HttpReceiver

RESOLVED_RESEND_SECONDS = 300.0


class AlertmanagerReceiver(HttpReceiver):
    def url_for(self, delivery: Delivery) -> str:
        assert self.action.url is not None
        base = self.action.url.rstrip("/")
        if base.endswith("/api/v2/alerts"):
            return base
        return base + "/api/v2/alerts"

    @property
    def valid_for(self) -> float:
        return 4 * max(self.ctx.interval, self.ctx.am_resend)

    def alerts(self, delivery: Delivery) -> list[dict[str, Any]]:
        now = self.ctx.clock()
        return [postable_alert(a, now=now, valid_for=self.valid_for) for a in delivery.alerts]

    def build(self, delivery: Delivery) -> tuple[bytes, dict[str, str]]:
        return json_bytes(self.alerts(delivery)), self.base_headers()
